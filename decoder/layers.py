"""Building blocks shared by the Gemma decoders: RMSNorm, rotary embeddings, the attention mask,
attention itself.

Decoding runs these once per layer per token on one row, where each torch op costs a few
microseconds whatever its size, so they are written in as few ops as the math allows.
"""
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import native


def normalize(x: torch.Tensor, gain: torch.Tensor | float, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, in float32, returned in x's dtype: x / sqrt(mean(x^2) + eps) * scale,
    computed as x * gain / sqrt(|x|^2 + D * eps) with gain = scale * sqrt(D) made once (one row, or
    rows that broadcast over x's leading dims). One pass in C where `native.norm_rows` takes it (float32
    rows, one gain row); else four ops, half the time of F.rms_norm on a decoded row."""
    if isinstance(gain, torch.Tensor) and gain.dim() == 1 and gain.dtype == torch.float32 and native.takes_rows(x):
        return native.norm_rows(x, gain, math.sqrt(x.shape[-1] * eps))
    xf = x if x.dtype == torch.float32 else x.float()
    y = xf * gain / torch.hypot(torch.linalg.vector_norm(xf, dim=-1, keepdim=True), _eps_term(x.shape[-1], eps))
    return y if y.dtype == x.dtype else y.to(x.dtype)


@functools.cache
def _eps_term(dim: int, eps: float) -> torch.Tensor:
    with torch.inference_mode(False):  # a normal tensor, usable outside inference mode too
        return torch.tensor(math.sqrt(dim * eps))


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma's logit soft-capping, cap * tanh(x / cap): keeps logits in (-cap, cap) smoothly; None or 0: as is."""
    return torch.tanh(x / cap) * cap if cap else x


def empty_embedding(num: int, dim: int, cls: type[nn.Embedding] = nn.Embedding) -> nn.Embedding:
    """An embedding whose weight is left unset for a checkpoint to fill. nn.Embedding's random init
    on the meta device runs torch's Python reference ops, whose first use imports torch._dynamo:
    1.4-2.1 s of every load."""
    return cls(num, dim, _weight=torch.empty(num, dim))


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: computed in float32, scaled by (1 + w) so a zero weight is the identity.
    Gemma 3n stores the scale itself: `scale_offset=0.0` scales by w."""

    def __init__(self, dim: int, eps: float = 1e-6, with_scale: bool = True, scale_offset: float = 1.0):
        super().__init__()
        self.dim, self.eps, self.scale_offset = dim, eps, scale_offset
        self.weight = nn.Parameter(torch.zeros(dim)) if with_scale else None

    _gain = _gain_key = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.gain(), self.eps)

    def add_to(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x + self(y): the residual stream after a post-norm, in one pass where the C helpers run."""
        gain = self.gain()
        if isinstance(gain, torch.Tensor) and native.takes_rows(y) and native.takes_rows(x) and x.shape == y.shape:
            return native.norm_rows(y, gain, math.sqrt(self.dim * self.eps), add=x)
        return x + self(y)

    def gain(self) -> torch.Tensor | float:
        """(offset + w) * sqrt(dim) in float32, what `normalize` takes; recomputed only when the
        weight's storage or values change."""
        if self.weight is None:
            return math.sqrt(self.dim)
        key = (self.weight.data_ptr(), self.weight._version)
        if key != self._gain_key:
            self._gain = (self.scale_offset + self.weight.detach().float()) * math.sqrt(self.dim)
            self._gain_key = key
        return self._gain


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions; `scaling` divides positions (linear RoPE scaling).
    `rotated` < 1 is Gemma 4's proportional RoPE: only that share of the frequencies (set by the
    whole head width) turn, the rest are 0, so those dims pass unrotated.
    The frequencies are recomputed per table (D/2 numbers) so the module holds no state to load.
    The sin table's first half is negated, as `apply_rope` uses it."""

    def __init__(self, head_dim: int, base: float, scaling: float = 1.0, rotated: float = 1.0):
        super().__init__()
        self.head_dim, self.base, self.scaling, self.rotated = head_dim, base, scaling, rotated

    KEPT = 2048  # positions whose rows `forward` keeps (2 KB each at head_dim 256), from decoded tokens

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if positions.numel() <= 16 and positions.dim() == 1 and torch.is_inference_mode_enabled():
            return self._kept(positions.tolist(), dtype)
        return self._tables(positions, dtype)

    def _kept(self, positions: list[int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """A few decoded tokens' tables from rows made once per position, each as `_tables` makes one
        position's: the ~14 small ops of a table cost ~0.14 ms, twice each step of a Gemma (local
        and global RoPE). Inference tensors, so kept only for inference mode."""
        params = (self.head_dim, self.base, self.scaling, self.rotated)
        if self.__dict__.get("_rows_of") != params or len(self._rows) > self.KEPT:
            self._rows, self._rows_of = {}, params
        rows = []
        for p in positions:
            row = self._rows.get((p, dtype))
            if row is None:
                row = self._rows[p, dtype] = self._tables(torch.tensor([p]), dtype)
            rows.append(row)
        if len(rows) == 1:
            return rows[0]
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    def _tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        inv_freq = 1.0 / (self.base ** exponent) / self.scaling
        if self.rotated < 1.0:
            inv_freq[int(self.rotated * self.head_dim // 2):] = 0.0
        freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
        sin = emb.sin()
        return emb.cos().to(dtype), torch.cat((-sin[:, :self.head_dim // 2], sin[:, self.head_dim // 2:]), -1).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., T, D) by the half-split convention Gemma checkpoints use:
    x * cos + (-x2, x1) * sin, where (-x2, x1) * sin == roll(x, D/2) * (-sin1, sin2)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None,
                   groups: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean (T, S) mask, True where a query may attend a key.

    Causal on positions; a sliding-window layer also drops keys `window` or more positions back.
    `k_pos` of -1 marks an empty cache slot. `groups` (T,) gives the current tokens' image ids
    (-1 for text): tokens of one image see each other both ways, as Gemma 3 does. The current
    tokens are the last T keys.
    """
    q, k = q_pos[:, None], k_pos[None, :]
    mask = k <= q
    if groups is not None:
        T = q_pos.shape[0]
        same = (groups[:, None] == groups[None, :]) & (groups[:, None] >= 0)
        mask[:, -T:] |= same
    mask &= k >= 0
    if window is not None:  # the window cuts image links too, as transformers' combined mask does
        mask &= (q - k) < window
    return mask


def attention_bias(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask as the additive one attention takes: 0 where allowed, -inf elsewhere."""
    return torch.zeros(mask.shape).masked_fill_(~mask, float("-inf"))


def step_mask(masks: dict | None, positions, k_pos, window, groups=None) -> torch.Tensor:
    """The additive attention mask, built once per step for each (window, keys) shape in `masks`:
    within one forward every sliding layer holds the same positions, and so does every global layer."""
    if masks is None:
        return attention_bias(attention_mask(positions, k_pos, window, groups))
    key = (window, k_pos.shape[0])
    if key not in masks:
        masks[key] = attention_bias(attention_mask(positions, k_pos, window, groups))
    return masks[key]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of q (B, H, T, D) over k, v (B, Hkv, S, D), H a multiple of Hkv; `bias` (T, S)
    is the additive mask (`attention_bias`).

    One query row (decoding) is two small matmuls: cheaper than the fused kernel's set-up. The
    query heads that share a key head are the rows of one product."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if T > 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=Hkv != H)
    bias = bias if bias.dtype == q.dtype else bias.to(q.dtype)
    scores = torch.baddbmm(bias, q.reshape(B * Hkv, H // Hkv, D), k.reshape(B * Hkv, S, D).transpose(1, 2), alpha=scale)
    return torch.bmm(scores.softmax(-1), v.reshape(B * Hkv, S, -1)).reshape(B, H, 1, v.shape[-1])
