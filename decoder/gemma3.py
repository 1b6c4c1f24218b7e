"""Gemma 3 text decoder (Gemma Team, "Gemma 3 Technical Report", 2025).

Pre- and post-norm around attention and the MLP, QK-norm, GeGLU, embeddings scaled by
sqrt(hidden), five sliding-window layers (RoPE base 10k) per global layer (RoPE base 1M, linear
scaling on the larger models), and an LM head tied to the embedding.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import fused, native
from .config import SLIDING, TextConfig
from .layers import RMSNorm, RotaryEmbedding, apply_rope, attend, empty_embedding, normalize, softcap, step_mask
from .quantize import Int8Embedding


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, layer_type: str):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        # q, k and v stacked in one matrix: one matmul per token instead of three
        self.qkv_sizes = (self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim)
        self.qkv_proj = nn.Linear(cfg.hidden_size, sum(self.qkv_sizes), bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.scale = cfg.query_pre_attn_scalar ** -0.5
        self.window = cfg.sliding_window if layer_type == SLIDING else None

    def forward(self, x, rope, cache, positions, groups=None, masks=None):
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        qkv = self.qkv_proj(x).view(B, T, H + 2 * Hkv, D)
        if T > 1 and B == 1 and groups is None and D % 32 == 0 and native.takes_rows(qkv):  # a prompt: C passes
            q, k, v = native.qkv_heads(qkv, H, Hkv, self.qk_norm_gain(), math.sqrt(D * self.q_norm.eps), *rope)
            k, v, k_pos = cache.update(k, v, positions)
            return self.o_proj(native.attend_rows(q, k, v, positions, k_pos, self.window, 1.0))
        qk = normalize(qkv[:, :, :H + Hkv], self.qk_norm_gain(), self.q_norm.eps)  # QK-norm, both in one op
        q, k = apply_rope(qk.transpose(1, 2), *rope).split((H, Hkv), dim=1)  # (B, H, T, D), (B, Hkv, T, D)
        k, v, k_pos = cache.update(k, qkv[:, :, H + Hkv:].transpose(1, 2), positions)
        bias = step_mask(masks, positions, k_pos, self.window, groups)
        y = attend(q, k, v, bias, 1.0)  # the 1/sqrt(d) scale is in q's norm gain
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def qk_norm_gain(self) -> torch.Tensor:
        """The q_norm gain times the attention scale for each query head and the k_norm gain for
        each key head, (H + Hkv, D): RoPE is linear, so scaling q before it is scaling the scores."""
        q, k = self.q_norm.gain(), self.k_norm.gain()
        made_from = getattr(self, "_qk_from", (None, None))
        if made_from[0] is not q or made_from[1] is not k:  # the norms give new tensors when their weights change
            self._qk = torch.cat([(q * self.scale).expand(self.n_heads, -1), k.expand(self.n_kv, -1)])
            self._qk_from = (q, k)
        return self._qk


class MLP(nn.Module):
    """GeGLU with the tanh approximation of GELU."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=False)  # gate and up stacked
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        gate_up = self.gate_up_proj(x)
        if native.takes_rows(gate_up) and gate_up.shape[-1] % 32 == 0:  # one pass, no temporaries
            return self.down_proj(native.geglu(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class TiedEmbedding(nn.Embedding):
    """The token embedding, whose transpose is also the LM head (mlx-lm's `as_linear`), so a
    quantized replacement can serve both uses."""

    def as_linear(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight)


class Block(nn.Module):
    def __init__(self, cfg: TextConfig, layer_type: str):
        super().__init__()
        self.layer_type = layer_type
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer_type)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.post_mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, cache, positions, groups=None, masks=None):
        if groups is None and (layer := fused.plan(self, x, cache)) is not None:  # our C calls: one or two
            if x.shape[1] == 1:
                return fused.step(layer, x, rope, cache, positions, masks, self.attn.window)
            if x.shape[1] <= fused.ROWS and cache.offset > 0:  # a speculative check: each row as its step
                return fused.rows(layer, x, rope, cache, positions, masks, self.attn.window)
            return fused.prompt(layer, x, rope, cache, positions, self.attn.window)
        x = self.post_attn_norm.add_to(x, self.attn(self.attn_norm(x), rope, cache, positions, groups, masks))
        return self.post_mlp_norm.add_to(x, self.mlp(self.mlp_norm(x)))


class Gemma3Text(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.embed = empty_embedding(cfg.vocab_size, cfg.hidden_size, TiedEmbedding)
        self.layers = nn.ModuleList(Block(cfg, t) for t in cfg.layer_types)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rope_local = RotaryEmbedding(cfg.head_dim, cfg.rope_local_base)
        self.rope_global = RotaryEmbedding(cfg.head_dim, cfg.rope_global_base, cfg.rope_global_scaling)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings times sqrt(hidden), the scale rounded to the weights' dtype as Gemma does."""
        x = self.embed(ids)
        return x * torch.tensor(math.sqrt(self.config.hidden_size), dtype=x.dtype)

    def forward(self, ids: torch.Tensor | None, caches: list, positions: torch.Tensor, *,
                embeds: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, hidden) for tokens `ids` (or ready `embeds`) at `positions`."""
        x = self.embed_tokens(ids) if embeds is None else embeds
        ropes = {SLIDING: self.rope_local(positions, x.dtype)}
        ropes["full_attention"] = self.rope_global(positions, x.dtype)
        masks = {}
        for layer, cache in zip(self.layers, caches):
            x = layer(x, ropes[layer.layer_type], cache, positions, groups, masks)
        return self.norm(x)

    def logits(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tied LM head, with the final soft-cap where the config asks for one. With `out` (rows, vocab), e.g.
        a buffer kept from step to step (batch.py's `_logit_rows`), the logits are written there and returned as
        a view of it: straight from an int8 head's kernel, copied from any other head's output."""
        cap = self.config.final_logit_softcapping
        if out is None:
            return softcap(self.embed.as_linear(h), cap)
        if isinstance(self.embed, Int8Embedding) and not cap:
            self.embed.as_linear(h, out=out)
        else:
            out.copy_(softcap(self.embed.as_linear(h), cap).reshape(out.shape))
        return out.view(*h.shape[:-1], out.shape[-1])
