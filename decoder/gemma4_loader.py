"""Loading a Gemma 4 text decoder from a Hugging Face checkpoint in its real layout.

`Gemma4ForConditionalGeneration` (google/gemma-4-E2B-it) stores the decoder under
`model.language_model.*` beside the vision and audio towers and their embedders
(`model.vision_tower.*`, `model.audio_tower.*`, `model.embed_vision.*`, `model.embed_audio.*`),
which are handed back unread in `extra_tensors` for the encoders; `Gemma4ForCausalLM` stores it under `model.*`.
A missing or unexpected decoder tensor is a `ModelLoadError` naming it; config keys the decoder
does not read are named in a warning. With `offload="ple"` the per-layer embedding table is mapped
from the checkpoint file and never read into memory. Quantized (`mmsdk.load(folder, quantize="int4")`),
the decoder is streamed into a weight cache as Gemma 3n's is (`gemma3n_loader.load_quantized`, with `GEMMA4`).
A GGUF as llama.cpp writes it is read by `loader.load_text` with what is defined at the end of this file:
its config from the metadata (`gguf_config`), llama.cpp's tensor names (`gguf_key_map`), and its
per-layer table left in the file's blocks (`GGUFPerLayerEmbedding`).
"""
import json
import warnings
from pathlib import Path

import torch

from .errors import ModelLoadError
from .gemma3n import PerLayerEmbedding
from .gemma3n_loader import HF_TO_NATIVE_3N, NON_TEXT_PREFIXES, PLE_KEY, Family, take_ple
from .gguf_file import dequantize_rows
from .gemma4 import Gemma4Text
from .gemma4_config import Gemma4TextConfig
from .loaded import LoadedText
from .offload import MappedPerLayerEmbedding
from .safetensors_folder import folder_tokenizer, index_safetensors, split_text_tensors, stored_dtype
from .weights import GGUF_TO_NATIVE, HF_TO_NATIVE, assign_strict, expand

GEMMA4_ARCHITECTURES = {"gemma4", "gemma4_text"}
_TEXT_PREFIXES = ("model.language_model.", "model.")
_PLE_NAMES = (PLE_KEY, "per_layer_model_projection.weight", "per_layer_projection_norm.weight",
              "layers.{}.per_layer_input_gate.weight", "layers.{}.per_layer_projection.weight",
              "layers.{}.post_per_layer_input_norm.weight")
# Gemma 3n's names less AltUp and LAuReL, plus the per-layer output scale (a buffer in transformers).
HF_TO_NATIVE_4 = {**{k: v for k, v in HF_TO_NATIVE_3N.items() if ".altup." not in k and ".laurel." not in k},
                  "layers.{}.layer_scalar": "layers.{}.layer_scalar"}
# What KV-shared layers compute from (and transformers ignores on load for them): not in our model.
_KV_NAMES = ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_norm.weight", "self_attn.v_norm.weight")


def key_map(cfg: Gemma4TextConfig) -> dict[str, str]:
    """HF name (relative to the text prefix) -> our parameter name, for every tensor this config has."""
    names = HF_TO_NATIVE_4 if cfg.hidden_size_per_layer_input else \
        {k: v for k, v in HF_TO_NATIVE_4.items() if k not in _PLE_NAMES}
    m = expand(names, cfg.num_hidden_layers)
    for i in range(cfg.num_hidden_layers):
        if cfg.kv_sources[i] != i:
            for name in ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_norm.weight"):
                del m[f"layers.{i}.{name}"]
        elif cfg.attention_k_eq_v and cfg.layer_types[i] == "full_attention":
            del m[f"layers.{i}.self_attn.v_proj.weight"]  # values are the keys
    return m


def is_gemma4_folder(path) -> bool:
    """Whether `path` is a Hugging Face folder holding a Gemma 4 checkpoint."""
    cfg = Path(path) / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") in GEMMA4_ARCHITECTURES
    except (OSError, json.JSONDecodeError):
        return False


def read_config(folder: Path, hf: dict) -> Gemma4TextConfig:
    """The text decoder's config (a `Gemma4Config`'s `text_config`, or a `Gemma4TextConfig` itself);
    what it cannot compute is a `ModelLoadError`, keys it does not read a warning."""
    text_hf = (hf.get("text_config") or {}) if hf.get("model_type") == "gemma4" else hf
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            return Gemma4TextConfig.from_hf(text_hf)
        except (TypeError, ValueError) as e:
            raise ModelLoadError(folder / "config.json", str(e)) from e


