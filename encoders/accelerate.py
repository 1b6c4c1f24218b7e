"""Encoder acceleration as a module swap (gpt-fast `quantize.py`): the encoder files stay plain float32
PyTorch; `accelerate_siglip_(encoder)` replaces their linear layers with int8 ones after loading.

Why int8 with 8-bit inputs: a SigLIP view is ~5 TFLOP, 60% of it in the linear layers over 4096 rows,
compute-bound. Integer products run about twice float32's rate on AVX2 (`vpmaddubsw`, through fbgemm)
and more on AVX-512 VNNI (our kernels): `decoder.quantize.Int8Linear` picks whichever this CPU has.
q/k/v are fused into one product so their shared input is rounded once. Attention stays in float32
through torch's SDPA, whose CPU kernel is a flash attention (no 4096 x 4096 matrix is formed).

A layer keeps float32 where its int8 output strays from float32's (cosine < `min_cosine` on a probe
batch): `accelerate_siglip_` checks each layer as it swaps it and reports what it kept.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..decoder.quantize import Int8Linear, rotation_block
from . import siglip

log = logging.getLogger(__name__)


class Int8LinearBias(nn.Module):
    """`nn.Linear` with bias as int8 weights per output channel and 8-bit input rows."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        self.linear = Int8Linear.from_float(w, int8_inputs=True, rotation=rotation_block(w.shape[1]))
        self.bias = nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).add_(self.bias)


class FusedQKVAttention(nn.Module):
    """SigLIP's attention with q, k, v as one int8 product (`Attention`'s math, the same SDPA call)."""

    def __init__(self, attn: siglip.Attention):
        super().__init__()
        self.n_heads, self.head_dim = attn.n_heads, attn.head_dim
        qkv = nn.Linear(attn.q_proj.in_features, 3 * attn.q_proj.out_features)
        with torch.no_grad():
            qkv.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
            qkv.bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        self.qkv_proj = Int8LinearBias(qkv)
        self.o_proj = Int8LinearBias(attn.o_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv_proj(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The smallest per-token cosine similarity between two (..., C) outputs."""
    return F.cosine_similarity(a.flatten(0, -2).float(), b.flatten(0, -2).float(), dim=-1).min().item()


@torch.inference_mode()
def accelerate_siglip_(encoder: siglip.SiglipVisionEncoder, probe: torch.Tensor | None = None,
                       min_cosine: float = 0.9995) -> dict:
    """Swap each block's attention and MLP linears for int8 ones, in place.

    `probe`: pixels (N, 3, S, S) to check each block on: a block whose int8 output's per-token cosine to
    its float32 output falls under `min_cosine` keeps float32 (random or unusual weights can be harsh
    on 8-bit inputs). Without a probe every block is swapped. Returns {"int8": [...], "float32": [...]}
    block indices."""
    report = {"int8": [], "float32": []}
    x = None
    if probe is not None:
        x = encoder.patch_embed(probe.to(encoder.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        x = x + encoder.pos_embed.weight
    for i, block in enumerate(encoder.layers):
        attn, fc1, fc2 = block.attn, block.mlp.fc1, block.mlp.fc2
        ref = block(x) if x is not None else None
        block.attn = FusedQKVAttention(attn)
        block.mlp.fc1, block.mlp.fc2 = Int8LinearBias(fc1), Int8LinearBias(fc2)
        if ref is not None:
            if _cosine(block(x), ref) < min_cosine:
                block.attn, block.mlp.fc1, block.mlp.fc2 = attn, fc1, fc2
            x = ref  # the next block's probe input is the float32 one: each block judged on its own
        report["float32" if block.attn is attn else "int8"].append(i)
    log.info("SigLIP: int8 in blocks %s, float32 in %s", report["int8"], report["float32"])
    return report
