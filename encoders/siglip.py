"""SigLIP vision encoder (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", 2023), as used by Gemma 3.

A plain pre-norm ViT: 14 × 14 patches → linear patch embedding + learned positions → N blocks of
LayerNorm → multi-head attention → LayerNorm → GELU MLP → final LayerNorm. No class token, no pooling
head (Gemma 3 pools in its projector). At the real size: 896 px, 64 × 64 = 4096 patches, 27 layers,
width 1152, 16 heads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..decoder.layers import empty_embedding
from .hf_config import hf_fields

# Keys of a siglip_vision_model config that do not change the encoder's math at inference.
_IGNORED_HF_KEYS = frozenset({"attention_dropout", "projection_dim", "dropout"})

_ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}


@dataclass(frozen=True)
class SiglipVisionConfig:
    """Field names are those of Hugging Face's `SiglipVisionConfig`; defaults are Gemma 3's (4B and up)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 896
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    vision_use_head: bool = False

    @classmethod
    def from_hf(cls, d: dict) -> "SiglipVisionConfig":
        cfg = cls(**hf_fields(cls, d, _IGNORED_HF_KEYS))
        if cfg.vision_use_head:
            # Gemma 3 never uses SigLIP's attention-pooling head; a checkpoint with one is not Gemma 3's.
            raise ValueError("SiglipVisionConfig: vision_use_head=True is not supported (Gemma 3 has no head)")
        if cfg.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"SiglipVisionConfig: hidden_act={cfg.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}")
        return cfg

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size


class Attention(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.o_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # every patch sees every patch: no mask
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class SiglipVisionEncoder(nn.Module):
    """(N, 3, image_size, image_size) pixels → (N, patches, hidden) features."""

    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.config = cfg
        self.patch_embed = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = empty_embedding(cfg.patches_per_side**2, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.post_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if pixel_values.shape[-2:] != (size, size):
            raise ValueError(f"SigLIP expects {size}x{size} pixels, got {tuple(pixel_values.shape[-2:])}")
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (N, C, P, P)
        # (N, P*P, C), row-major patches, made contiguous: else every add after keeps the convolution's
        # channel-major strides, and each block's norms and linears copy their input back (~10% of a block)
        x = x.flatten(2).transpose(1, 2).contiguous()
        x = x + self.pos_embed.weight
        for layer in self.layers:
            x = layer(x)
        return self.post_norm(x)


# Hugging Face `SiglipVisionTransformer` names (relative to `vision_model.`) → ours.
HF_TO_NATIVE = {
    "embeddings.patch_embedding.weight": "patch_embed.weight",
    "embeddings.patch_embedding.bias": "patch_embed.bias",
    "embeddings.position_embedding.weight": "pos_embed.weight",
    "encoder.layers.{}.layer_norm1.weight": "layers.{}.norm1.weight",
    "encoder.layers.{}.layer_norm1.bias": "layers.{}.norm1.bias",
    "encoder.layers.{}.self_attn.q_proj.weight": "layers.{}.attn.q_proj.weight",
    "encoder.layers.{}.self_attn.q_proj.bias": "layers.{}.attn.q_proj.bias",
    "encoder.layers.{}.self_attn.k_proj.weight": "layers.{}.attn.k_proj.weight",
    "encoder.layers.{}.self_attn.k_proj.bias": "layers.{}.attn.k_proj.bias",
    "encoder.layers.{}.self_attn.v_proj.weight": "layers.{}.attn.v_proj.weight",
    "encoder.layers.{}.self_attn.v_proj.bias": "layers.{}.attn.v_proj.bias",
    "encoder.layers.{}.self_attn.out_proj.weight": "layers.{}.attn.o_proj.weight",
    "encoder.layers.{}.self_attn.out_proj.bias": "layers.{}.attn.o_proj.bias",
    "encoder.layers.{}.layer_norm2.weight": "layers.{}.norm2.weight",
    "encoder.layers.{}.layer_norm2.bias": "layers.{}.norm2.bias",
    "encoder.layers.{}.mlp.fc1.weight": "layers.{}.mlp.fc1.weight",
    "encoder.layers.{}.mlp.fc1.bias": "layers.{}.mlp.fc1.bias",
    "encoder.layers.{}.mlp.fc2.weight": "layers.{}.mlp.fc2.weight",
    "encoder.layers.{}.mlp.fc2.bias": "layers.{}.mlp.fc2.bias",
    "post_layernorm.weight": "post_norm.weight",
    "post_layernorm.bias": "post_norm.bias",
}
