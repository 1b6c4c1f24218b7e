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
    chat_template: str | None = None  # the Jinja template the checkpoint carries, if any

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
        if d.get("attn_logit_softcapping") is not None:  # a field transformers applies and our attention has not
            raise ValueError("attn_logit_softcapping is set: Gemma 3 has no attention soft-cap (unsupported)")
        if d.get("use_bidirectional_attention"):
            raise ValueError("use_bidirectional_attention is true: bidirectional attention is not supported")
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
        """From GGUF metadata, read as llama.cpp reads a `gemma3` file (`llama_model_base::load_hparams`,
        `src/models/gemma3.cpp`): a key the file lacks takes llama.cpp's default for it, and the
        query scale, which no key holds, follows llama.cpp's rule for the model size. Keys nothing
        here or in the tokenizer reads are listed in one warning (`gguf_unused_keys`)."""
        keys = _GgufKeys(meta)
        cfg = cls(**_gguf_hparams(keys))
        unused = gguf_unused_keys(meta, keys.read)
        if unused:
            warnings.warn("GGUF metadata not used by the Gemma 3 runtime: " + "; ".join(unused), stacklevel=2)
        return cfg


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


# ---- GGUF ------------------------------------------------------------------------------------
_ARCH = "gemma3."
_MISSING = object()
# llama.cpp's `n_layer` for Gemma 3 27B: the one size whose query scale is hidden / heads (168),
# not head_dim (128), after gemma_pytorch's config (`query_pre_attn_scalar`).
_LAYERS_27B = 62
# Metadata that describes the file and changes no computation.
_DESCRIPTIVE_PREFIXES = ("general.", "quantize.", "split.")
# Keys the loader and tokenizer read (`loader._load_gguf_source`, `tokenizer.tokenizer_from_gguf`);
# Gemma merges pieces by vocabulary order, so the scores a converter writes carry nothing more.
_READ_ELSEWHERE = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores",
                   "tokenizer.ggml.unknown_token_id"}
# What mmsdk's Gemma tokenizer does; a file asking for something else is reported.
_TOKENIZER_ASSUMES = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
                      "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
                      "tokenizer.ggml.add_sep_token": False, "tokenizer.ggml.add_space_prefix": False,
                      "tokenizer.ggml.remove_extra_whitespaces": False}


class _GgufKeys:
    """GGUF metadata that remembers which keys were asked for, so the rest can be reported."""

    def __init__(self, meta: dict):
        self.meta, self.read = meta, set()

    def get(self, key: str, default=_MISSING):
        self.read.add(key)
        if key in self.meta:
            return self.meta[key]
        if default is _MISSING:
            raise KeyError(key)
        return default

    def arch(self, key: str, default=_MISSING):
        return self.get(_ARCH + key, default)

    def per_layer(self, key: str, n_layers: int, default=_MISSING) -> int:
        """A count llama.cpp takes as one number or one per layer (`get_key_or_arr`); Gemma 3's are uniform."""
        v = self.arch(key, default)
        if isinstance(v, list):
            if len(set(v)) != 1 or len(v) != n_layers:
                raise ValueError(f"{_ARCH}{key} differs between layers ({v[:8]}...): not a Gemma 3 layout")
            v = v[0]
        return int(v)


