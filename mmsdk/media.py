"""Media in prompts: which encoders a loaded checkpoint has, and turning a prompt with image
markers into the ids, embeddings and attention groups the decoder takes."""
import contextlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import chat_format
from .chat_format import AUDIO_MARKER, IMAGE_MARKER, Markup
from .decoder.memory import heap_allocations
from .encoders.lazy import LazyTowers, read_tensors
from .encoders.media_cache import EncodeCache
from .errors import InputError, UnsupportedModalityError

log = logging.getLogger(__name__)


@dataclass
class Encoders:
    """The encoders a checkpoint carries beside its decoder (None where it has none)."""

    vision: object = None  # a Gemma 3 vision tower (SigLIP + projector)
    image_config: object = None
    gemma3n: object = None  # a Gemma 3n checkpoint's towers (`encoders.gemma3n_fusion.Gemma3nEncoders`)
    gemma4: LazyTowers | None = None  # a Gemma 4 checkpoint's towers (`encoders.gemma4_vision`, `gemma4_audio`)
    # Recent images' and clips' embeddings by content: a follow-up about the same picture costs only the text.
    cache: EncodeCache = field(default_factory=EncodeCache)

    @property
    def gemma4_vision(self):
        return self.gemma4.get("vision") if self.gemma4 else None

    @property
    def gemma4_audio(self):
        return self.gemma4.get("audio") if self.gemma4 else None

    @property
    def modalities(self) -> frozenset:
        # asks whether a tower is there, without building it
        has = [t.has for t in (self.gemma3n, self.gemma4) if t is not None]
        has_image = self.vision is not None or any(h("vision") for h in has)
        has_audio = any(h("audio") for h in has)
        return frozenset({"text"} | ({"image"} if has_image else set()) | ({"audio"} if has_audio else set()))


def load_encoders(loaded, path, dtype, mmproj=None, accelerate: bool = False) -> Encoders:
    """Vision (and for Gemma 3n audio) encoders from the non-text tensors of a HF checkpoint, if it has them.
    `accelerate`: swap in the int8 encoder layers (`encoders.accelerate`), as a quantized load asks; a
    float32 SigLIP takes the float32 swaps (fused q/k/v, our attention kernel) either way."""
    from .encoders.accelerate import accelerate_gemma3n_audio_, accelerate_siglip_

    encoders = _load_encoders(loaded, path, dtype, mmproj)
    if encoders.vision is not None and dtype == torch.float32:
        accelerate_siglip_(encoders.vision.encoder, int8=accelerate)
    if encoders.gemma3n is not None and accelerate and dtype == torch.float32:
        encoders.gemma3n.towers.then("audio", accelerate_gemma3n_audio_)  # when the tower is first built
    return encoders


def _load_encoders(loaded, path, dtype, mmproj=None) -> Encoders:
    from .encoders.gemma3_vision import is_vision_key, load_gemma3_vision

    if getattr(loaded, "source", "") == "gguf":
        return _mmproj_encoders(loaded, path, dtype, mmproj)
    tensors = getattr(loaded, "extra_tensors", None) or {}
    if tensors and loaded.hf_config.get("model_type") == "gemma4":
        return _gemma4_encoders(loaded, tensors, path, dtype)
    if tensors and getattr(loaded, "source", "") == "hf" and loaded.hf_config.get("model_type") == "gemma3n":
        from .encoders.gemma3n_fusion import attach_hard_tokens, load_gemma3n_encoders

        towers = load_gemma3n_encoders(tensors, loaded.hf_config, path, dtype)
        attach_hard_tokens(loaded.model, towers)
        return Encoders(gemma3n=towers)
    if not any(is_vision_key(k) for k in tensors) or getattr(loaded, "source", "") != "hf":
        return Encoders()
    if loaded.hf_config.get("model_type") != "gemma3":
        log.warning("vision tensors of a %s checkpoint are not wired yet; loading text only",
                    loaded.hf_config.get("model_type"))
        return Encoders()
    from .encoders.fusion import image_config_for

    tower = load_gemma3_vision(tensors, loaded.hf_config, path=path, dtype=dtype)
    pre = Path(path) / "preprocessor_config.json"
    pre_cfg = json.loads(pre.read_text()) if pre.is_file() else None
    return Encoders(vision=tower, image_config=image_config_for(tower, pre_cfg))


