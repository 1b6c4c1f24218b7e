"""Gemma 3n text decoder (Google, "Gemma 3n", 2025), following transformers' `modeling_gemma3n.py`.

What differs from Gemma 3, in the order a token meets it:
- Per-layer embeddings (PLE): a second table, vocab × (layers · 256), gives each layer a 256-wide
  slice per token, mixed with a projection of the token embedding. It is most of the parameters and
  the natural thing to leave on disk (`offload.py`).
- AltUp: the residual stream is 4 streams; each layer predicts all 4 from a learned mix, computes
  on the active one only, and corrects the others with the innovation.
- LAuReL: a low-rank learned residual beside attention.
- Gaussian top-k sparsity: the first layers keep only gate activations above mean + 1.645 σ.
- KV sharing: the last `num_kv_shared_layers` attend the keys/values of the last earlier layer of
  their type instead of computing their own.
- Norms scale by w (not 1 + w), values are RMS-normed, queries are not scaled (q-norm does it),
  and the final logits are soft-capped.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import SLIDING
from .gemma3 import TiedEmbedding
from .gemma3n_config import Gemma3nTextConfig
from .layers import RMSNorm, RotaryEmbedding, apply_rope, attend, empty_embedding, softcap, step_mask


def _norm(dim: int, cfg: Gemma3nTextConfig, with_scale: bool = True) -> RMSNorm:
    return RMSNorm(dim, cfg.rms_norm_eps, with_scale, scale_offset=0.0)


class PerLayerEmbedding(nn.Module):
    """The PLE table, scaled by sqrt(256). Ids outside it (image/audio tokens) read row 0 (pad), as
    transformers does. `rows` is the one thing `offload.py` replaces to read from disk."""

    def __init__(self, cfg: Gemma3nTextConfig):
        super().__init__()
        self.vocab = cfg.vocab_size_per_layer_input
        self.weight = nn.Parameter(torch.zeros(self.vocab, cfg.num_hidden_layers * cfg.hidden_size_per_layer_input))
        self.scale = cfg.hidden_size_per_layer_input ** 0.5

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)

    def forward(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ids = torch.where((ids >= 0) & (ids < self.vocab), ids, 0)
        x = self.rows(ids).to(dtype)  # (B, T, L·P)
        return x * torch.tensor(self.scale, dtype=dtype)


class AltUp(nn.Module):
    """Alternating updates (Baykal et al., NeurIPS 2023) over K streams, shaped (K, B, T, H)."""

    def __init__(self, cfg: Gemma3nTextConfig):
        super().__init__()
        K, self.active = cfg.altup_num_inputs, cfg.altup_active_idx
        self.correct_output_scale = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.correction_coefs = nn.Linear(K, K, bias=False)
        self.prediction_coefs = nn.Linear(K, K * K, bias=False)
        self.modality_router = nn.Linear(cfg.hidden_size, K, bias=False)
        self.router_norm = _norm(cfg.hidden_size, cfg)
        self.router_scale = 1.0 / cfg.hidden_size

    def route(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, K)
        routed = self.modality_router(self.router_norm(x) * self.router_scale)
        return torch.tanh(routed.float()).type_as(x)

    def predict(self, streams: torch.Tensor) -> torch.Tensor:
        """Each stream predicted as itself plus a token-dependent mix of all streams."""
        K, B, T, H = streams.shape
        coefs = self.prediction_coefs(self.route(streams[self.active])).reshape(B, T, K, K).transpose(2, 3)
        mixed = torch.matmul(streams.permute(1, 2, 3, 0), coefs)  # (B, T, H, K)
        return (mixed.permute(3, 0, 1, 2) + streams).contiguous()

    def correct(self, predictions: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
        """Spread the active stream's innovation (layer output - its prediction) to every stream."""
        coefs = self.correction_coefs(self.route(activated)) + 1.0  # (B, T, K)
        innovation = activated - predictions[self.active]  # (B, T, H)
        return (innovation[None] * coefs.permute(2, 0, 1)[..., None] + predictions).contiguous()


class Laurel(nn.Module):
    """Learned augmented residual: x + norm(right(left(x))), rank `laurel_rank`."""

    def __init__(self, cfg: Gemma3nTextConfig):
        super().__init__()
        self.linear_left = nn.Linear(cfg.hidden_size, cfg.laurel_rank, bias=False)
        self.linear_right = nn.Linear(cfg.laurel_rank, cfg.hidden_size, bias=False)
        self.norm = _norm(cfg.hidden_size, cfg)

    def forward(self, x):
        return x + self.norm(self.linear_right(self.linear_left(x)))