def load_gemma4(folder, hf: dict | None = None, dtype: torch.dtype = torch.float32, *, offload: str | None = None):
    """A `LoadedText` for a Gemma 4 checkpoint folder; `offload="ple"` maps the per-layer table."""
    from .offload import offload_ple

    folder = Path(folder)
    if hf is None:
        hf = json.loads((folder / "config.json").read_text())
    cfg = read_config(folder, hf)
    text, extra = _text_tensors(folder, hf, cfg)

    with torch.device("meta"):
        model = Gemma4Text(cfg)
    model.to_empty(device="cpu")
    kmap = key_map(cfg)
    ple = take_ple(model, text, kmap, folder) if offload == "ple" else None
    assign_strict(model, text, kmap, folder, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    model.requires_grad_(False)
    if ple is not None:
        offload_ple(model, source=(ple.file, ple.name))
    tok, stored = folder_tokenizer(folder, hf), stored_dtype(hf)
    # The towers' tensors stay unread (`LazyTensor`s) until an encoder takes them (`mmsdk.media`).
    return LoadedText(model.eval(), tok, folder.name, "hf", stored, extra, hf, parameters=n_params)


def _text_tensors(folder: Path, hf: dict, cfg: Gemma4TextConfig):
    """(text tensors by their name under the text prefix, encoder tensors), all unread. Tensors
    outside the decoder and the known towers are refused; the K/V weights of KV-shared layers,
    which released checkpoints may carry, are left out as transformers leaves them."""
    tensors = index_safetensors(folder)
    text, extra = split_text_tensors(tensors, _TEXT_PREFIXES, folder, "model.language_model.embed_tokens.weight")
    stray = sorted(k for k in extra if hf.get("model_type") == "gemma4_text" or not k.startswith(NON_TEXT_PREFIXES))
    if stray:
        raise ModelLoadError(folder, f"unexpected tensor {stray[0]!r}")
    for i in range(cfg.num_hidden_layers):
        if cfg.kv_sources[i] != i:
            for name in _KV_NAMES:
                text.pop(f"layers.{i}.{name}", None)
    return text, extra


def _accelerate(model):
    """Gemma 4's decode-time swaps (`gemma4_fast`)."""
    from .gemma4_fast import accelerate_

    return accelerate_(model)


GEMMA4 = Family("gemma4", Gemma4Text, read_config, _text_tensors, key_map, _accelerate)


# ---- GGUF as llama.cpp writes it (convert_hf_to_gguf.py's `Gemma4Model`, src/models/gemma4.cpp) ----
#
# The converter keeps every tensor as transformers holds it, norms included (no +1 folded in, no q/k
# permutation), under llama.cpp's names; the PLE table keeps its (vocab, layers x P) shape. Two things
# are not tensors of ours: `rope_freqs.weight`, which spells proportional RoPE as frequency factors (1
# for the rotated pairs, 1e30 for the rest), and the config, which is metadata. KV-shared layers keep
# their unused K/V tensors where the source checkpoint had them (released ones do). The vision and
# audio towers go to a separate mmproj file, not read here.

# llama.cpp's name -> transformers' (under the text prefix); `key_map` takes it on to ours.
GGUF_TO_HF_4 = {
    **{gguf: {ours: hf for hf, ours in HF_TO_NATIVE.items()}[ours] for gguf, ours in GGUF_TO_NATIVE.items()},
    "per_layer_token_embd.weight": PLE_KEY,  # PLE_GGUF
    "per_layer_model_proj.weight": "per_layer_model_projection.weight",
    "per_layer_proj_norm.weight": "per_layer_projection_norm.weight",
    "blk.{}.inp_gate.weight": "layers.{}.per_layer_input_gate.weight",
    "blk.{}.proj.weight": "layers.{}.per_layer_projection.weight",
    "blk.{}.post_norm.weight": "layers.{}.post_per_layer_input_norm.weight",
    "blk.{}.layer_output_scale.weight": "layers.{}.layer_scalar",
}
ROPE_FREQS = "rope_freqs.weight"
PLE_GGUF = "per_layer_token_embd.weight"
_GGUF_KEYS_4 = {f"gemma4.{k}" for k in (
    "block_count", "context_length", "embedding_length", "feed_forward_length", "embedding_length_per_layer_input",
    "attention.head_count", "attention.head_count_kv", "attention.key_length", "attention.value_length",
    "attention.key_length_swa", "attention.value_length_swa", "attention.layer_norm_rms_epsilon",
    "attention.sliding_window", "attention.sliding_window_pattern", "attention.shared_kv_layers",
    "rope.freq_base", "rope.freq_base_swa", "rope.dimension_count", "rope.dimension_count_swa",
    "final_logit_softcapping")}
_TOKENIZER_KEYS = {f"tokenizer.ggml.{k}" for k in (
    "model", "pre", "tokens", "scores", "token_type", "merges", "bos_token_id", "eos_token_id", "unknown_token_id",
    "padding_token_id", "mask_token_id", "eot_token_id", "add_space_prefix", "add_bos_token", "add_eos_token")}
_DESCRIPTIVE = ("general.", "quantize.", "tokenizer.chat_template")  # names, licences, imatrix notes, template


def gguf_config(gg) -> Gemma4TextConfig:
    """The decoder's config from a Gemma 4 GGUF's metadata (and the tensors that carry what it does
    not say: k = v on global layers, proportional RoPE's share). Mixture-of-experts files and
    shapes our decoder does not compute are a `ModelLoadError`; keys it does not read, a warning."""
    meta, path = gg.meta, gg.path
    if meta.get("gemma4.expert_count"):
        raise ModelLoadError(path, "gemma4.expert_count > 0: Gemma 4's mixture-of-experts layers (26B-A4B) are not "
                             "supported; E2B, E4B and the dense models are")
    unknown = sorted(k for k in meta if k not in _GGUF_KEYS_4 | _TOKENIZER_KEYS and not k.startswith(_DESCRIPTIVE)
                     and k != "general.architecture")
    if unknown:
        warnings.warn(f"{path.name}: GGUF metadata keys not used by the Gemma 4 text decoder: {', '.join(unknown)}",
                      stacklevel=3)

    def key(name, default=KeyError):
        value = meta.get(f"gemma4.{name}", default)
        if value is KeyError:
            raise ModelLoadError(path, f"incomplete gemma4 metadata: no {'gemma4.' + name!r}")
        return value

    L = int(key("block_count"))
    swa = key("attention.sliding_window_pattern")
    if not isinstance(swa, list) or len(swa) != L:
        raise ModelLoadError(path, f"gemma4.attention.sliding_window_pattern: expected {L} booleans, got {swa!r}")
    types = ["sliding_attention" if s else "full_attention" for s in swa]
    head_dim, global_head_dim = int(key("attention.key_length_swa")), int(key("attention.key_length"))
    for got, want, what in ((key("attention.value_length_swa"), head_dim, "value_length_swa"),
                            (key("attention.value_length"), global_head_dim, "value_length"),
                            (key("rope.dimension_count_swa", head_dim), head_dim, "rope.dimension_count_swa"),
                            (key("rope.dimension_count", global_head_dim), global_head_dim, "rope.dimension_count")):
        if int(got) != want:
            raise ModelLoadError(path, f"gemma4.{what} is {got}, expected {want}: not a shape Gemma 4's decoder has")
    shared = int(key("attention.shared_kv_layers", 0))
    names = set(gg.tensors)
    own_global = [i for i in range(L - shared) if types[i] == "full_attention"]
    k_eq_v = bool(own_global) and all(f"blk.{i}.attn_v.weight" not in names for i in own_global)
    kv_swa, kv_global = _per_type(key("attention.head_count_kv"), types, "attention.head_count_kv", path)
    if kv_global != kv_swa and not k_eq_v:
        raise ModelLoadError(path, f"global layers have {kv_global} key/value heads, sliding ones {kv_swa}: only "
                             "layers whose values are their keys (no attn_v) may differ")
    ff = key("feed_forward_length")
    base = int(ff[0] if isinstance(ff, list) else ff)
    double = [base if i < L - shared else 2 * base for i in range(L)]
    if isinstance(ff, list) and ff not in ([base] * L, double):
        raise ModelLoadError(path, f"gemma4.feed_forward_length {ff}: expected one width, or twice it in the "
                             f"{shared} KV-shared layers")
    per_layer = int(key("embedding_length_per_layer_input", 0))
    cfg = dict(
        vocab_size=gg.tensors["token_embd.weight"].shape[0] if "token_embd.weight" in names else 0,
        hidden_size=int(key("embedding_length")), hidden_size_per_layer_input=per_layer,
        intermediate_size=base, use_double_wide_mlp=isinstance(ff, list) and ff == double and shared > 0,
        num_hidden_layers=L, num_attention_heads=int(_per_type(key("attention.head_count"), types,
                                                               "attention.head_count", path, same=True)[0]),
        num_key_value_heads=kv_swa, num_global_key_value_heads=kv_global if k_eq_v else None,
        head_dim=head_dim, global_head_dim=global_head_dim, attention_k_eq_v=k_eq_v,
        rms_norm_eps=float(f"{key('attention.layer_norm_rms_epsilon'):.7g}"),  # stored as float32
        sliding_window=int(key("attention.sliding_window")),
        max_position_embeddings=int(key("context_length")),
        final_logit_softcapping=key("final_logit_softcapping", None),
        rope_local_base=float(key("rope.freq_base_swa", 10_000.0)), rope_global_base=float(key("rope.freq_base")),
        rope_global_rotated=_rotated_share(gg, global_head_dim), layer_types=tuple(types), num_kv_shared_layers=shared,
        bos_token_id=int(meta.get("tokenizer.ggml.bos_token_id", 2)),
        eos_token_ids=tuple(sorted({int(meta.get("tokenizer.ggml.eos_token_id", 1)), 106})),
        pad_token_id=int(meta.get("tokenizer.ggml.padding_token_id", 0)))
    if per_layer:
        ple = gg.tensors.get(PLE_GGUF)
        cfg["vocab_size_per_layer_input"] = ple.shape[0] if ple else cfg["vocab_size"]
    return Gemma4TextConfig(**cfg)


def _per_type(value, types, name: str, path, same: bool = False) -> tuple[int, int]:
    """(sliding layers' value, global layers' value) of a per-layer metadata key (a number or a list)."""
    if not isinstance(value, list):
        return int(value), int(value)
    if len(value) != len(types):
        raise ModelLoadError(path, f"gemma4.{name} has {len(value)} entries for {len(types)} layers")
    by_type = {t: {int(v) for v, u in zip(value, types) if u == t} for t in set(types)}
    swa, full = by_type.get("sliding_attention", set()), by_type.get("full_attention", set())
    if len(swa) > 1 or len(full) > 1 or (same and swa and full and swa != full):
        raise ModelLoadError(path, f"gemma4.{name} {value}: expected one value per layer type")
    one = next(iter(swa or full))
    return one, next(iter(full or swa), one)


def _rotated_share(gg, head_dim: int) -> float:
    """Proportional RoPE's rotated share from `rope_freqs.weight`: factor 1 for each rotated pair,
    1e30 (a frequency of ~0) for the rest; no tensor, every pair rotates."""
    if ROPE_FREQS not in gg.tensors:
        return 1.0
    f = gg.dequantize(ROPE_FREQS)
    n = int((f == 1.0).sum())
    if f.numel() != head_dim // 2 or not bool(((f == 1.0) | (f >= 1e29)).all()) or not bool((f[:n] == 1.0).all()):
        raise ModelLoadError(gg.path, f"tensor {ROPE_FREQS!r}: expected {head_dim // 2} factors, 1 for the rotated "
                             "pairs then 1e30 (proportional RoPE); other frequency factors are not supported")
    return 2 * n / head_dim


def gguf_key_map(cfg: Gemma4TextConfig) -> dict[str, str]:
    """llama.cpp's name -> our parameter name, for every tensor this config has."""
    ours = key_map(cfg)
    return {g: ours[hf] for g, hf in expand(GGUF_TO_HF_4, cfg.num_hidden_layers).items() if hf in ours}


def gguf_unused(cfg: Gemma4TextConfig, names) -> set[str]:
    """Tensors a valid file may carry that no module reads: the frequency factors (read into the
    config) and the K/V weights of KV-shared layers (released checkpoints carry them)."""
    shared = {f"blk.{i}.{n}" for i in range(cfg.first_kv_shared_layer, cfg.num_hidden_layers)
              for n in ("attn_k.weight", "attn_v.weight", "attn_k_norm.weight")}
    return {n for n in names if n == ROPE_FREQS or n in shared}


class GGUFPerLayerEmbedding(MappedPerLayerEmbedding):
    """The per-layer table in the GGUF's own blocks (Q4_K_M files: Q6_K, 1.9 GB on E2B against 4.7 GB
    as bfloat16): a step dequantizes only its tokens' rows. Mapped from the file (`offload="ple"`:
    a row read faults in its own pages only) or, without offload, those blocks copied into memory."""

    def __init__(self, like: PerLayerEmbedding, gg, name: str, mapped: bool):
        t = gg.tensors[name]
        raw = gg.raw(name)
        if mapped:
            gg.advise_random(name)
        super().__init__(like, raw if mapped else raw.copy())
        self.kind, self.width = t.kind, t.shape[1]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).numpy()
        w = dequantize_rows(self.table[flat], self.kind, (len(flat), self.width))
        return w.reshape(*ids.shape, self.width)
