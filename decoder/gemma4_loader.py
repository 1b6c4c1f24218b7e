"""Loading a Gemma 4 text decoder from a Hugging Face checkpoint in its real layout.

`Gemma4ForConditionalGeneration` (google/gemma-4-E2B-it) stores the decoder under
`model.language_model.*` beside the vision and audio towers and their embedders
(`model.vision_tower.*`, `model.audio_tower.*`, `model.embed_vision.*`, `model.embed_audio.*`),
which are handed back unread in `extra_tensors` for the encoders; `Gemma4ForCausalLM` stores it under `model.*`.
A missing or unexpected decoder tensor is a `ModelLoadError` naming it; config keys the decoder
does not read are named in a warning. With `offload="ple"` the per-layer embedding table is mapped
from the checkpoint file and never read into memory. Quantized (`mmsdk.load(folder, quantize="int4")`),
the decoder is streamed into a weight cache as Gemma 3n's is (`gemma3n_loader.load_quantized`, with `GEMMA4`).
"""
import json
import warnings
from pathlib import Path

import torch

from .errors import ModelLoadError
from .gemma3n_loader import HF_TO_NATIVE_3N, NON_TEXT_PREFIXES, PLE_KEY, Family, take_ple
from .gemma4 import Gemma4Text
from .gemma4_config import Gemma4TextConfig
from .loaded import LoadedText
from .safetensors_folder import folder_tokenizer, index_safetensors, split_text_tensors, stored_dtype
from .weights import assign_strict, expand

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
