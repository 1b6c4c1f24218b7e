"""Reading GGUF files with the `gguf` package: metadata as Python values, tensors dequantized.

Weights are dequantized to float on load (the file's Q4_K/Q5_0/Q6_K/Q8_0 blocks become float32),
so the runtime computes exactly what the file encodes; requantizing for speed is a separate step.
"""
import os
from pathlib import Path

import numpy as np
import torch

from .errors import ModelLoadError

GGUF_MAGIC = b"GGUF"

# llama.cpp's Gemma converter stores RMSNorm weights as (1 + w); our norms hold w.
_NORM_SUFFIX = "norm.weight"


def is_gguf(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def open_gguf(path):
    """A `gguf.GGUFReader`, or `ModelLoadError` saying why the file is not a usable GGUF."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(path, "no such file")
    if not is_gguf(path):
        raise ModelLoadError(path, "not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        reader = GGUFReader(path)
    except Exception as e:  # the gguf package raises ValueError/IndexError/struct errors on damage
        raise ModelLoadError(path, f"corrupt or truncated GGUF ({type(e).__name__}: {e})") from e
    # A truncated file can still parse its header: check that every tensor lies inside the file.
    size = os.path.getsize(path)
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ModelLoadError(path, f"truncated GGUF: tensor {t.name!r} runs past the end of the file")
    return reader


def read_metadata(reader, skip_arrays: bool = False) -> dict:
    """GGUF key/value metadata as plain Python values."""
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if skip_arrays and len(field.types) > 1:
            continue
        meta[key] = field.contents()
    return meta


def read_tensors(reader, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Dequantized float32 tensors by GGUF name, in PyTorch's (out, in) order."""
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        if names is not None and t.name not in names:
            continue
        arr = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        arr = arr.reshape([int(d) for d in reversed(t.shape)])
        if t.name.endswith(_NORM_SUFFIX):
            arr = arr - 1.0
        if not arr.flags.writeable:  # F32 tensors come back as views of the read-only file mapping
            arr = arr.copy()
        out[t.name] = torch.from_numpy(np.ascontiguousarray(arr))
    return out
