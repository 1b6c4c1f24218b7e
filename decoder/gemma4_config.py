"""Gemma 4 text decoder configuration, read from a Hugging Face `config.json`.

Field names are the Hugging Face `Gemma4TextConfig` names. What a layer's type decides is written
out per layer once: `layer_types` (sliding / global, the last layer always global), `kv_sources`
(as Gemma 3n: the KV-shared tail attends the last earlier layer of its type), and `kv_dims`, the
(key/value heads, head width) of each layer, since global layers are wider (`global_head_dim`) and,
where keys equal values (`attention_k_eq_v`), may have their own head count.

A checkpoint states the global layers' shape either as `global_head_dim` /
`num_global_key_value_heads` (the released configs) or as a `per_layer_config` (what transformers
writes back on `save_pretrained`); both are read.
"""
import dataclasses
import warnings
from dataclasses import dataclass, field

from .config import _IGNORED_HF_KEYS, FULL, SLIDING
from .gemma3n_config import kv_sources

# Keys read below or that only matter for training / other parts of the checkpoint.
_IGNORED_4_KEYS = _IGNORED_HF_KEYS | {
    "per_layer_config", "enable_moe_block", "num_experts", "top_k_experts", "moe_intermediate_size",
    "hidden_size_per_layer_input", "num_global_key_value_heads", "global_head_dim",
}


@dataclass
class Gemma4TextConfig:
    vocab_size: int = 262144
    vocab_size_per_layer_input: int = 262144
    hidden_size: int = 1536
    hidden_size_per_layer_input: int = 256  # 0: no per-layer embeddings (the larger Gemma 4 models)
    intermediate_size: int = 6144
    num_hidden_layers: int = 35
    num_attention_heads: int = 8
    num_key_value_heads: int = 1
    head_dim: int = 256
    global_head_dim: int = 512
    num_global_key_value_heads: int | None = None  # with attention_k_eq_v only; else num_key_value_heads
    attention_k_eq_v: bool = False
    rms_norm_eps: float = 1e-6
    sliding_window: int = 512
    max_position_embeddings: int = 131072
    final_logit_softcapping: float | None = None
    rope_local_base: float = 10_000.0
    rope_global_base: float = 1_000_000.0
    rope_global_rotated: float = 0.25  # proportional RoPE: the share of a global head's dims that rotate
    rope_global_scaling: float = 1.0
    layer_types: tuple[str, ...] = field(default=())
    num_kv_shared_layers: int = 0
    use_double_wide_mlp: bool = False  # KV-shared layers' MLPs twice as wide
    use_bidirectional_attention: str | None = None  # "vision": image tokens see each other on sliding layers
    bos_token_id: int = 2
    eos_token_ids: tuple[int, ...] = (1, 106)  # <eos>, <turn|>
    pad_token_id: int = 0
    kv_sources: tuple[int, ...] = field(default=(), init=False)
    kv_dims: tuple[tuple[int, int], ...] = field(default=(), init=False)

    def __post_init__(self):
        n = self.num_hidden_layers
        types = list(self.layer_types) or default_layer_types(n)
        if len(types) != n:
            raise ValueError(f"layer_types has {len(types)} entries for {n} layers")
        types[-1] = FULL  # the last layer is always global, as transformers forces it
        self.layer_types = tuple(types)
        self.kv_sources = kv_sources(self.layer_types, self.num_kv_shared_layers)
        global_kv = (self.num_global_key_value_heads or self.num_key_value_heads) if self.attention_k_eq_v \
            else self.num_key_value_heads
        self.kv_dims = tuple((self.num_key_value_heads, self.head_dim) if t == SLIDING
                             else (global_kv, self.global_head_dim) for t in self.layer_types)

    @classmethod
    def from_hf(cls, d: dict) -> "Gemma4TextConfig":
        """From a `Gemma4TextConfig` dict (or the `text_config` of a `Gemma4Config`). Mixture-of-experts
        layers (26B-A4B) and options our decoder does not compute are refused with a `ValueError`."""
        if d.get("enable_moe_block"):
            raise ValueError("enable_moe_block is true: Gemma 4's mixture-of-experts layers (26B-A4B) are not "
                             "supported; E2B, E4B and the dense models are")
        for key, ok in (("attention_bias", (False, None)), ("use_bidirectional_attention", (None, "vision")),
                        ("hidden_activation", ("gelu_pytorch_tanh", None))):
            if d.get(key) not in ok:
                raise ValueError(f"{key}={d[key]!r} is not supported (expected {' or '.join(map(repr, ok))})")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(k for k in d if k not in names and k not in _IGNORED_4_KEYS)
        if unknown:
            warnings.warn(f"config keys not used by the Gemma 4 text decoder: {', '.join(unknown)}", stacklevel=2)
        kw = {k: v for k, v in d.items() if k in names and v is not None}
        kw["hidden_size_per_layer_input"] = d.get("hidden_size_per_layer_input") or 0
        kw.update(_global_shape(d))
        kw.update(_rope(d))
        eos = d.get("eos_token_id")
        if eos is not None:
            kw["eos_token_ids"] = tuple(sorted({*(eos if isinstance(eos, list) else [eos]), 106}))
        return cls(**kw)

    @property
    def first_kv_shared_layer(self) -> int:
        return self.num_hidden_layers - self.num_kv_shared_layers

    def mlp_width(self, idx: int) -> int:
        wide = self.use_double_wide_mlp and idx >= self.first_kv_shared_layer
        return self.intermediate_size * (2 if wide else 1)