def _gemma4_encoders(loaded, tensors, path, dtype) -> Encoders:
    """Gemma 4's vision and audio towers (those the checkpoint has), and the placeholder ids whose
    embeddings, in both of the decoder's tables, are the pad row's."""
    from .encoders.gemma4_audio import load_gemma4_audio
    from .encoders.gemma4_vision import load_gemma4_vision

    hf = loaded.hf_config
    ids = [hf.get(k) for k in ("image_token_id", "audio_token_id", "video_token_id") if hf.get(k) is not None]
    loaded.model.soft_token_ids = torch.tensor(ids, dtype=torch.long)

    def tower(load, prefixes):  # a function building it on first use (`LazyTowers`), or None
        if not any(k.startswith(prefixes[0]) for k in tensors):
            return None
        return lambda: load(read_tensors(tensors, lambda k: k.startswith(prefixes)), hf, path, dtype)

    vision = tower(load_gemma4_vision, ("model.vision_tower.", "model.embed_vision."))
    audio = tower(load_gemma4_audio, ("model.audio_tower.", "model.embed_audio."))
    return Encoders(gemma4=LazyTowers(vision=vision, audio=audio) if vision or audio else None)


def _mmproj_encoders(loaded, path, dtype, mmproj) -> Encoders:
    """A GGUF's vision tower from llama.cpp's mmproj file: `mmproj` if given, else `mmproj*.gguf` beside it."""
    if mmproj is None:
        found = sorted(p for p in Path(path).parent.glob("mmproj*.gguf") if p.resolve() != Path(path).resolve())
        if not found:
            return Encoders()
        if len(found) > 1:
            log.warning("several mmproj files beside %s; using %s (pass mmproj= to choose)", path, found[0].name)
        mmproj = found[0]
    from .decoder.errors import ModelLoadError
    from .encoders.fusion import BOI, EOI, SOFT
    from .encoders.gguf_mmproj import load_mmproj

    # The mmproj carries no token ids: llama.cpp, and we, take them from the text model's vocabulary.
    ids = {k: loaded.tokenizer.token_id(t) for k, t in
           (("boi_token_index", BOI), ("eoi_token_index", EOI), ("image_token_index", SOFT))}
    if None in ids.values():
        log.warning("%s has no %s token; loading text only", path, SOFT if ids["image_token_index"] is None else BOI)
        return Encoders()
    tower, image_config = load_mmproj(mmproj, dtype=dtype, **ids)
    width = loaded.model.config.hidden_size
    if tower.config.text_hidden_size != width:
        raise ModelLoadError(mmproj, f"the projector outputs width {tower.config.text_hidden_size}, but {Path(path).name} "
                                     f"has width {width}: this mmproj belongs to another model")
    log.info("vision tower from %s", mmproj)
    return Encoders(vision=tower, image_config=image_config)


def check_modalities(name: str, encoders: Encoders, images, audio) -> None:
    for kind, items, which in (("image", images, "Gemma 3 4B and larger, Gemma 3n or Gemma 4"),
                               ("audio", audio, "Gemma 3n or Gemma 4")):
        if items and kind not in encoders.modalities:
            raise UnsupportedModalityError(f"{name} takes no {kind} input; load a model that does ({which})")


@dataclass
class Prompt:
    ids: list[int]
    embeds: torch.Tensor | None = None  # (1, T, hidden) when media are in the prompt
    groups: torch.Tensor | None = None  # (T,) image group per position, -1 for text


def encode_prompt(model, tokenizer, encoders: Encoders, text, images=(), audio=(), *,
                  add_bos: bool = True, prefix_ids=(), pan_and_scan: bool = True, image_tokens: int = 280) -> Prompt:
    """Token ids for the prompt `text` (a raw string, or `chat_format` parts whose content is never
    parsed); with images, also the embeddings with each image in place.
    `prefix_ids` are tokens already decided (a session's pending tokens) that go first.
    `image_tokens`: Gemma 4's soft-token budget per image (70, 140, 280, 560 or 1120).
    The encoders' activations come from the heap (`decoder.memory.heap_allocations`)."""
    with heap_allocations() if images or audio else contextlib.nullcontext():
        return _encode_prompt(model, tokenizer, encoders, text, images, audio, add_bos=add_bos, prefix_ids=prefix_ids,
                              pan_and_scan=pan_and_scan, image_tokens=image_tokens)


