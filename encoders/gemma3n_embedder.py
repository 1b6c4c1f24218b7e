"""What Gemma 3n's vision and audio towers share: its RMSNorm and the multimodal embedder that maps
a tower's soft tokens, or its "hard" vocabulary ids, to decoder embeddings. Apart from both towers so
that neither imports the other."""
import torch
from torch import nn

from ..decoder.layers import empty_embedding


class RMSNorm(nn.Module):
    """Gemma 3n's RMSNorm: scaled by w itself (not 1 + w), or not scaled at all; x * ms^-0.5 via pow,
    as the reference does."""

    def __init__(self, dim: int, eps: float = 1e-6, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.pow(x32.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.type_as(x)


class MultimodalEmbedder(nn.Module):
    """Soft tokens (N, T, width) or hard token ids → (…, text_hidden) decoder embeddings. `cfg`: the
    tower's config (vision or audio), read for vocab_offset, vocab_size, hidden_size and rms_norm_eps."""

    def __init__(self, cfg, text_hidden_size: int):
        super().__init__()
        self.vocab_offset = cfg.vocab_offset
        self.embedding = empty_embedding(cfg.vocab_size, cfg.hidden_size)
        self.hard_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.soft_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.proj = nn.Linear(cfg.hidden_size, text_hidden_size, bias=False)
        self.post_norm = RMSNorm(text_hidden_size, cfg.rms_norm_eps, with_scale=False)

    def forward(self, soft: torch.Tensor) -> torch.Tensor:
        return self.post_norm(self.proj(self.soft_norm(soft)))

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Hard vision-vocabulary ids in [vocab_offset, vocab_offset + vocab_size)."""
        return self.post_norm(self.proj(self.hard_norm(self.embedding(ids - self.vocab_offset))))
