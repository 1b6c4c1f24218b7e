"""Gemma 4 text decoder, E2B / E4B and the dense models (Google, "Gemma 4", 2026), following
transformers' `modeling_gemma4.py`.

It keeps from Gemma 3n (`gemma3n.py`, whose pieces it reuses) the per-layer embeddings (PLE), KV
sharing in the last `num_kv_shared_layers`, norms that scale by w, RMS-normed values and queries
scaled by their norm alone. It drops AltUp, LAuReL and the sparse gate: one residual stream, Gemma 3's
pre/post-norm layer. What is new, in the order a token meets it:
- After attention and the MLP, each layer adds its PLE slice gated by the residual stream itself,
  then scales its output by a learned scalar (`layer_scalar`).
- Global layers are wider (`global_head_dim`, 512 against 256) and use proportional RoPE: only the
  first quarter of the frequencies turn, with base 1M; the rest of the head carries no position.
- With `attention_k_eq_v`, global layers have no value projection: values are the keys before their
  norm and rotation (and may have their own head count, `num_global_key_value_heads`).
- The last layer is always global; with `use_double_wide_mlp`, the KV-shared layers' MLPs are twice as wide.
Mixture-of-experts layers (26B-A4B) are refused when the config is read (`gemma4_config`).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .config import FULL, SLIDING
from .gemma3 import TiedEmbedding
from .gemma3n import MLP, Attention, Gemma3nText, PerLayerEmbedding, _norm
from .gemma4_config import Gemma4TextConfig
from .layers import RotaryEmbedding, empty_embedding


class Block(nn.Module):
    def __init__(self, cfg: Gemma4TextConfig, idx: int):
        super().__init__()
        H, P = cfg.hidden_size, cfg.hidden_size_per_layer_input
        self.layer_type = cfg.layer_types[idx]
        self.attn_norm = _norm(H, cfg)
        self.attn = Attention(cfg, idx, k_eq_v=cfg.attention_k_eq_v and self.layer_type == FULL)
        self.post_attn_norm = _norm(H, cfg)
        self.mlp_norm = _norm(H, cfg)
        self.mlp = MLP(H, cfg.mlp_width(idx), sparsity=0.0)
        self.post_mlp_norm = _norm(H, cfg)
        if P:
            self.ple_gate = nn.Linear(H, P, bias=False)
            self.ple_proj = nn.Linear(P, H, bias=False)
            self.ple_norm = _norm(H, cfg)
        self.layer_scalar = nn.Parameter(torch.ones(1))

    def forward(self, x, rope, cache, positions, per_layer_input, shared):
        """x (B, T, H), per_layer_input (B, T, P) or None -> x."""
        x = self.post_attn_norm.add_to(x, self.attn(self.attn_norm(x), rope, cache, positions, shared))
        x = self.post_mlp_norm.add_to(x, self.mlp(self.mlp_norm(x)))
        if per_layer_input is not None:  # this layer's PLE slice, gated by the stream it joins
            gated = F.gelu(self.ple_gate(x), approximate="tanh") * per_layer_input
            x = self.ple_norm.add_to(x, self.ple_proj(gated))
        return x * self.layer_scalar


class Gemma4Text(nn.Module):
    def __init__(self, cfg: Gemma4TextConfig):
        super().__init__()
        self.config = cfg
        L, P, H = cfg.num_hidden_layers, cfg.hidden_size_per_layer_input, cfg.hidden_size
        self.embed = empty_embedding(cfg.vocab_size, H, TiedEmbedding)
        if P:  # the names Gemma 3n uses, so `offload="ple"` and its helpers apply unchanged
            self.ple = PerLayerEmbedding(cfg)
            self.ple_projection = nn.Linear(H, L * P, bias=False)
            self.ple_projection_norm = _norm(P, cfg)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(L))
        self.norm = _norm(H, cfg)
        self.rope_local = RotaryEmbedding(cfg.head_dim, cfg.rope_local_base)
        self.rope_global = RotaryEmbedding(cfg.global_head_dim, cfg.rope_global_base, cfg.rope_global_scaling,
                                           rotated=cfg.rope_global_rotated)
        self.hard_tokens = None  # Gemma 4 has no separate media vocabulary; kept for `embed_tokens`
        self.soft_token_ids = torch.empty(0, dtype=torch.long)  # set by the encoders: image / audio placeholders

    # Token embeddings times sqrt(hidden), PLE inputs (projected embedding + table rows) / sqrt(2),
    # and the tied, soft-capped head: computed as Gemma 3n computes them.
    embed_tokens = Gemma3nText.embed_tokens
    per_layer_inputs = Gemma3nText.per_layer_inputs
    logits = Gemma3nText.logits

    def forward(self, ids: torch.Tensor | None, caches: list, positions: torch.Tensor, *,
                embeds: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, hidden) for tokens `ids` at `positions`. With `embeds`, those
        replace the token embeddings and `ids`, when given, still select the PLE rows. Media
        placeholder ids (`soft_token_ids`) read the pad rows of both tables wherever they stand, as
        transformers' multimodal model does. `groups` (T,) gives each position its image
        (-1 for text): with `use_bidirectional_attention="vision"` an image's tokens see each other
        both ways on the sliding layers (global layers stay causal)."""
        if ids is not None and len(self.soft_token_ids):
            ids = ids.masked_fill(torch.isin(ids, self.soft_token_ids), self.config.pad_token_id)
        x = self.embed_tokens(ids) if embeds is None else embeds  # (B, T, H)
        per_layer = self.per_layer_inputs(ids, x) if self.config.hidden_size_per_layer_input else None
        ropes = {SLIDING: self.rope_local(positions, x.dtype), FULL: self.rope_global(positions, x.dtype)}
        shared: dict = {}  # this step's: kv source layer -> (k, v, k_pos); (window, keys) -> mask
        if groups is not None and self.config.use_bidirectional_attention == "vision":
            shared["groups"] = groups
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            x = layer(x, ropes[layer.layer_type], cache, positions, None if per_layer is None else per_layer[:, :, i],
                      shared)
        return self.norm(x)