def _encode_prompt(model, tokenizer, encoders: Encoders, text, images, audio, *, add_bos, prefix_ids, pan_and_scan,
                   image_tokens) -> Prompt:
    if encoders.gemma4 is not None and (images or audio):  # markers: control tokens
        from .encoders.gemma4_fusion import build_prompt as build_gemma4

        ids = chat_format.encode(tokenizer, text, add_bos)
        p = build_gemma4(ids, list(images), list(audio), model=model, tokenizer=tokenizer, vision=encoders.gemma4_vision,
                         audio_tower=encoders.gemma4_audio, image_tokens=image_tokens)
        return _prepend(model, prefix_ids, Prompt(*p))
    n_images = chat_format.count_markers(text, IMAGE_MARKER)
    if encoders.gemma3n is None:
        if audio:
            raise UnsupportedModalityError("audio in prompts needs a Gemma 3n model with its audio tower")
        if (images or encoders.vision is not None) and n_images != len(images):
            raise InputError(f"the prompt has {n_images} image marker(s) ({IMAGE_MARKER}) but "
                             f"{len(images)} image(s) were given; put one marker where each image goes")
    if not images and not audio:
        if encoders.gemma3n is not None:
            from .encoders.gemma3n_fusion import expand_media_markers

            expand_media_markers(_Shielded(tokenizer, text).text, 0, 0, encoders.gemma3n.config)  # stray markers
        return Prompt([*prefix_ids, *chat_format.encode(tokenizer, text, add_bos)])
    # The encoders expand the markers in a string: they get the markup with each content part
    # standing as a placeholder, and a tokenizer that puts the content back as plain text.
    shield = _Shielded(tokenizer, text)
    if encoders.gemma3n is not None:
        from .encoders.gemma3n_fusion import build_prompt as build_gemma3n

        p = build_gemma3n(shield.text, images, audio, model=model, tokenizer=shield, encoders=encoders.gemma3n,
                          add_bos=add_bos, cache=encoders.cache)
        return _prepend(model, prefix_ids, Prompt(p.ids, p.embeds))
    from .encoders.fusion import build_prompt

    p = build_prompt(shield.text, list(images), model=model, tokenizer=shield, tower=encoders.vision,
                     image_config=encoders.image_config, pan_and_scan=pan_and_scan, add_bos=add_bos,
                     cache=encoders.cache)
    return _prepend(model, prefix_ids, Prompt(p.ids, p.embeds, p.groups))


_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")  # private-use characters: never in the format's markup


class _Shielded:
    """A prompt's markup with content parts as placeholders (`text`), and the tokenizer the media
    encoders use on it after expanding their markers: content goes back in, never parsed."""

    def __init__(self, tokenizer, parts):
        parts = [Markup(parts)] if isinstance(parts, str) else parts
        self.tokenizer, self.content = tokenizer, [p for p in parts if not isinstance(p, Markup)]
        held = iter(range(len(self.content)))
        self.text = "".join(p if isinstance(p, Markup) else f"\ue000{next(held)}\ue001" for p in parts)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        pieces = _PLACEHOLDER.split(text)  # [markup, index, markup, ...]
        parts = [self.content[int(p)] if i % 2 else Markup(p) for i, p in enumerate(pieces)]
        return chat_format.encode(self.tokenizer, parts, add_bos)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def _prepend(model, prefix_ids, p: Prompt) -> Prompt:
    """`p` after the already decided `prefix_ids`, embedded by the text table."""
    if not prefix_ids:
        return p
    with torch.inference_mode():
        head = model.embed_tokens(torch.tensor([list(prefix_ids)]))
    groups = None if p.groups is None else \
        torch.cat([torch.full((len(prefix_ids),), -1, dtype=p.groups.dtype), p.groups])
    return Prompt([*prefix_ids, *p.ids], torch.cat([head, p.embeds], 1), groups)


def with_media_markers(text, images=(), audio=()) -> list[str]:
    """A user turn's parts: one marker per image and audio clip in front of the text (content, a str
    or parts), as a message's parts would be."""
    body = [text] if isinstance(text, str) else list(text)
    return [Markup(IMAGE_MARKER * len(images) + AUDIO_MARKER * len(audio)), *body]
