"""Loading a Gemma 3n text decoder from a Hugging Face checkpoint in its real layout.

`google/gemma-3n-E2B-it` stores the decoder under `model.language_model.*` beside the audio tower,
the vision tower and their embedders (`model.audio_tower.*`, `model.vision_tower.*`,
`model.embed_audio.*`, `model.embed_vision.*`); those are handed back untouched in `extra_tensors`
for the encoders. Tensors are read one at a time, so loading never holds two copies of the model,
and with `offload="ple"` the per-layer embedding table is never read into memory at all.
"""
import json
import warnings
from pathlib import Path

import torch

from .errors import ModelLoadError
from .gemma3n import Gemma3nText
from .gemma3n_config import Gemma3nTextConfig
from .safetensors_folder import index_safetensors, split_text_tensors
from .weights import HF_TO_NATIVE, assign_strict, expand

GEMMA3N_ARCHITECTURES = {"gemma3n", "gemma3n_text"}
NON_TEXT_PREFIXES = ("model.audio_tower.", "model.vision_tower.", "model.embed_audio.", "model.embed_vision.")
_TEXT_PREFIXES = ("model.language_model.", "model.")
PLE_KEY = "embed_tokens_per_layer.weight"

# Hugging Face Gemma3nTextModel names (relative to the text prefix) -> ours: Gemma 3's names plus
# the per-layer embeddings, AltUp and LAuReL.
HF_TO_NATIVE_3N = {
    **HF_TO_NATIVE,
    PLE_KEY: "ple.weight",
    "per_layer_model_projection.weight": "ple_projection.weight",
    "per_layer_projection_norm.weight": "ple_projection_norm.weight",
    "layers.{}.altup.correct_output_scale": "layers.{}.altup.correct_output_scale",
    "layers.{}.altup.correction_coefs.weight": "layers.{}.altup.correction_coefs.weight",
    "layers.{}.altup.prediction_coefs.weight": "layers.{}.altup.prediction_coefs.weight",
    "layers.{}.altup.modality_router.weight": "layers.{}.altup.modality_router.weight",
    "layers.{}.altup.router_norm.weight": "layers.{}.altup.router_norm.weight",
    "layers.{}.laurel.linear_left.weight": "layers.{}.laurel.linear_left.weight",
    "layers.{}.laurel.linear_right.weight": "layers.{}.laurel.linear_right.weight",
    "layers.{}.laurel.post_laurel_norm.weight": "layers.{}.laurel.norm.weight",
    "layers.{}.per_layer_input_gate.weight": "layers.{}.ple_gate.weight",
    "layers.{}.per_layer_projection.weight": "layers.{}.ple_proj.weight",
    "layers.{}.post_per_layer_input_norm.weight": "layers.{}.ple_norm.weight",
}
# Key/value weights of KV-shared layers: the released checkpoints still carry them, unused
# (transformers ignores them on load too); checkpoints saved by transformers 5 leave them out.
_SHARED_LAYER_UNUSED = ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_norm.weight")


def key_map(cfg: Gemma3nTextConfig) -> dict[str, str]:
    """HF name (relative to the text prefix) -> our parameter name, for every tensor this config has."""
    m = expand(HF_TO_NATIVE_3N, cfg.num_hidden_layers)
    for i in range(cfg.first_kv_shared_layer, cfg.num_hidden_layers):
        for name in _SHARED_LAYER_UNUSED:
            del m[f"layers.{i}.{name}"]
    for j in range(cfg.altup_num_inputs - 1):
        m[f"altup_projections.{j}.weight"] = f"altup_in.{j}.weight"
        m[f"altup_unembed_projections.{j}.weight"] = f"altup_out.{j}.weight"
    return m


def read_config(folder: Path, hf: dict) -> Gemma3nTextConfig:
    """The text decoder's config; unknown keys are reported in a warning."""
    text_hf = (hf.get("text_config") or {}) if hf.get("model_type") == "gemma3n" else hf
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            return Gemma3nTextConfig.from_hf(text_hf)
        except (TypeError, ValueError) as e:
            raise ModelLoadError(folder / "config.json", str(e)) from e


def load_gemma3n(folder, hf: dict | None = None, dtype: torch.dtype = torch.float32, *, offload: str | None = None,
                 max_memory: int | None = None):
    """A `LoadedText` for a Gemma 3n checkpoint folder. `offload` as in `offload.apply_offload`."""
    from .loader import LoadedText
    from .offload import apply_offload, offload_ple
    from .tokenizer import load_tokenizer_json

    folder = Path(folder)
    if hf is None:
        hf = json.loads((folder / "config.json").read_text())
    cfg = read_config(folder, hf)
    tensors = index_safetensors(folder)
    text, extra = split_text_tensors(tensors, _TEXT_PREFIXES, folder, "model.language_model.embed_tokens.weight")
    stray = sorted(k for k in extra if hf.get("model_type") == "gemma3n_text" or not k.startswith(NON_TEXT_PREFIXES))
    if stray:
        raise ModelLoadError(folder, f"unexpected tensor {stray[0]!r}")
    for i in range(cfg.first_kv_shared_layer, cfg.num_hidden_layers):
        for name in _SHARED_LAYER_UNUSED:
            text.pop(f"layers.{i}.{name}", None)

    with torch.device("meta"):
        model = Gemma3nText(cfg)
    model.to_empty(device="cpu")
    kmap = key_map(cfg)
    ple = None
    if offload in ("ple", "layers") and PLE_KEY in text:
        # Map the table straight from the checkpoint file: it is never read into memory.
        ple = text.pop(PLE_KEY)
        want = tuple(model.ple.weight.shape)
        if ple.shape != want:
            raise ModelLoadError(folder, f"tensor {ple.name!r} has shape {ple.shape}, the config implies {want}")
        del kmap[PLE_KEY]
    assign_strict(model, text, kmap, folder, dtype)
    n_params = sum(p.numel() for p in model.parameters())  # before the PLE table leaves the module
    for p in model.parameters():
        p.requires_grad_(False)
    if ple is not None:
        offload_ple(model, source=(ple.file, ple.name))
    if not (folder / "tokenizer.json").is_file():
        raise ModelLoadError(folder, "no tokenizer.json in the folder")
    tok = load_tokenizer_json(folder, hf)
    stored = str(hf.get("torch_dtype") or hf.get("dtype") or (hf.get("text_config") or {}).get("dtype") or "float32")
    extra = {k: v.read() for k, v in extra.items()}  # as stored; the encoders choose their dtype
    loaded = LoadedText(model.eval(), tok, folder.name, "hf", stored, extra, hf)
    loaded.parameters = n_params
    if offload == "layers":
        apply_offload(loaded, "layers", max_memory=max_memory)
    return loaded
