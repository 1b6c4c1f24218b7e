"""Gemma 3n text decoder configuration, read from a Hugging Face `config.json`.

Field names are the Hugging Face `Gemma3nTextConfig` names. Per-layer facts are written out once:
`layer_types` (4 local : 1 global), `intermediate_size` and `activation_sparsity_pattern` per layer,
and `kv_sources`, the layer whose keys/values each layer attends (itself, or the last producer of
its type for the KV-shared tail).
"""
import dataclasses
import warnings
from dataclasses import dataclass, field

from .config import _IGNORED_HF_KEYS, FULL, SLIDING, _rope_from_hf

# Keys of a Gemma 3n config that only matter for training or for other parts of the checkpoint.
_IGNORED_3N_KEYS = _IGNORED_HF_KEYS | {"altup_coef_clip", "altup_lr_multiplier", "query_pre_attn_scalar",
                                       "attn_logit_softcapping"}


@dataclass
class Gemma3nTextConfig:
    vocab_size: int = 262400
    vocab_size_per_layer_input: int = 262144
    hidden_size: int = 2048
    hidden_size_per_layer_input: int = 256
    intermediate_size: tuple[int, ...] | int = 8192
    num_hidden_layers: int = 30
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 256
    rms_norm_eps: float = 1e-6
    sliding_window: int = 512
    max_position_embeddings: int = 32768
    final_logit_softcapping: float | None = 30.0
    rope_global_base: float = 1_000_000.0
    rope_local_base: float = 10_000.0
    layer_types: tuple[str, ...] = field(default=())
    altup_num_inputs: int = 4
    altup_active_idx: int = 0
    altup_correct_scale: bool = True
    laurel_rank: int = 64
    num_kv_shared_layers: int = 10
    activation_sparsity_pattern: tuple[float, ...] | None = None
    bos_token_id: int = 2
    eos_token_ids: tuple[int, ...] = (1, 106)
    pad_token_id: int = 0
    kv_sources: tuple[int, ...] = field(default=(), init=False)

    def __post_init__(self):
        n = self.num_hidden_layers
        if isinstance(self.intermediate_size, int):
            self.intermediate_size = (self.intermediate_size,) * n
        self.intermediate_size = tuple(self.intermediate_size)
        # E2B/E4B: the first 10 layers keep only the top 5% of gate activations.
        if self.activation_sparsity_pattern is None:
            k = 10 if n > 10 else 0
            self.activation_sparsity_pattern = (0.95,) * k + (0.0,) * (n - k)
        self.activation_sparsity_pattern = tuple(float(s) for s in self.activation_sparsity_pattern)
        self.layer_types = tuple(self.layer_types) or default_layer_types(n)
        for name in ("intermediate_size", "activation_sparsity_pattern", "layer_types"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} layers")
        self.kv_sources = kv_sources(self.layer_types, self.num_kv_shared_layers)

    @classmethod
    def from_hf(cls, d: dict) -> "Gemma3nTextConfig":
        """From a `Gemma3nTextConfig` dict (or the `text_config` of a `Gemma3nConfig`)."""
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(k for k in d if k not in names and k not in _IGNORED_3N_KEYS)
        if unknown:
            warnings.warn(f"config keys not used by the Gemma 3n text decoder: {', '.join(unknown)}", stacklevel=2)
        kw = {k: v for k, v in d.items() if k in names and v is not None}
        global_rope, local_rope = _rope_from_hf(d)
        if global_rope.pop("rope_global_scaling", 1.0) != 1.0:
            raise ValueError("Gemma 3n uses no RoPE scaling; this config asks for linear scaling")
        kw.update(global_rope, **local_rope)
        eos = d.get("eos_token_id")
        if eos is not None:
            kw["eos_token_ids"] = tuple(sorted({*(eos if isinstance(eos, list) else [eos]), 106}))
        return cls(**kw)

    @property
    def first_kv_shared_layer(self) -> int:
        return self.num_hidden_layers - self.num_kv_shared_layers


def default_layer_types(n_layers: int, pattern: int = 5) -> tuple[str, ...]:
    """Gemma 3n's pattern: four sliding-window layers, then one global, repeated."""
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers))


def kv_sources(layer_types: tuple[str, ...], n_shared: int) -> tuple[int, ...]:
    """Layer i attends the keys/values of layer kv_sources[i]: itself, or for the last `n_shared`
    layers, the last earlier layer of the same type (transformers' `kv_sharing_modes`)."""
    first = len(layer_types) - n_shared
    out = list(range(len(layer_types)))
    for i in range(first, len(layer_types)):
        producers = [j for j in range(first) if layer_types[j] == layer_types[i]]
        if not producers:
            raise ValueError(f"layer {i} ({layer_types[i]}) shares KV but no earlier layer of its type computes it")
        out[i] = producers[-1]
    return tuple(out)