class Attention(nn.Module):
    """Also Gemma 4's: its config gives each layer's (kv heads, head width) in `kv_dims`, and with
    `k_eq_v` a layer has no value projection: values are the key projection, normed but not rotated."""

    def __init__(self, cfg: Gemma3nTextConfig, idx: int, k_eq_v: bool = False):
        super().__init__()
        self.idx, self.kv_source = idx, cfg.kv_sources[idx]
        self.is_kv_source = idx in cfg.kv_sources[cfg.first_kv_shared_layer:]
        dims = getattr(cfg, "kv_dims", None)
        self.n_heads = cfg.num_attention_heads
        self.n_kv, self.head_dim = dims[idx] if dims else (cfg.num_key_value_heads, cfg.head_dim)
        self.window = cfg.sliding_window if cfg.layer_types[idx] == SLIDING else None
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.q_norm = _norm(self.head_dim, cfg)
        if self.kv_source == idx:  # KV-shared layers carry no key/value weights
            self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
            self.v_proj = None if k_eq_v else nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
            self.k_norm = _norm(self.head_dim, cfg)
            self.v_norm = _norm(self.head_dim, cfg, with_scale=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, rope, cache, positions, shared: dict):
        B, T, _ = x.shape
        cos, sin = rope
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2))  # (B, H, T, D)
        q = apply_rope(q, cos, sin)
        if self.kv_source != self.idx:
            k, v, k_pos = shared[self.kv_source]
        else:
            k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
            v = k if self.v_proj is None else self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            k, v = self.k_norm(k), self.v_norm(v)
            k, v, k_pos = cache.update(apply_rope(k, cos, sin), v, positions)
            if self.is_kv_source:
                shared[self.idx] = k, v, k_pos
        groups = shared.get("groups") if self.window else None  # Gemma 4: images both ways on sliding layers
        y = attend(q, k, v, step_mask(shared, positions, k_pos, self.window, groups), 1.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """GeGLU; with `sparsity` > 0 the gate keeps only values above mean + σ·Φ⁻¹(sparsity)."""

    def __init__(self, hidden: int, intermediate: int, sparsity: float):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        # Φ⁻¹ in float32, as the reference computes it with torch.distributions.Normal.icdf.
        p = torch.tensor(sparsity, dtype=torch.float32, device="cpu")  # also under torch.device("meta")
        self.std_multiplier = float(torch.erfinv(2 * p - 1) * math.sqrt(2)) if sparsity > 0 else None

    def forward(self, x):
        gate = self.gate_proj(x)
        if self.std_multiplier is not None:
            cutoff = gate.mean(-1, keepdim=True) + gate.std(-1, keepdim=True, unbiased=False) * \
                torch.tensor(self.std_multiplier, dtype=gate.dtype)
            gate = F.relu(gate - cutoff)
        return self.down_proj(F.gelu(gate, approximate="tanh") * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: Gemma3nTextConfig, idx: int):
        super().__init__()
        self.layer_type, self.active, self.correct_scale = cfg.layer_types[idx], cfg.altup_active_idx, cfg.altup_correct_scale
        H, P = cfg.hidden_size, cfg.hidden_size_per_layer_input
        self.altup = AltUp(cfg)
        self.attn_norm = _norm(H, cfg)
        self.laurel = Laurel(cfg)
        self.attn = Attention(cfg, idx)
        self.post_attn_norm = _norm(H, cfg)
        self.mlp_norm = _norm(H, cfg)
        self.mlp = MLP(H, cfg.intermediate_size[idx], cfg.activation_sparsity_pattern[idx])
        self.post_mlp_norm = _norm(H, cfg)
        self.ple_gate = nn.Linear(H, P, bias=False)
        self.ple_proj = nn.Linear(P, H, bias=False)
        self.ple_norm = _norm(H, cfg)

    def forward(self, streams, rope, cache, positions, per_layer_input, shared):
        """streams (K, B, T, H), per_layer_input (B, T, P) -> streams."""
        predictions = self.altup.predict(streams)
        active = predictions[self.active]
        h = self.attn_norm(active)
        attn = self.post_attn_norm(self.attn(h, rope, cache, positions, shared))
        x = (active + attn + self.laurel(h)) / math.sqrt(2)
        x = x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))
        corrected = self.altup.correct(predictions, x)
        first = corrected[self.active]
        if self.correct_scale:
            first = first * self.altup.correct_output_scale
        # This layer's PLE slice, gated by the corrected stream, feeds the other streams.
        gated = F.gelu(self.ple_gate(first), approximate="tanh") * per_layer_input
        corrected[1:] += self.ple_norm(self.ple_proj(gated))
        return corrected


