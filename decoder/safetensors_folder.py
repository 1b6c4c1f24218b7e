"""A Hugging Face folder: the tensors of its safetensors files (one shard or all the shards an index
names), its tokenizer and the dtype its config states."""
import json
from pathlib import Path

import torch

from .errors import ModelLoadError


class LazyTensor:
    """A checkpoint tensor known by name and shape; its data is read only by `read()` / `to()`."""

    def __init__(self, handle, name: str, file: Path):
        self.handle, self.name, self.file = handle, name, file
        self.shape = tuple(handle.get_slice(name).get_shape())

    def read(self) -> torch.Tensor:
        return self.handle.get_tensor(self.name)

    def to(self, dtype: torch.dtype) -> torch.Tensor:
        return self.read().to(dtype)


def index_safetensors(folder: Path) -> dict[str, LazyTensor]:
    """Every tensor of the folder, unread. A shard the index names but the folder lacks, or a tensor
    the index names but no shard holds, is a `ModelLoadError` naming it."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"] if index.is_file() else None
    files = sorted(set(weight_map.values())) if weight_map else sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(folder, "no *.safetensors files in the folder")
    tensors = {}
    for name in files:
        f = folder / name
        if not f.is_file():
            raise ModelLoadError(f, "shard named in model.safetensors.index.json is missing")
        try:
            handle = safe_open(str(f), framework="pt")
            tensors.update({k: LazyTensor(handle, k, f) for k in handle.keys()})
        except Exception as e:  # safetensors raises its own error types on damage
            raise ModelLoadError(f, f"unreadable safetensors file ({e})") from e
    absent = sorted(set(weight_map or ()) - set(tensors))
    if absent:
        raise ModelLoadError(index, f"missing tensor {absent[0]!r} named in the index")
    return tensors


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder, memory-mapped."""
    return {k: t.read() for k, t in index_safetensors(folder).items()}


def split_text_tensors(tensors: dict, prefixes, folder, expected: str) -> tuple[dict, dict]:
    """(the text model's tensors with their prefix stripped, the rest: encoder tensors by full name).
    The prefix is whichever of `prefixes` holds the text embedding; a tied `lm_head.weight` copy is dropped."""
    prefix = next((p for p in prefixes if p + "embed_tokens.weight" in tensors), None)
    if prefix is None:
        raise ModelLoadError(folder, f"missing tensor {expected!r} (no text embedding found)")
    text = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    extra = {k: v for k, v in tensors.items() if not k.startswith(prefix)}
    extra.pop("lm_head.weight", None)  # tied to the embedding; the copy is not used
    return text, extra


def folder_tokenizer(folder: Path, hf: dict):
    """The tokenizer of a Hugging Face folder (its tokenizer.json); none is a `ModelLoadError`."""
    from .tokenizer import load_tokenizer_json

    if not (folder / "tokenizer.json").is_file():
        raise ModelLoadError(folder, "no tokenizer.json in the folder")
    return load_tokenizer_json(folder, hf)


def stored_dtype(hf: dict) -> str:
    """The dtype a Hugging Face config says its weights are stored in (top level, or the text config's)."""
    return str(hf.get("torch_dtype") or hf.get("dtype") or (hf.get("text_config") or {}).get("dtype") or "float32")
