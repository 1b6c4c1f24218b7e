"""Gemma 4's vision encoder (Google, "Gemma 4", 2026), following transformers' `modeling_gemma4.py`
(`Gemma4VisionModel` + `Gemma4MultimodalEmbedder`) and `image_processing_gemma4.py`.

A ViT over the image at its own aspect ratio, not a fixed square:
- Preprocessing resizes the image, keeping its aspect ratio, to the largest size whose sides are
  multiples of 3 x 16 pixels and whose 16-pixel patches number at most 9 x the soft-token budget
  (70, 140, 280, 560 or 1120, chosen per call); patches are padded to that maximum.
- Patches are embedded linearly, plus a learned x- and a learned y-position embedding.
- Encoder layers as Gemma 4's text layers (pre/post RMSNorms scaled by w, QK-norm, RMS-normed
  values, no query scale, GeGLU), attending every other real patch both ways, with 2-D RoPE: the
  first half of each head turns with the patch's x, the second half with its y.
- Each 3 x 3 block of patches is averaged into one soft token, scaled by sqrt(width), optionally
  standardized, then RMS-normed and projected to the decoder's width.
Checkpoint names are transformers' (`model.vision_tower.*`, `model.embed_vision.*`), so its state
dict loads as is. Linear layers may clip their inputs and outputs (`use_clipped_linears`).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..decoder.errors import InputError, ModelLoadError
from ..decoder.layers import RotaryEmbedding, apply_rope
from .gemma3n_embedder import RMSNorm
from .hf_config import empty_module, hf_fields
from .image_io import open_image, to_rgb
from .image_preprocess import pil_to_uint8, resize

SOFT_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)
_IGNORED = frozenset({"rope_parameters", "hidden_activation", "attention_bias", "attention_dropout",
                      "max_position_embeddings", "initializer_range"})


@dataclass
class Gemma4VisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 16
    num_attention_heads: int = 12
    num_key_value_heads: int = 12
    head_dim: int = 64
    rms_norm_eps: float = 1e-6
    rope_theta: float = 100.0
    pooling_kernel_size: int = 3
    patch_size: int = 16
    position_embedding_size: int = 10240
    use_clipped_linears: bool = False
    standardize: bool = False
    text_hidden_size: int = 1536

    @classmethod
    def from_hf(cls, d: dict, text_hidden_size: int) -> "Gemma4VisionConfig":
        rope = d.get("rope_parameters") or {}
        if rope.get("rope_type", "axial") != "axial":
            raise ValueError(f"vision rope_type {rope['rope_type']!r} is not supported (expected 'axial')")
        if d.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh" or d.get("attention_bias"):
            raise ValueError("the vision tower's activation or attention bias is not Gemma 4's (unsupported)")
        kw = hf_fields(cls, d, _IGNORED)
        if "rope_theta" in rope:
            kw["rope_theta"] = float(rope["rope_theta"])
        return cls(**kw, text_hidden_size=text_hidden_size)


# ---- preprocessing ----------------------------------------------------------------------------

def fitted_size(height: int, width: int, patch: int, max_patches: int, pool: int) -> tuple[int, int]:
    """The largest (height, width) of the image's aspect ratio, both multiples of pool·patch, with
    at most `max_patches` patches (transformers' `get_aspect_ratio_preserving_size`)."""
    factor = math.sqrt(max_patches * patch ** 2 / (height * width))
    side = pool * patch
    h, w = int(math.floor(factor * height / side)) * side, int(math.floor(factor * width / side)) * side
    if h == 0 and w == 0:
        raise ValueError(f"a {height}x{width} image cannot be resized to a multiple of {side} pixels")
    longest = (max_patches // pool ** 2) * side
    if h == 0:  # a very wide image: one row of blocks
        h, w = side, min(int(math.floor(width / height)) * side, longest)
    elif w == 0:
        w, h = side, min(int(math.floor(height / width)) * side, longest)
    return h, w


def preprocess(images, image_tokens: int = 280, cfg: Gemma4VisionConfig | None = None):
    """(patches (N, max_patches, 3·p²) in [0, 1], positions (N, max_patches, 2) as (x, y) with -1 for
    padding, soft tokens per image) for images (paths, bytes or PIL images), each under a budget of
    `image_tokens` soft tokens."""
    cfg = cfg or Gemma4VisionConfig()
    if image_tokens not in SOFT_TOKEN_BUDGETS:
        raise InputError(f"image_tokens must be one of {SOFT_TOKEN_BUDGETS}, got {image_tokens!r}")
    p, pool = cfg.patch_size, cfg.pooling_kernel_size
    max_patches = image_tokens * pool ** 2
    patches, positions, counts = [], [], []
    for image in images:
        x = pil_to_uint8(to_rgb(open_image(image)))
        h, w = fitted_size(x.shape[1], x.shape[2], p, max_patches, pool)
        if (h, w) != tuple(x.shape[1:]):
            x = resize(x, h, w, resample=3)  # bicubic, antialiased, as the reference
        x = x.float() / 255.0
        gh, gw = h // p, w // p
        rows = x.reshape(3, gh, p, gw, p).permute(1, 3, 2, 4, 0).reshape(gh * gw, 3 * p * p)  # row-major patches
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        pos = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
        pad = max_patches - len(rows)
        patches.append(F.pad(rows, (0, 0, 0, pad)))
        positions.append(F.pad(pos, (0, 0, 0, pad), value=-1))
        counts.append(len(rows) // pool ** 2)
    return torch.stack(patches), torch.stack(positions), counts


# ---- the encoder ------------------------------------------------------------------------------

class ClippableLinear(nn.Module):
    """A bias-free linear layer that may clamp its input and output to ranges the checkpoint stores."""

    def __init__(self, cfg: Gemma4VisionConfig, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out, bias=False)
        self.clipped = cfg.use_clipped_linears
        if self.clipped:
            for name in ("input_min", "input_max", "output_min", "output_max"):
                self.register_buffer(name, torch.empty(()))

    def forward(self, x):
        if not self.clipped:
            return self.linear(x)
        return torch.clamp(self.linear(torch.clamp(x, self.input_min, self.input_max)), self.output_min, self.output_max)


class PatchEmbedder(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.input_proj = nn.Linear(3 * cfg.patch_size ** 2, cfg.hidden_size, bias=False)
        self.position_embedding_table = nn.Parameter(torch.empty(2, cfg.position_embedding_size, cfg.hidden_size))

    def forward(self, patches, positions, padding):
        x = self.input_proj((2 * (patches - 0.5)).to(self.input_proj.weight.dtype))  # pixels to [-1, 1]
        xy = positions.clamp(min=0)
        table = self.position_embedding_table
        pos = F.embedding(xy[..., 0], table[0]) + F.embedding(xy[..., 1], table[1])  # x's plus y's
        return x + pos.masked_fill(padding[..., None], 0.0)


class Attention(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = ClippableLinear(cfg, cfg.hidden_size, self.n_heads * self.head_dim)
        self.k_proj = ClippableLinear(cfg, cfg.hidden_size, self.n_kv * self.head_dim)
        self.v_proj = ClippableLinear(cfg, cfg.hidden_size, self.n_kv * self.head_dim)
        self.o_proj = ClippableLinear(cfg, self.n_heads * self.head_dim, cfg.hidden_size)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.v_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, with_scale=False)

    def forward(self, x, rope, mask):
        B, N, _ = x.shape
        q = rotate_2d(self.q_norm(self.q_proj(x).view(B, N, self.n_heads, self.head_dim)), rope)
        k = rotate_2d(self.k_norm(self.k_proj(x).view(B, N, self.n_kv, self.head_dim)), rope)
        v = self.v_norm(self.v_proj(x).view(B, N, self.n_kv, self.head_dim))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                           scale=1.0, enable_gqa=self.n_kv != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, N, -1))


def rotate_2d(x, rope):
    """2-D RoPE on (B, N, H, D): dims [0, D/2) turn with x positions, [D/2, D) with y positions."""
    (cos_x, sin_x), (cos_y, sin_y) = rope  # each (B, N, 1, D/2)
    a, b = x.chunk(2, dim=-1)
    return torch.cat([apply_rope(a, cos_x, sin_x), apply_rope(b, cos_y, sin_y)], -1)


class MLP(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.gate_proj = ClippableLinear(cfg, cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = ClippableLinear(cfg, cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = ClippableLinear(cfg, cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        H, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(H, eps), RMSNorm(H, eps)
        self.pre_feedforward_layernorm, self.post_feedforward_layernorm = RMSNorm(H, eps), RMSNorm(H, eps)
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, mask):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), rope, mask))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))


