"""Building blocks shared by the Gemma decoders: RMSNorm, rotary embeddings, the attention mask."""
import torch
from torch import nn


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: computed in float32, scaled by (1 + w) so a zero weight is the identity.
    Gemma 3n stores the scale itself: `scale_offset=0.0` scales by w."""

    def __init__(self, dim: int, eps: float = 1e-6, with_scale: bool = True, scale_offset: float = 1.0):
        super().__init__()
        self.eps, self.scale_offset = eps, scale_offset
        self.weight = nn.Parameter(torch.zeros(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * (self.scale_offset + self.weight.float())
        return y.type_as(x)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions; `scaling` divides positions (linear RoPE scaling).
    The frequencies are recomputed per call (D/2 numbers) so the module holds no state to load."""

    def __init__(self, head_dim: int, base: float, scaling: float = 1.0):
        super().__init__()
        self.head_dim, self.base, self.scaling = head_dim, base, scaling

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        inv_freq = 1.0 / (self.base ** exponent) / self.scaling
        freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by the half-split convention Gemma checkpoints use."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


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