def _match_magnitude(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rescale y to the RMS `target` (B, T, 1)."""
    mag = torch.sqrt(torch.mean(y ** 2, dim=-1, keepdim=True).clamp(min=1e-5))
    return y * target / mag


class Gemma3nText(nn.Module):
    def __init__(self, cfg: Gemma3nTextConfig):
        super().__init__()
        self.config = cfg
        L, P, H = cfg.num_hidden_layers, cfg.hidden_size_per_layer_input, cfg.hidden_size
        self.embed = empty_embedding(cfg.vocab_size, H, TiedEmbedding)  # quantized: an int8 head (`quantize_`)
        self.ple = PerLayerEmbedding(cfg)
        self.ple_projection = nn.Linear(H, L * P, bias=False)
        self.ple_projection_norm = _norm(P, cfg)
        self.altup_in = nn.ModuleList(nn.Linear(H, H, bias=False) for _ in range(cfg.altup_num_inputs - 1))
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(L))
        self.altup_out = nn.ModuleList(nn.Linear(H, H, bias=False) for _ in range(cfg.altup_num_inputs - 1))
        self.norm = _norm(H, cfg)
        self.rope_local = RotaryEmbedding(cfg.head_dim, cfg.rope_local_base)
        self.rope_global = RotaryEmbedding(cfg.head_dim, cfg.rope_global_base)
        # Set by the encoders (`gemma3n_fusion.attach_hard_tokens`): embeds vision/audio-vocabulary ids.
        self.hard_tokens = None

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings times sqrt(hidden) (scale rounded to the weights' dtype). Ids from the
        vision/audio vocabularies (>= vocab_size_per_layer_input) go through the encoders' embedders
        when they are attached (`hard_tokens`), in the prompt and in decoded tokens alike."""
        x = self.embed(ids)
        x = x * torch.tensor(math.sqrt(self.config.hidden_size), dtype=x.dtype)
        return x if self.hard_tokens is None else self.hard_tokens(ids, x)

    def per_layer_inputs(self, ids: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """(B, T, L, P): the projected embedding plus, when ids are known, the PLE rows."""
        cfg = self.config
        shape = (*x.shape[:-1], cfg.num_hidden_layers, cfg.hidden_size_per_layer_input)
        proj = self.ple_projection(x) * torch.tensor(cfg.hidden_size ** -0.5).to(x.dtype)
        proj = self.ple_projection_norm(proj.reshape(shape))
        if ids is None:
            return proj
        return (proj + self.ple(ids, x.dtype).reshape(shape)) * torch.rsqrt(torch.tensor(2.0)).to(x.dtype)

    def forward(self, ids: torch.Tensor | None, caches: list, positions: torch.Tensor, *,
                embeds: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, hidden) for tokens `ids` at `positions`.

        With `embeds` (multimodal input), those replace the token embeddings and `ids`, when given,
        still select the PLE rows: pass the prompt's ids with image/audio placeholders (out of the
        PLE table, so they read the pad row, as transformers does). `groups` is accepted for the
        shared interface and unused: Gemma 3n attends causally over image tokens too.
        """
        x = self.embed_tokens(ids) if embeds is None else embeds  # (B, T, H)
        per_layer = self.per_layer_inputs(ids, x)  # (B, T, L, P)
        target = torch.mean(x ** 2, dim=-1, keepdim=True) ** 0.5
        streams = torch.stack([x, *(_match_magnitude(p(x), target) for p in self.altup_in)])  # (K, B, T, H)
        ropes = {SLIDING: self.rope_local(positions, x.dtype), "full_attention": self.rope_global(positions, x.dtype)}
        shared: dict = {}  # this step's: kv source layer -> (k, v, k_pos); (window, keys) -> mask
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            streams = layer(streams, ropes[layer.layer_type], cache, positions, per_layer[:, :, i], shared)
        target = torch.mean(streams[0] ** 2, dim=-1, keepdim=True) ** 0.5
        outs = [streams[0], *(_match_magnitude(p(s), target) for p, s in zip(self.altup_out, streams[1:]))]
        return self.norm(torch.stack(outs).mean(0))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The tied LM head, soft-capped."""
        return softcap(self.embed.as_linear(h), self.config.final_logit_softcapping)