def _gguf_hparams(g: _GgufKeys) -> dict:
    """TextConfig fields from a gemma3 GGUF, key by key as llama.cpp reads them."""
    n_layers = int(g.arch("block_count"))
    hidden = int(g.arch("embedding_length"))
    n_head = g.per_layer("attention.head_count", n_layers)
    head_dim = int(g.arch("attention.key_length", hidden // n_head))
    # Shapes our attention does not have: a different value width, partial RoPE, other SWA heads.
    for key in ("attention.value_length", "rope.dimension_count", "attention.key_length_swa",
                "attention.value_length_swa", "rope.dimension_count_swa"):
        if int(g.arch(key, head_dim)) != head_dim:
            raise ValueError(f"{_ARCH}{key} = {g.arch(key)} differs from the head size {head_dim} (unsupported)")
    if not g.arch("attention.causal", True):
        raise ValueError(f"{_ARCH}attention.causal is false: bidirectional attention is not supported")
    kw = dict(
        vocab_size=int(g.arch("vocab_size", 0)) or len(g.get("tokenizer.ggml.tokens")),
        hidden_size=hidden,
        intermediate_size=g.per_layer("feed_forward_length", n_layers),
        num_hidden_layers=n_layers,
        num_attention_heads=n_head,
        num_key_value_heads=g.per_layer("attention.head_count_kv", n_layers, n_head),
        head_dim=head_dim,
        rms_norm_eps=_f32(g.arch("attention.layer_norm_rms_epsilon")),  # required by llama.cpp too
        # llama.cpp: 1/sqrt(hidden / heads) on 27B (integer division, as there), 1/sqrt(head_dim) otherwise
        query_pre_attn_scalar=hidden // n_head if n_layers == _LAYERS_27B else head_dim,
        max_position_embeddings=int(g.arch("context_length")),
        final_logit_softcapping=_f32(g.arch("final_logit_softcapping", 0.0)) or None,
        rope_global_base=_f32(g.arch("rope.freq_base", 10_000.0)),
        rope_local_base=_f32(g.arch("rope.freq_base_swa", 10_000.0)),
        rope_global_scaling=_gguf_rope_scaling(g),
        pad_token_id=int(g.get("tokenizer.ggml.padding_token_id", 0)),
        chat_template=g.get("tokenizer.chat_template", None),
    )
    window = int(g.arch("attention.sliding_window", 0))
    if window > 0:
        kw["sliding_window"] = window
        kw["layer_types"] = _gguf_layer_types(g, n_layers)
    else:  # llama.cpp: no window, no SWA layers; every layer is global with the global RoPE
        kw["layer_types"] = (FULL,) * n_layers
    kw.update(_gguf_special_ids(g))
    return kw


def _gguf_rope_scaling(g: _GgufKeys) -> float:
    """The global layers' linear RoPE factor. llama.cpp takes the type as linear when unnamed and
    reads the factor from either key name; sliding layers keep scale 1 (`rope_freq_scale_train_swa`)."""
    kind = g.arch("rope.scaling.type", "linear")
    if kind not in ("linear", "none"):
        raise ValueError(f"{_ARCH}rope.scaling.type {kind!r} is not supported (supported: linear, none)")
    factor = g.arch("rope.scaling.factor", None)
    if factor is None:
        factor = g.arch("rope.scale_linear", 0.0)
    g.arch("rope.scaling.finetuned", None)  # informational in llama.cpp as well
    return _f32(factor) or 1.0


def _gguf_layer_types(g: _GgufKeys, n_layers: int) -> tuple[str, ...]:
    """llama.cpp's `load_swa_pattern(ml, 6)`: a per-layer array of is-sliding flags, or a period n
    whose last layer is global (0: every layer sliding)."""
    pattern = g.arch("attention.sliding_window_pattern", 6)
    if isinstance(pattern, list):
        if len(pattern) != n_layers:
            raise ValueError(f"{_ARCH}attention.sliding_window_pattern has {len(pattern)} entries for {n_layers} layers")
        return tuple(SLIDING if bool(p) else FULL for p in pattern)
    pattern = int(pattern)
    if pattern == 0:
        return (SLIDING,) * n_layers
    return default_layer_types(n_layers, pattern)


def _gguf_special_ids(g: _GgufKeys) -> dict:
    """BOS and the end-of-generation ids: EOS, EOT (by key, else `<end_of_turn>` as llama.cpp finds
    it by its text) and EOM. Without an id key, the Gemma token of that name."""
    tokens = g.get("tokenizer.ggml.tokens", [])

    def special(kind: str, text: str | None) -> int | None:
        v = g.get(f"tokenizer.ggml.{kind}_token_id", None)
        if v is not None:
            return int(v)
        return tokens.index(text) if text in tokens else None

    bos, eos = special("bos", "<bos>"), special("eos", "<eos>")
    if bos is None or eos is None:
        raise ValueError("tokenizer.ggml.bos_token_id / eos_token_id missing and no <bos> / <eos> token")
    eog = {eos, special("eot", "<end_of_turn>"), special("eom", None)} - {None}
    return {"bos_token_id": bos, "eos_token_ids": tuple(sorted(eog))}


def _f32(v) -> float:
    """A GGUF float32 as the decimal it was written from (1e-06, not 9.99999997e-07)."""
    import numpy as np

    return float(str(np.float32(v)))


def gguf_unused_keys(meta: dict, read: set[str]) -> list[str]:
    """What in `meta` nothing reads (beyond descriptive `general.*` keys), and tokenizer settings that
    differ from what mmsdk's Gemma tokenizer does, each as `key` or `key=value (expected ...)`."""
    out = []
    for key in sorted(meta):
        if key in read or key in _READ_ELSEWHERE or key.startswith(_DESCRIPTIVE_PREFIXES):
            continue
        if key in _TOKENIZER_ASSUMES:
            if meta[key] != _TOKENIZER_ASSUMES[key]:
                out.append(f"{key}={meta[key]!r} (the tokenizer does {_TOKENIZER_ASSUMES[key]!r})")
            continue
        out.append(key)
    return out
