"""Gemma 3's vision tower: SigLIP features → 4 × 4 average pooling → RMSNorm → linear into the decoder width.

(Gemma Team, "Gemma 3 Technical Report", 2025, §2.1.) Each 896 × 896 view becomes 64 × 64 patch
features, pooled to 16 × 16 = 256 soft tokens. Pan-and-scan crops are just more views in the batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..decoder.errors import ModelLoadError
from ..decoder.layers import RMSNorm
from ..decoder.weights import assign_strict, expand
from . import siglip
from .hf_config import empty_module, hf_fields
from .siglip import SiglipVisionConfig, SiglipVisionEncoder

# Top-level keys of a Gemma 3 multimodal config.json that are not the vision tower's concern.
_IGNORED_HF_KEYS = frozenset({"text_config", "boi_token_id", "eoi_token_id", "image_token_id"})


@dataclass(frozen=True)
class Gemma3VisionConfig:
    """The vision part of a Gemma 3 `config.json`; field names are Hugging Face's `Gemma3Config` names."""

    vision_config: SiglipVisionConfig = field(default_factory=SiglipVisionConfig)
    mm_tokens_per_image: int = 256
    text_hidden_size: int = 2560  # text_config.hidden_size (Gemma 3 4B)
    boi_token_index: int = 255_999  # <start_of_image>
    eoi_token_index: int = 256_000  # <end_of_image>
    image_token_index: int = 262_144  # <image_soft_token>

    @classmethod
    def from_hf(cls, d: dict) -> "Gemma3VisionConfig":
        kw = hf_fields(cls, d, _IGNORED_HF_KEYS)
        kw.pop("vision_config", None)
        # transformers v5 spells the token ids *_token_id; v4 checkpoints *_token_index.
        for old in ("boi", "eoi", "image"):
            if d.get(f"{old}_token_id") is not None and f"{old}_token_index" not in kw:
                kw[f"{old}_token_index"] = d[f"{old}_token_id"]
        if (d.get("text_config") or {}).get("hidden_size") is not None:
            kw["text_hidden_size"] = d["text_config"]["hidden_size"]
        return cls(vision_config=SiglipVisionConfig.from_hf(d.get("vision_config") or {}), **kw)


class Gemma3Projector(nn.Module):
    """(N, P*P, vision) patch features → (N, tokens, text) soft tokens."""

    def __init__(self, cfg: Gemma3VisionConfig):
        super().__init__()
        v = cfg.vision_config
        self.patches_per_side = v.patches_per_side
        tokens_per_side = int(cfg.mm_tokens_per_image**0.5)
        if tokens_per_side**2 != cfg.mm_tokens_per_image or self.patches_per_side % tokens_per_side:
            raise ValueError(f"mm_tokens_per_image={cfg.mm_tokens_per_image} does not tile "
                             f"{self.patches_per_side}x{self.patches_per_side} patches")
        self.pool = self.patches_per_side // tokens_per_side
        self.norm = RMSNorm(v.hidden_size, v.layer_norm_eps)  # Gemma's (1 + w) RMSNorm
        # Stored (vision, text) as in the checkpoint and applied as x @ W, not as an nn.Linear.
        self.proj_weight = nn.Parameter(torch.zeros(v.hidden_size, cfg.text_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, _, C = x.shape
        P = self.patches_per_side
        x = x.transpose(1, 2).reshape(N, C, P, P)  # (N, C, P, P)
        x = F.avg_pool2d(x, self.pool)  # (N, C, P/k, P/k)
        x = x.flatten(2).transpose(1, 2)  # (N, tokens, C)
        return torch.matmul(self.norm(x), self.proj_weight)


class Gemma3VisionTower(nn.Module):
    """`pixel_values` (N, 3, 896, 896) — whole images and pan-and-scan crops alike, one batch —
    → (N, mm_tokens_per_image, text_hidden_size) embeddings for the decoder's image positions."""

    def __init__(self, cfg: Gemma3VisionConfig):
        super().__init__()
        self.config = cfg
        self.encoder = SiglipVisionEncoder(cfg.vision_config)
        self.projector = Gemma3Projector(cfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(pixel_values))


# Checkpoint names (as the Gemma 3 4B+ HF checkpoints store them) → ours. A transformers v5 model in memory
# names them "model.vision_tower.embeddings..." (no "vision_model."); `normalize_key` maps both to these.
HF_TO_NATIVE = {
    **{f"vision_tower.vision_model.{k}": f"encoder.{v}" for k, v in siglip.HF_TO_NATIVE.items()},
    "multi_modal_projector.mm_soft_emb_norm.weight": "projector.norm.weight",
    "multi_modal_projector.mm_input_projection_weight": "projector.proj_weight",
}
HF_PREFIXES = ("vision_tower.", "multi_modal_projector.")


def normalize_key(key: str) -> str:
    key = key.removeprefix("model.")
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        key = "vision_tower.vision_model." + key.removeprefix("vision_tower.")
    return key


def is_vision_key(key: str) -> bool:
    return normalize_key(key).startswith(HF_PREFIXES)


def load_gemma3_vision(tensors: dict[str, torch.Tensor], config: dict | Gemma3VisionConfig, *,
                       path: str | os.PathLike = "<tensors>", dtype: torch.dtype = torch.float32) -> Gemma3VisionTower:
    """Build the tower from a checkpoint's vision tensors (other tensors in `tensors` are skipped).
    Strict: a missing or unexpected vision tensor is a `ModelLoadError` naming it."""
    cfg = config if isinstance(config, Gemma3VisionConfig) else Gemma3VisionConfig.from_hf(config)
    tower = empty_module(Gemma3VisionTower, cfg)
    vision = {normalize_key(k): t for k, t in tensors.items() if is_vision_key(k)}
    if not vision:
        raise ModelLoadError(path, "no vision tensors (vision_tower.*, multi_modal_projector.*): "
                                   "this is a text-only checkpoint")
    assign_strict(tower, vision, expand(HF_TO_NATIVE, cfg.vision_config.num_hidden_layers), path, dtype)
    return tower.eval()