def default_layer_types(n_layers: int, pattern: int = 6) -> list[str]:
    """transformers' default: five sliding-window layers, then one global, repeated."""
    return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers)]


def _global_shape(d: dict) -> dict:
    """global_head_dim / num_global_key_value_heads, from the keys or from `per_layer_config`."""
    out = {k: d[k] for k in ("global_head_dim", "num_global_key_value_heads") if d.get(k) is not None}
    types = d.get("layer_types") or []
    per_layer = d.get("per_layer_config") or {}
    for idx, over in sorted(per_layer.items(), key=lambda kv: int(kv[0])):
        if int(idx) < len(types) and types[int(idx)] != FULL:
            raise ValueError(f"per_layer_config overrides sliding layer {idx}: only global layers may differ")
        extra = set(over) - {"head_dim", "num_key_value_heads"}
        if extra:
            raise ValueError(f"per_layer_config[{idx}] sets {sorted(extra)}: only head_dim and num_key_value_heads "
                             "are supported")
        for ours, theirs in (("global_head_dim", "head_dim"), ("num_global_key_value_heads", "num_key_value_heads")):
            if theirs in over and out.setdefault(ours, over[theirs]) != over[theirs]:
                raise ValueError(f"per_layer_config gives global layers different {theirs}s")
    return out


def _rope(d: dict) -> dict:
    """RoPE per layer type: sliding layers plain RoPE; global layers proportional RoPE, which rotates
    the first `partial_rotary_factor` of the dims at frequencies set by the whole head width."""
    params = d.get("rope_parameters") or {}
    local, glob = params.get(SLIDING) or {}, params.get(FULL) or {}
    if local.get("rope_type", "default") != "default":
        raise ValueError(f"sliding layers' rope_type {local['rope_type']!r} is not supported (expected 'default')")
    if glob.get("rope_type", "proportional") not in ("proportional", "default"):
        raise ValueError(f"global layers' rope_type {glob['rope_type']!r} is not supported "
                         "(expected 'proportional' or 'default')")
    out = {}
    if "rope_theta" in local:
        out["rope_local_base"] = float(local["rope_theta"])
    if "rope_theta" in glob:
        out["rope_global_base"] = float(glob["rope_theta"])
    if glob:
        proportional = glob.get("rope_type", "proportional") == "proportional"
        out["rope_global_rotated"] = float(glob.get("partial_rotary_factor", 1.0)) if proportional else 1.0
        out["rope_global_scaling"] = float(glob.get("factor", 1.0)) if proportional else 1.0
    return out
