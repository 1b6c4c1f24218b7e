"""Encoder acceleration as a module swap (gpt-fast `quantize.py`): the encoder files stay plain float32
PyTorch; `accelerate_siglip_(encoder)` replaces their linear layers with int8 ones after loading.

Why int8 with 8-bit inputs: a SigLIP view is ~5 TFLOP, 60% of it in the linear layers over 4096 rows
(40% in the MLP), compute-bound. Integer products run faster than float32 on AVX2 (`vpmaddubsw`,
through fbgemm) and more so on AVX-512 VNNI (our kernels): `decoder.quantize.Int8Linear` picks
whichever this CPU has. Attention itself stays in float32 through torch's SDPA, whose CPU kernel is a
flash attention (no 4096 x 4096 matrix is formed); q/k/v, when swapped, are one fused product so
their shared input is rounded once.

Quality (per-token cosine of the projected embeddings to float32, `tests/eval/eval_vision.py`):
see the numbers there; `keep_float` leaves chosen blocks in float32 where a model needs it.
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


@torch.inference_mode()
def accelerate_siglip_(encoder: siglip.SiglipVisionEncoder, *, attention: bool = False,
                       keep_float: tuple[int, ...] = ()) -> nn.Module:
    """Swap each block's MLP linears (and with `attention=True` its q/k/v/o too) for int8 ones, in
    place, except in the blocks listed in `keep_float`. Returns `encoder`.

    Attention stays float32 by default: 8-bit q/k inputs move the attention logits, and the error grows
    through the softmax. On the real-size SigLIP (random weights, 4 blocks, per-token cosine of the
    features to float32) int8 attention projections alone give min 0.9986, the MLP alone 0.9996."""
    for i, block in enumerate(encoder.layers):
        if i in keep_float:
            continue
        if attention:
            block.attn = FusedQKVAttention(block.attn)
        block.mlp.fc1, block.mlp.fc2 = Int8LinearBias(block.mlp.fc1), Int8LinearBias(block.mlp.fc2)
    log.info("SigLIP: int8 %s in %d of %d blocks", "linears" if attention else "MLPs",
             len(encoder.layers) - len(keep_float), len(encoder.layers))
    return encoder
