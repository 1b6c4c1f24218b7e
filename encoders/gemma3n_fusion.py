"""Gemma 3n fusion: a prompt with image and audio markers → token ids and input embeddings.

As transformers' `Gemma3nProcessor` + `Gemma3nModel` do it:
- each `<start_of_image>` marker becomes "\\n\\n<start_of_image>" + 256 × "<image_soft_token>" +
  "<end_of_image>\\n\\n" (no pan-and-scan: Gemma 3n sees one 768 px view per image);
- each `<start_of_audio>` marker becomes "\\n\\n<start_of_audio>" + 188 × "<audio_soft_token>" +
  "<end_of_audio>\\n\\n" whatever the clip's length: the processor assumes 30 s clips, and the model fills
  the soft tokens a shorter clip leaves empty (and its padded frames) with the audio padding embedding,
  `embed_audio(vocab_size - 1)`;
- the soft-token positions receive the encoders' outputs; "hard" multimodal ids (`<end_of_image>`,
  `<end_of_audio>`, anything from the vision or audio vocabulary) are embedded by their modality's
  embedder, not the text table, in the prompt and in every decoded token (`HardTokenEmbedder`).
Attention stays causal over media tokens (Gemma 3n has no bidirectional image groups).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..decoder.errors import InputError, ModelLoadError
from .audio_features import FeatureConfig, log_mel
from .audio_gemma3n import AUDIO_PREFIXES, AudioConfig, Gemma3nAudio, load_hf_audio_state
from .audio_io import load_audio
from .fusion import check_marker_count, scatter
from .gemma3n_vision import Gemma3nVisionConfig, Gemma3nVisionTower, is_vision_key, load_gemma3n_vision
from .hf_config import empty_module, hf_fields
from .image_preprocess import GEMMA3N_IMAGE, ImageProcessorConfig, preprocess
from .lazy import LazyTowers, read_tensors
from .media_cache import EncodeCache, content_key

log = logging.getLogger(__name__)

BOI, EOI, IMAGE_SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
BOA, EOA, AUDIO_SOFT = "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>"
IMAGE_MARKER, AUDIO_MARKER = BOI, BOA  # what our chat format writes where a media part stands

# Top-level Gemma3nConfig keys that belong to the sub-configs or the text decoder.
_IGNORED_TOP_KEYS = frozenset({"text_config", "vision_config", "audio_config", "initializer_range"})


@dataclass(frozen=True)
class Gemma3nMediaConfig:
    """The media token ids and counts of a Gemma 3n `config.json` (Hugging Face `Gemma3nConfig` names)."""

    boi_token_id: int = 255_999
    eoi_token_id: int = 262_144
    image_token_id: int = 262_145
    boa_token_id: int = 256_000
    eoa_token_id: int = 262_272
    audio_token_id: int = 262_273
    vision_soft_tokens_per_image: int = 256
    audio_soft_tokens_per_image: int = 188
    vocab_size: int = 262_400  # text_config.vocab_size: the audio padding id is vocab_size - 1

    @classmethod
    def from_hf(cls, d: dict) -> Gemma3nMediaConfig:
        kw = hf_fields(cls, {k: v for k, v in d.items() if k != "vocab_size"}, _IGNORED_TOP_KEYS)
        vocab = (d.get("text_config") or {}).get("vocab_size")
        return cls(**kw, **({"vocab_size": vocab} if vocab else {}))


def media_sequence(open_: str, soft: str, n: int, close: str) -> str:
    """The text one image or clip expands to (`Gemma3nProcessor.full_image_sequence` / `full_audio_sequence`)."""
    return f"\n\n{open_}{soft * n}{close}\n\n"


def check_audio_count(n_markers: int, n_clips: int) -> None:
    if n_markers != n_clips:
        raise InputError(f"the prompt has {n_markers} audio marker(s) ({AUDIO_MARKER}) but {n_clips} "
                         f"audio clip(s) were given; put one marker where each clip goes")


def expand_media_markers(text: str, n_images: int, n_audio: int, cfg: Gemma3nMediaConfig = Gemma3nMediaConfig()) -> str:
    """Replace every image and audio marker by its soft-token sequence; the counts must match the media."""
    check_marker_count(text.count(IMAGE_MARKER), n_images)
    check_audio_count(text.count(AUDIO_MARKER), n_audio)
    # split/join, not str.replace chains: each sequence contains its own marker.
    image = media_sequence(BOI, IMAGE_SOFT, cfg.vision_soft_tokens_per_image, EOI)
    audio = media_sequence(BOA, AUDIO_SOFT, cfg.audio_soft_tokens_per_image, EOA)
    return audio.join(image.join(text.split(IMAGE_MARKER)).split(AUDIO_MARKER))


class HardTokenEmbedder:
    """Replaces the text-table embedding of multimodal-vocabulary ids by their embedder's output:
    vision ids in [vision offset, audio offset), audio ids from the audio offset (transformers'
    `Gemma3nModel.forward`). Not an `nn.Module`, so attaching it leaves the decoder's state dict as is.
    A tower is reached (and so built, `Gemma3nEncoders`) only when one of its ids comes."""

    def __init__(self, encoders: "Gemma3nEncoders"):
        self.encoders = encoders

    def __call__(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """ids (B, T), x (B, T, H) text embeddings → x with the multimodal ids re-embedded."""
        enc, ranges = self.encoders, []
        if enc.has("vision"):
            ranges.append(("vision", enc.vocab_offsets["vision"], enc.vocab_offsets.get("audio")))
        if enc.has("audio"):
            ranges.append(("audio", enc.vocab_offsets["audio"], None))
        out = x
        for kind, lo, hi in ranges:
            mask = (ids >= lo) & (ids < hi) if hi is not None else ids >= lo
            if bool(mask.any()):
                out = out.clone() if out is x else out
                out[mask] = getattr(enc, kind).embedder.embed_ids(ids[mask]).to(x.dtype)
        return out


class Gemma3nEncoders:
    """What a Gemma 3n checkpoint carries beside its decoder; each tower is built on first use
    (`lazy.LazyTowers`: E2B's vision and audio towers are ~4 GB in float32)."""

    def __init__(self, config: Gemma3nMediaConfig, *, vision=None, audio=None, vocab_offsets: dict | None = None,
                 image_config: ImageProcessorConfig = GEMMA3N_IMAGE, features: FeatureConfig | None = None):
        # vision, audio: a tower, a function that builds it, or None where the checkpoint has none
        self.config, self.image_config, self.features = config, image_config, features
        self.vocab_offsets = vocab_offsets or {}  # first id of each tower's hard vocabulary
        self.towers = LazyTowers(vision=vision, audio=audio)
        self.has, self.loaded = self.towers.has, self.towers.loaded

    @property
    def vision(self) -> Gemma3nVisionTower | None:
        return self.towers.get("vision")

    @property
    def audio(self) -> Gemma3nAudio | None:
        return self.towers.get("audio")


def split_preprocessor_config(d: dict) -> tuple[dict, dict]:
    """Gemma 3n's preprocessor_config.json holds the image processor's and the feature extractor's
    fields side by side: (image part, audio part)."""
    audio_keys = {f.name for f in dataclasses.fields(FeatureConfig)} | {
        "frame_length", "hop_length", "fft_length", "feature_extractor_type", "return_attention_mask", "padding_side"}
    return ({k: v for k, v in d.items() if k not in audio_keys},
            {k: v for k, v in d.items() if k in audio_keys})


def load_gemma3n_encoders(tensors: dict, hf_config: dict, path, dtype: torch.dtype = torch.float32) -> Gemma3nEncoders:
    """The vision tower and audio tower (each with its embedder) of a Gemma 3n checkpoint's non-text
    tensors, built on first use, with the image and feature settings of its preprocessor_config.json
    when there is one. The settings are checked here, at load."""
    cfg = Gemma3nMediaConfig.from_hf(hf_config)
    pre = Path(path) / "preprocessor_config.json"
    image_hf, audio_hf = split_preprocessor_config(json.loads(pre.read_text())) if pre.is_file() else ({}, {})
    vision = audio = features = None
    offsets, image_config = {}, GEMMA3N_IMAGE
    if any(is_vision_key(k) for k in tensors):
        vision = lambda: _load_vision(read_tensors(tensors, is_vision_key), hf_config, path, dtype)
        offsets["vision"] = Gemma3nVisionConfig.from_hf(hf_config.get("vision_config") or {}).vocab_offset
        image_config = ImageProcessorConfig.from_hf({**dataclasses.asdict(GEMMA3N_IMAGE), **image_hf})
    if any(k.startswith(AUDIO_PREFIXES) for k in tensors):
        audio_cfg = AudioConfig.from_hf(hf_config.get("audio_config") or {})
        text_hidden = (hf_config.get("text_config") or {}).get("hidden_size", 2048)
        audio = lambda: _load_audio(read_tensors(tensors, lambda k: k.startswith(AUDIO_PREFIXES)), audio_cfg,
                                    text_hidden, path, dtype)
        offsets["audio"] = audio_cfg.vocab_offset
        # Without a preprocessor_config.json the features are as wide as the tower's input.
        try:
            features = FeatureConfig.from_hf({"feature_size": audio_cfg.input_feat_size, **audio_hf})
        except ValueError as e:
            raise ModelLoadError(pre, str(e)) from e
        if features.feature_size != audio_cfg.input_feat_size:
            raise ModelLoadError(pre, f"feature_size {features.feature_size}, but the audio tower takes "
                                      f"{audio_cfg.input_feat_size} mel bins")
    return Gemma3nEncoders(cfg, vision=vision, audio=audio, vocab_offsets=offsets, image_config=image_config,
                           features=features)


def _load_vision(tensors: dict, hf_config: dict, path, dtype: torch.dtype) -> Gemma3nVisionTower:
    """MobileNet-V5 with its channel norms swapped for our one-pass kernel (`accelerate_mobilenet_`,
    the same float32 math) where it runs."""
    from .accelerate import accelerate_mobilenet_

    tower = load_gemma3n_vision(tensors, hf_config, path=path, dtype=dtype)
    if dtype == torch.float32:
        accelerate_mobilenet_(tower.backbone)
    return tower


def _load_audio(tensors: dict, audio_cfg: AudioConfig, text_hidden: int, path, dtype: torch.dtype) -> Gemma3nAudio:
    audio = empty_module(lambda c: Gemma3nAudio(c, text_hidden), audio_cfg)
    load_hf_audio_state(audio, tensors, path, dtype)
    return audio.eval()


def attach_hard_tokens(model, encoders: Gemma3nEncoders) -> None:
    """Make the decoder's `embed_tokens` embed multimodal ids through the encoders' embedders."""
    model.hard_tokens = HardTokenEmbedder(encoders)


# ---- encoding ---------------------------------------------------------------------------------------

@torch.inference_mode()
def encode_images(tower: Gemma3nVisionTower, images, image_config: ImageProcessorConfig,
                  cache: EncodeCache | None = None) -> torch.Tensor:
    """Images → (N, 256, text hidden), one view each, in one batch; with a `cache`, only those not
    encoded before."""
    pixels = preprocess(images, image_config, pan_and_scan=False).pixel_values
    pixels = pixels.to(next(tower.parameters()).dtype)
    if cache is None:
        return tower(pixels)
    views = list(pixels.split(1))
    return torch.cat(cache.encode([content_key("image", v) for v in views], views, tower))


@torch.inference_mode()
def encode_audio(audio: Gemma3nAudio, clips, features: FeatureConfig, cfg: Gemma3nMediaConfig,
                 cache: EncodeCache | None = None) -> torch.Tensor:
    """Clips (anything `load_audio` reads) → (N, audio_soft_tokens_per_image, text hidden): the tower's
    tokens, padding frames and the unused tail filled with the audio padding embedding. With a
    `cache`, a clip encoded before (the same samples and feature settings) is not encoded again."""
    dtype = next(audio.parameters()).dtype
    pad = audio.embedder.embed_ids(torch.tensor([cfg.vocab_size - 1]))  # (1, H)
    n, out = cfg.audio_soft_tokens_per_image, []
    for clip in clips:
        samples = clip if isinstance(clip, np.ndarray) else load_audio(clip)
        key = content_key("audio", samples, features, n) if cache is not None else None
        cached = cache.get(key) if cache is not None else None
        if cached is None:
            cached = _encode_clip(audio, samples, features, pad, n, dtype)
            if cache is not None:
                cache.put(key, cached)
        out.append(cached)
    return torch.stack(out)


def _encode_clip(audio: Gemma3nAudio, samples: np.ndarray, features: FeatureConfig, pad: torch.Tensor, n: int,
                 dtype: torch.dtype) -> torch.Tensor:
    mel, mask = log_mel(samples, features)  # the features truncate to 30 s (188 tokens)
    emb, valid = audio(torch.from_numpy(mel)[None].to(dtype), torch.from_numpy(mask)[None])
    emb = torch.where(valid[0, :, None], emb[0], pad)  # (T', H)
    if emb.shape[0] > n:
        raise InputError(f"an audio clip gives {emb.shape[0]} tokens, more than the {n} the model takes")
    return torch.cat([emb, pad.expand(n - emb.shape[0], -1)])


@dataclass
class Gemma3nPrompt:
    """`ids` (with the soft-token placeholders, for PLE and the cache bookkeeping) and `embeds` (1, T, H)."""

    ids: list[int]
    embeds: torch.Tensor


def check_tokenizer(tokenizer, cfg: Gemma3nMediaConfig, images: bool, audio: bool) -> None:
    wanted = ([(IMAGE_SOFT, cfg.image_token_id), (BOI, cfg.boi_token_id), (EOI, cfg.eoi_token_id)] if images else []) + \
             ([(AUDIO_SOFT, cfg.audio_token_id), (BOA, cfg.boa_token_id), (EOA, cfg.eoa_token_id)] if audio else [])
    for token, want in wanted:
        got = tokenizer.token_id(token)
        if got != want:
            raise InputError(f"the tokenizer maps {token} to {got}, the model expects {want}")


@torch.inference_mode()
def build_prompt(text: str, images=(), audio=(), *, model, tokenizer, encoders: Gemma3nEncoders,
                 add_bos: bool = True, cache: EncodeCache | None = None) -> Gemma3nPrompt:
    """Prompt text with one `<start_of_image>` per image and one `<start_of_audio>` per clip →
    `Gemma3nPrompt` for the Gemma 3n decoder. Marker counts are checked before anything is encoded."""
    images, audio = list(images), list(audio)
    cfg = encoders.config
    expanded = expand_media_markers(text, len(images), len(audio), cfg)
    check_tokenizer(tokenizer, cfg, bool(images), bool(audio))
    ids = tokenizer.encode(expanded, add_bos=add_bos)
    ids_t = torch.tensor(ids, dtype=torch.long)
    embeds = model.embed_tokens(ids_t[None])  # hard multimodal ids through their embedders
    if images:
        embeds = scatter(embeds, ids_t, encode_images(encoders.vision, images, encoders.image_config, cache),
                         cfg.image_token_id, "image")
    if audio:
        embeds = scatter(embeds, ids_t, encode_audio(encoders.audio, audio, encoders.features, cfg, cache),
                         cfg.audio_token_id, "audio")
    return Gemma3nPrompt(ids, embeds)