class Gemma4VisionTower(nn.Module):
    """Patches (N, P, 3·p²) and positions (N, P, 2) → (soft tokens of every image, text width)."""

    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.config = cfg
        self.patch_embedder = PatchEmbedder(cfg)
        self.encoder = Encoder(cfg)
        if cfg.standardize:
            self.register_buffer("std_bias", torch.empty(cfg.hidden_size))
            self.register_buffer("std_scale", torch.empty(cfg.hidden_size))
        self.rope = RotaryEmbedding(cfg.head_dim // 2, cfg.rope_theta)
        self.embed_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, with_scale=False)
        self.embed_proj = nn.Linear(cfg.hidden_size, cfg.text_hidden_size, bias=False)

    def forward(self, patches: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        padding = (positions == -1).all(-1)  # (N, P)
        x = self.patch_embedder(patches, positions, padding)
        dtype = x.dtype
        ropes = [tuple(t.view(*positions.shape[:2], 1, -1) for t in self.rope(positions[..., i].reshape(-1), dtype))
                 for i in (0, 1)]
        mask = ~padding[:, None, None, :]  # every real patch sees every real patch
        for layer in self.encoder.layers:
            x = layer(x, ropes, mask)
        n_out = patches.shape[1] // cfg.pooling_kernel_size ** 2
        pooled, keep = _pool(x.masked_fill(padding[..., None], 0.0), positions, n_out)
        soft = pooled.float()[keep] * cfg.hidden_size ** 0.5  # in float32: the scale can pass float16's range
        if cfg.standardize:
            soft = (soft - self.std_bias.float()) * self.std_scale.float()
        return self.embed_proj(self.embed_norm(soft.to(dtype)))


def _pool(x: torch.Tensor, positions: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average each k x k block of patches (by their positions) into one of `length` tokens; which
    tokens hold a real block."""
    k = int((x.shape[1] // length) ** 0.5)
    xy = positions.clamp(min=0)
    width = xy[..., 0].max(-1, keepdim=True)[0] + 1
    block = torch.div(xy, k, rounding_mode="floor")
    weights = F.one_hot((block[..., 0] + (width // k) * block[..., 1]).long(), length).float() / k ** 2  # (N, P, L)
    return (weights.transpose(1, 2) @ x.float()).to(x.dtype), (weights != 0).any(1)


def load_gemma4_vision(tensors: dict, hf: dict, path, dtype: torch.dtype = torch.float32) -> Gemma4VisionTower:
    """The tower from a Gemma 4 checkpoint's `model.vision_tower.*` and `model.embed_vision.*` tensors."""
    try:
        cfg = Gemma4VisionConfig.from_hf(hf.get("vision_config") or {}, (hf.get("text_config") or {})["hidden_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(path, f"vision config: {e}") from e
    state = {k.removeprefix("model.vision_tower."): v for k, v in tensors.items() if k.startswith("model.vision_tower.")}
    state["embed_proj.weight"] = tensors.get("model.embed_vision.embedding_projection.weight")
    if state["embed_proj.weight"] is None:
        raise ModelLoadError(path, "missing tensor 'model.embed_vision.embedding_projection.weight'")
    tower = empty_module(Gemma4VisionTower, cfg)
    want = tower.state_dict()
    for name in sorted(set(state) | set(want)):
        if name not in want:
            raise ModelLoadError(path, f"unexpected tensor 'model.vision_tower.{name}'")
        if name not in state:
            raise ModelLoadError(path, f"missing tensor 'model.vision_tower.{name}'")
        if tuple(state[name].shape) != tuple(want[name].shape):
            raise ModelLoadError(path, f"tensor {name!r} has shape {tuple(state[name].shape)}, the config implies "
                                       f"{tuple(want[name].shape)}")
    tower.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return tower.eval().requires_grad_(False)

