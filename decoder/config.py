"""Gemma 3 text decoder configuration, read from a Hugging Face `config.json` or GGUF metadata.

Field names are the Hugging Face `Gemma3TextConfig` names. The local/global layer pattern is
written out once as `layer_types`, so no code does `layer_idx % 6`.
"""
import dataclasses
import warnings
from dataclasses import dataclass, field

SLIDING, FULL = "sliding_attention", "full_attention"

# Keys every transformers `PreTrainedConfig` may carry that say nothing about a model's math; the
# encoders' configs accept them too (`encoders.hf_config`).
HF_GENERIC_KEYS = frozenset({
    "model_type", "architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "initializer_range", "initializer_factor", "output_attentions", "output_hidden_states", "return_dict",
    "id2label", "label2id", "chunk_size_feed_forward", "is_encoder_decoder", "problem_type", "torchscript",
    "pruned_heads", "tie_encoder_decoder", "add_cross_attention", "finetuning_task", "prefix", "is_decoder",
    "sep_token_id", "decoder_start_token_id", "task_specific_params", "cross_attention_hidden_size",
    "max_length", "tokenizer_class", "pad_token_id", "bos_token_id", "eos_token_id", "use_cache",
    "tie_word_embeddings",
})
# And those of a Gemma 3 text config that are read elsewhere (rope: `_rope_from_hf`) or fixed in the model.
_IGNORED_HF_KEYS = HF_GENERIC_KEYS | {
    "attention_bias", "attention_dropout", "hidden_activation", "hidden_act", "sliding_window_pattern",
    "_sliding_window_pattern", "rope_scaling", "rope_theta", "rope_local_base_freq", "rope_parameters",
    "use_bidirectional_attention", "cache_implementation",
}


@dataclass
class TextConfig:
    vocab_size: int = 262144
    hidden_size: int = 640
    intermediate_size: int = 2048
    num_hidden_layers: int = 18
    num_attention_heads: int = 4
    num_key_value_heads: int = 1
    head_dim: int = 256
    rms_norm_eps: float = 1e-6
    query_pre_attn_scalar: float = 256
    sliding_window: int = 512
    max_position_embeddings: int = 32768
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    rope_global_base: float = 1_000_000.0
    rope_local_base: float = 10_000.0
    rope_global_scaling: float = 1.0  # linear position scaling on global layers (8.0 on Gemma 3 4B+)
    layer_types: tuple[str, ...] = field(default=())
    bos_token_id: int = 2
    eos_token_ids: tuple[int, ...] = (1, 106)  # <eos>, <end_of_turn>
    pad_token_id: int = 0

    def __post_init__(self):
        if not self.layer_types:
            self.layer_types = default_layer_types(self.num_hidden_layers)
        self.layer_types = tuple(self.layer_types)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")

    @classmethod
    def from_hf(cls, d: dict) -> "TextConfig":
        """From a `Gemma3TextConfig` dict (or the `text_config` of a multimodal one)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in names and k not in _IGNORED_HF_KEYS)
        if unknown:
            warnings.warn(f"config keys not used by the Gemma 3 text decoder: {', '.join(unknown)}", stacklevel=2)
        kw = {k: v for k, v in d.items() if k in names and v is not None}
        global_rope, local_rope = _rope_from_hf(d)
        kw.update(global_rope, **local_rope)
        eos = d.get("eos_token_id")
        if eos is not None:
            kw["eos_token_ids"] = tuple(sorted({*(eos if isinstance(eos, list) else [eos]), 106}))
        if "layer_types" not in d or d["layer_types"] is None:
            kw["layer_types"] = default_layer_types(kw.get("num_hidden_layers", cls.num_hidden_layers),
                                                    d.get("sliding_window_pattern", 6))
        return cls(**kw)

    @classmethod
    def from_gguf(cls, meta: dict) -> "TextConfig":
        """From GGUF metadata (llama.cpp's `gemma3.*` keys). GGUF leaves out the query scale and the
        local RoPE base; Gemma 3 uses head_dim and 10k for every released size."""
        a = "gemma3."
        head_dim = int(meta.get(a + "attention.key_length", 256))
        n_layers = int(meta[a + "block_count"])
        scaling = 1.0
        if meta.get(a + "rope.scaling.type") == "linear":
            scaling = float(meta.get(a + "rope.scaling.factor", 1.0))
        eos = {int(meta.get("tokenizer.ggml.eos_token_id", 1)), 106}
        if "tokenizer.ggml.eot_token_id" in meta:
            eos.add(int(meta["tokenizer.ggml.eot_token_id"]))
        return cls(
            vocab_size=int(meta.get(a + "vocab_size", 0)) or len(meta["tokenizer.ggml.tokens"]),
            hidden_size=int(meta[a + "embedding_length"]),
            intermediate_size=int(meta[a + "feed_forward_length"]),
            num_hidden_layers=n_layers,
            num_attention_heads=int(meta[a + "attention.head_count"]),
            num_key_value_heads=int(meta.get(a + "attention.head_count_kv", meta[a + "attention.head_count"])),
            head_dim=head_dim,
            rms_norm_eps=float(meta.get(a + "attention.layer_norm_rms_epsilon", 1e-6)),
            query_pre_attn_scalar=head_dim,
            sliding_window=int(meta.get(a + "attention.sliding_window", 512)),
            max_position_embeddings=int(meta.get(a + "context_length", 32768)),
            rope_global_base=float(meta.get(a + "rope.freq_base", 1_000_000.0)),
            rope_global_scaling=scaling,
            layer_types=default_layer_types(n_layers),
            bos_token_id=int(meta.get("tokenizer.ggml.bos_token_id", 2)),
            eos_token_ids=tuple(sorted(eos)),
        )


def default_layer_types(n_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Gemma 3's pattern: five sliding-window layers, then one global, repeated."""
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers))


def _rope_from_hf(d: dict) -> tuple[dict, dict]:
    """RoPE bases and linear scaling from either the transformers 4.x keys (`rope_theta`,
    `rope_local_base_freq`, `rope_scaling`) or the 5.x per-layer-type `rope_parameters`."""
    params = d.get("rope_parameters") or {}
    full = dict(params.get(FULL) or {})
    local = dict(params.get(SLIDING) or {})
    if d.get("rope_scaling"):
        full.update(d["rope_scaling"])
    g = {"rope_global_base": float(full.get("rope_theta", d.get("rope_theta", 1_000_000.0)))}
    rope_type = full.get("rope_type", full.get("type", "default"))
    if rope_type == "linear":
        g["rope_global_scaling"] = float(full["factor"])
    elif rope_type != "default":
        raise ValueError(f"unsupported rope type {rope_type!r} (supported: default, linear)")
    lo = {"rope_local_base": float(local.get("rope_theta", d.get("rope_local_base_freq", 10_000.0)))}
    return g, lo
