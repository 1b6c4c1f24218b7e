"""Gemma 3n's vision tower: MobileNet-V5 (timm) → 16 × 16 = 256 soft tokens → the multimodal embedder.

MobileNet-V5-300M is timm's `mobilenetv5_300m_enc`; we build it through timm rather than rewrite it
(transformers wraps the same timm model). Its multi-scale fusion adapter outputs (N, 2048, 16, 16) for a
768 × 768 image in [0, 1]. The embedder scales the soft tokens by sqrt(2048), RMS-normalizes them,
projects them to the decoder width and RMS-normalizes again (no scale). The same embedder also embeds
the "hard" vision-vocabulary tokens (ids from `vocab_offset`, e.g. <end_of_image>) for the decoder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..decoder.errors import ModelLoadError
from ..decoder.weights import assign_strict
from .gemma3n_embedder import MultimodalEmbedder  # shared with the audio tower
from .hf_config import empty_module, hf_fields

# Keys of a gemma3n_vision config that describe timm's classifier head or labels, unused by the encoder.
_IGNORED_VISION_KEYS = frozenset({"num_classes", "label_names", "num_labels", "pretrained_cfg", "global_pool"})
_IGNORED_TOP_KEYS = frozenset({"text_config", "audio_config", "audio_soft_tokens_per_image",
                               "boa_token_id", "eoa_token_id", "audio_token_id", "initializer_range"})


@dataclass(frozen=True)
class Gemma3nVisionConfig:
    """Field names are those of Hugging Face's `Gemma3nVisionConfig` (the `vision_config` of Gemma 3n)."""

    architecture: str = "mobilenetv5_300m_enc"
    model_args: dict | None = None  # extra timm.create_model kwargs (tests shrink it with channel_multiplier)
    do_pooling: bool = False
    hidden_size: int = 2048
    vocab_size: int = 128
    vocab_offset: int = 262_144
    rms_norm_eps: float = 1e-6

    @classmethod
    def from_hf(cls, d: dict) -> "Gemma3nVisionConfig":
        return cls(**hf_fields(cls, d, _IGNORED_VISION_KEYS))


@dataclass(frozen=True)
class Gemma3nMMVisionConfig:
    """The vision part of a Gemma 3n `config.json` (Hugging Face `Gemma3nConfig` names)."""

    vision_config: Gemma3nVisionConfig = field(default_factory=Gemma3nVisionConfig)
    vision_soft_tokens_per_image: int = 256
    text_hidden_size: int = 2048  # text_config.hidden_size (Gemma 3n E4B; E2B is 2048 too)
    boi_token_id: int = 255_999  # <start_of_image>
    eoi_token_id: int = 262_144  # <end_of_image>, a "hard" vision-vocabulary token
    image_token_id: int = 262_145  # <image_soft_token>

    @classmethod
    def from_hf(cls, d: dict) -> "Gemma3nMMVisionConfig":
        kw = hf_fields(cls, d, _IGNORED_TOP_KEYS)
        kw.pop("vision_config", None)
        if (d.get("text_config") or {}).get("hidden_size") is not None:
            kw["text_hidden_size"] = d["text_config"]["hidden_size"]
        return cls(vision_config=Gemma3nVisionConfig.from_hf(d.get("vision_config") or {}), **kw)


def build_backbone(cfg: Gemma3nVisionConfig) -> nn.Module:
    """timm's MobileNet-V5 encoder with random weights (the checkpoint's are assigned after)."""
    try:
        import timm
    except ImportError as e:  # timm is in the `vision` extra
        raise ImportError("Gemma 3n vision needs timm: pip install 'mmsdk[vision]'") from e
    return timm.create_model(cfg.architecture, pretrained=False, num_classes=0, **(cfg.model_args or {}))


class Gemma3nVisionTower(nn.Module):
    """`pixel_values` (N, 3, 768, 768) in [0, 1] → (N, 256, text_hidden_size) embeddings."""

    def __init__(self, cfg: Gemma3nMMVisionConfig):
        super().__init__()
        self.config = cfg
        self.backbone = build_backbone(cfg.vision_config)
        self.embedder = MultimodalEmbedder(cfg.vision_config, cfg.text_hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        v = self.config.vision_config
        x = self.backbone.forward_features(pixel_values)  # (N, hidden, 16, 16)
        N, C = x.shape[:2]
        x = x.reshape(N, C, self.config.vision_soft_tokens_per_image).permute(0, 2, 1)  # (N, 256, hidden)
        return self.embedder(x * v.hidden_size**0.5)


# Checkpoint names (Gemma 3n HF checkpoints, "model." stripped) → ours. The backbone's tensors keep timm's
# own names, so their part of the map is spelled out from the timm module itself in `key_map`.
EMBEDDER_HF_TO_NATIVE = {
    "embed_vision.embedding.weight": "embedder.embedding.weight",
    "embed_vision.hard_embedding_norm.weight": "embedder.hard_norm.weight",
    "embed_vision.soft_embedding_norm.weight": "embedder.soft_norm.weight",
    "embed_vision.embedding_projection.weight": "embedder.proj.weight",
}
BACKBONE_HF_PREFIX = "vision_tower.timm_model."


def key_map(tower: Gemma3nVisionTower) -> dict[str, str]:
    backbone = {f"{BACKBONE_HF_PREFIX}{k}": f"backbone.{k}" for k, _ in tower.backbone.named_parameters()}
    return {**backbone, **EMBEDDER_HF_TO_NATIVE}


def is_vision_key(key: str) -> bool:
    key = key.removeprefix("model.")
    return key.startswith(BACKBONE_HF_PREFIX) or key.startswith("embed_vision.")


def load_gemma3n_vision(tensors: dict[str, torch.Tensor], config: dict | Gemma3nMMVisionConfig, *,
                        path: str | os.PathLike = "<tensors>", dtype: torch.dtype = torch.float32) -> Gemma3nVisionTower:
    """Build the tower from a Gemma 3n checkpoint's vision tensors (other tensors are skipped).
    Strict: a missing or unexpected vision tensor is a `ModelLoadError` naming it."""
    cfg = config if isinstance(config, Gemma3nMMVisionConfig) else Gemma3nMMVisionConfig.from_hf(config)
    tower = empty_module(Gemma3nVisionTower, cfg)
    vision = {k.removeprefix("model."): t for k, t in tensors.items() if is_vision_key(k)}
    if not vision:
        raise ModelLoadError(path, "no vision tensors (vision_tower.timm_model.*, embed_vision.*) in the checkpoint")
    if list(tower.backbone.buffers()):
        # MobileNet-V5 normalizes with RMSNorm2d; a BatchNorm variant would carry running stats we do not map.
        raise ModelLoadError(path, f"timm architecture {cfg.vision_config.architecture!r} has buffers; unsupported")
    assign_strict(tower, vision, key_map(tower), path, dtype)
    return tower.eval()
