"""Loading a Gemma 3 text decoder and its tokenizer from a HF folder or a GGUF file."""
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import TextConfig
from .errors import ModelLoadError
from .gemma3 import Gemma3Text
from .gguf_file import is_gguf, open_gguf, read_metadata, read_tensors
from .tokenizer import GemmaTokenizer, load_tokenizer_json, tokenizer_from_gguf
from .weights import GGUF_TO_NATIVE, HF_TO_NATIVE, assign_strict, expand

TEXT_ARCHITECTURES = {"gemma3_text", "gemma3"}
# Where the text model's tensors sit in each HF layout (text-only, 4.x multimodal, 5.x multimodal).
_TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.")


@dataclass
class LoadedText:
    model: Gemma3Text
    tokenizer: GemmaTokenizer
    name: str
    source: str  # "hf" or "gguf"
    quantization: str  # what the file stores, e.g. "Q4_K_M", "bfloat16"
    extra_tensors: dict = field(default_factory=dict)  # non-text tensors (vision, audio) by HF name
    hf_config: dict = field(default_factory=dict)


def load_text(path, dtype: torch.dtype = torch.float32) -> LoadedText:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(path, "no such file or folder")
    if path.is_dir():
        return _load_hf(path, dtype)
    if path.suffix == ".gguf" or is_gguf(path):
        return _load_gguf(path, dtype)
    raise ModelLoadError(path, "expected a Hugging Face checkpoint folder (config.json + *.safetensors) or a .gguf file")


def _load_gguf(path: Path, dtype) -> LoadedText:
    reader = open_gguf(path)
    meta = read_metadata(reader)
    arch = meta.get("general.architecture")
    if arch != "gemma3":
        raise ModelLoadError(path, f"unsupported architecture {arch!r} (supported: gemma3)")
    try:
        cfg = TextConfig.from_gguf(meta)
    except (KeyError, ValueError) as e:
        raise ModelLoadError(path, f"incomplete gemma3 metadata: {e}") from e
    with torch.device("meta"):
        model = Gemma3Text(cfg)
    model.to_empty(device="cpu")
    assign_strict(model, read_tensors(reader), expand(GGUF_TO_NATIVE, cfg.num_hidden_layers), path, dtype)
    stat = os.stat(path)
    tok = tokenizer_from_gguf(meta, f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    ftype = {15: "Q4_K_M", 7: "Q8_0", 1: "F16", 0: "F32", 32: "BF16"}.get(meta.get("general.file_type"), "gguf")
    return LoadedText(model.eval(), tok, meta.get("general.name", path.stem), "gguf", ftype)


def _load_hf(folder: Path, dtype) -> LoadedText:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(folder, "no config.json in the folder")
    try:
        hf = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(cfg_path, f"config.json is not valid JSON ({e})") from e
    arch = hf.get("model_type")
    if arch in ("gemma3n", "gemma3n_text"):
        from .gemma3n_loader import load_gemma3n  # imports LoadedText from here

        return load_gemma3n(folder, hf, dtype)
    if arch not in TEXT_ARCHITECTURES:
        raise ModelLoadError(cfg_path, f"unsupported architecture {arch!r} (supported: {', '.join(sorted(TEXT_ARCHITECTURES))})")
    text_hf = hf.get("text_config", hf) if arch == "gemma3" else hf
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            cfg = TextConfig.from_hf(text_hf)
        except (TypeError, ValueError) as e:
            raise ModelLoadError(cfg_path, str(e)) from e
    tensors = read_safetensors(folder)
    prefix = next((p for p in _TEXT_PREFIXES if p + "embed_tokens.weight" in tensors), None)
    if prefix is None:
        raise ModelLoadError(folder, "missing tensor 'model.embed_tokens.weight' (no text embedding found)")
    text = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    extra = {k: v for k, v in tensors.items() if not k.startswith(prefix)}
    extra.pop("lm_head.weight", None)  # tied to the embedding; the copy is not used
    if arch == "gemma3_text" and extra:
        raise ModelLoadError(folder, f"unexpected tensor {sorted(extra)[0]!r}")
    with torch.device("meta"):
        model = Gemma3Text(cfg)
    model.to_empty(device="cpu")
    assign_strict(model, text, expand(HF_TO_NATIVE, cfg.num_hidden_layers), folder, dtype)
    if not (folder / "tokenizer.json").is_file():
        raise ModelLoadError(folder, "no tokenizer.json in the folder")
    tok = load_tokenizer_json(folder, hf)
    stored = str(hf.get("torch_dtype") or hf.get("dtype") or text_hf.get("dtype") or "float32")
    return LoadedText(model.eval(), tok, folder.name, "hf", stored, extra, hf)


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder's safetensors files, memory-mapped; with an index, every shard it names."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        weight_map = None
    if not files:
        raise ModelLoadError(folder, "no *.safetensors files in the folder")
    tensors = {}
    for name in files:
        f = folder / name
        if not f.is_file():
            raise ModelLoadError(f, "shard named in model.safetensors.index.json is missing")
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    tensors[key] = st.get_tensor(key)
        except Exception as e:  # safetensors raises its own error types on damage
            raise ModelLoadError(f, f"unreadable safetensors file ({e})") from e
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise ModelLoadError(index, f"missing tensor {absent[0]!r} named in the index")
    return tensors
