"""Reading GGUF files with the `gguf` package: metadata as Python values, tensors dequantized.

Weights are dequantized to float on load (the file's Q4_K/Q5_0/Q6_K/Q8_0 blocks become float32),
so the runtime computes exactly what the file encodes; requantizing for speed is a separate step.
"""
import mmap
import os
import struct
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .errors import ModelLoadError
from .memory import drop_resident

GGUF_MAGIC = b"GGUF"

# llama.cpp's Gemma converter stores RMSNorm weights as (1 + w); our norms hold w. Gemma 4's norms
# scale by w itself, and its converter stores w as it is (`Gemma4Model.norm_shift`: 0).
_NORM_SUFFIX = "norm.weight"
_UNSHIFTED_NORMS = {"gemma4"}


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


def read_metadata(reader) -> dict:
    """GGUF key/value metadata as plain Python values."""
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
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


# -- a fast reader for the text decoder: header parsed in one pass, tensors as views of one mapping --

# GGUF value types: struct format of each scalar (8: string, 9: array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
# Blocks whose codes map exactly onto Int4Linear's (q - 8) * scale + zero, groups of 32 (`q4_codes`).
EXACT_4BIT = ("Q4_0", "Q4_1", "Q4_K")


class TensorInfo(NamedTuple):
    name: str
    shape: tuple[int, ...]  # PyTorch order: (out, in)
    kind: str  # the GGML type's name, e.g. "Q4_0", "F32"
    offset: int  # from the start of the file
    nbytes: int


class GGUFFile:
    """A GGUF file's metadata and tensors. The header is parsed here in one pass: the `gguf`
    package's reader makes a numpy view per field part, ~15 s for a Gemma tokenizer's 262k strings,
    this ~0.3 s. Tensors are views of one read-only mapping of the file; `drop` lets the kernel take
    a converted tensor's pages back, so a streamed load holds one source tensor at a time."""

    def __init__(self, path, arrays: bool = True):
        """`arrays=False` leaves array values (the vocabulary, its scores and types) out of `meta`:
        a chat template or a config read without decoding 262k strings."""
        self.path = Path(path)
        self._arrays = arrays
        if not self.path.is_file():
            raise ModelLoadError(self.path, "no such file")
        if not is_gguf(self.path):
            raise ModelLoadError(self.path, "not a GGUF file (it does not start with the GGUF magic bytes)")
        with open(self.path, "rb") as f:
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._map = np.frombuffer(self._mmap, dtype=np.uint8)
        try:
            self.meta, self.types, self.tensors = self._parse(memoryview(self._mmap))
        except (struct.error, IndexError, ValueError, UnicodeDecodeError, KeyError) as e:
            raise ModelLoadError(self.path, f"corrupt or truncated GGUF ({type(e).__name__}: {e})") from e
        for t in self.tensors.values():
            if t.offset + t.nbytes > len(self._map):
                raise ModelLoadError(self.path, f"truncated GGUF: tensor {t.name!r} runs past the end of the file")
        self.norm_shift = 0.0 if self.meta.get("general.architecture") in _UNSHIFTED_NORMS else 1.0

    def _parse(self, buf):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        pos = 0

        def take(fmt):
            nonlocal pos
            out = struct.unpack_from("<" + fmt, buf, pos)
            pos += struct.calcsize("<" + fmt)
            return out[0] if len(out) == 1 else out

        def string():
            nonlocal pos
            n = int.from_bytes(buf[pos:pos + 8], "little")
            s = str(buf[pos + 8:pos + 8 + n], "utf-8")
            pos += 8 + n
            if pos > len(buf):
                raise ValueError("a string runs past the end of the file")
            return s

        def skip(vtype, n):
            nonlocal pos
            if vtype in _NUMPY:
                pos += n * np.dtype(_NUMPY[vtype]).itemsize
            elif vtype == 8:
                for _ in range(n):
                    pos += 8 + int.from_bytes(buf[pos:pos + 8], "little")
            else:
                for _ in range(n):
                    value(vtype)
            if pos > len(buf):
                raise ValueError("an array runs past the end of the file")

        def value(vtype):
            nonlocal pos
            if vtype == 8:
                return string()
            if vtype == 9:
                sub, n = take("IQ")
                if not self._arrays:
                    skip(sub, n)
                    return None
                if sub in _NUMPY:  # numbers in bulk
                    arr = np.frombuffer(buf, _NUMPY[sub], n, pos)
                    pos += arr.nbytes
                    return arr.tolist()
                if sub == 8:  # strings: a Gemma vocabulary is 262k of them
                    return [string() for _ in range(n)]
                return [value(sub) for _ in range(n)]
            return take(_SCALARS[vtype])

        magic, version, n_tensors, n_kv = take("4sIQQ")
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported (2 or later)")
        meta, types = {}, {}
        for _ in range(n_kv):
            key, vtype = string(), take("I")
            sub = struct.unpack_from("<I", buf, pos)[0] if vtype == 9 else None
            found = value(vtype)
            if found is not None:
                meta[key], types[key] = found, (vtype, sub)
        infos = []
        for _ in range(n_tensors):
            name, n_dims = string(), take("I")
            dims = [take("Q") for _ in range(n_dims)]
            kind, offset = GGMLQuantizationType(take("I")), take("Q")
            block, size = GGML_QUANT_SIZES[kind]
            n = int(np.prod(dims))
            infos.append((name, tuple(reversed(dims)), kind.name, offset, n // block * size))
        align = int(meta.get("general.alignment", 32))
        start = -(-pos // align) * align
        tensors = {name: TensorInfo(name, shape, kind, start + off, nbytes) for name, shape, kind, off, nbytes in infos}
        return meta, types, tensors

    def raw(self, name: str, rows: slice = slice(None)) -> np.ndarray:
        """A tensor's bytes, (rows, bytes per row), rows as `rows` selects."""
        t = self.tensors[name]
        rows_total = int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1
        data = self._map[t.offset:t.offset + t.nbytes].reshape(rows_total, -1)
        return data[rows]

    def dequantize(self, name: str, rows: slice = slice(None)) -> torch.Tensor:
        """float32 rows of a tensor in PyTorch's order (a norm as the w of RMSNorm(1 + w))."""
        t = self.tensors[name]
        w = dequantize_rows(self.raw(name, rows), t.kind, t.shape)
        if name.endswith(_NORM_SUFFIX) and self.norm_shift:
            w -= self.norm_shift
        return w

    def advise_random(self, name: str) -> None:
        """Mark a tensor's pages random-access: a row read faults in its own pages, not the kernel's
        readahead window around them (row after random row, that would fill RSS with unasked rows)."""
        t = self.tensors[name]
        start = t.offset - t.offset % mmap.PAGESIZE
        if hasattr(mmap, "MADV_RANDOM"):  # not on every platform
            self._mmap.madvise(mmap.MADV_RANDOM, start, t.offset + t.nbytes - start)

    def drop(self, name: str, rows: slice = slice(None)) -> None:
        """Let the kernel take back the pages of a tensor (rows) already converted."""
        drop_resident(self.raw(name, rows))


def dequantize_rows(raw: np.ndarray, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    """float32 values of (rows, bytes per row) blocks of GGML type `kind`, shaped (rows, *shape[1:])
    (a 1-D tensor: `shape`). Never a view of the file: safe to modify."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    if kind == "Q8_0":  # w = d q per 32: in torch, on every thread (the package's numpy: ~3x slower)
        with warnings.catch_warnings():  # read-only: the tensor is only read
            warnings.simplefilter("ignore")
            b = torch.from_numpy(np.ascontiguousarray(raw)).view(-1, 34)
        w = b[:, 2:].view(torch.int8).float().mul_(b[:, :2].view(torch.float16).float())
        return w.view(-1, *shape[1:]) if len(shape) > 1 else w.view(shape)
    arr = dequantize(raw, GGMLQuantizationType[kind]).astype(np.float32, copy=False)
    arr = arr.reshape(-1, *shape[1:]) if len(shape) > 1 else arr.reshape(shape)
    if not arr.flags.writeable:  # F32 tensors come back as views of the read-only file mapping
        arr = arr.copy()
    return torch.from_numpy(np.ascontiguousarray(arr))


def q4_k_parts(raw: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Q4_K blocks as they are stored, for Int4Linear's kquant layout: codes q uint8 (rows, K), the
    6-bit sc and m per 32 inputs uint8 (rows, K / 32), float16 d and dmin per 256 (rows, K / 256);
    w = q * (d * sc) - dmin * m. `raw`: (rows, bytes per row)."""
    from gguf.quants import Q4_K

    rows = raw.shape[0]
    b = np.ascontiguousarray(raw).reshape(-1, 144)
    n = b.shape[0]
    d, dmin = b[:, 0:2].view(np.float16), b[:, 2:4].view(np.float16)
    sc, m = Q4_K.get_scale_min(b[:, 4:16])
    qs = b[:, 16:].reshape(n, 4, 1, 32)  # four 64-wide chunks: low nibbles, then high nibbles
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(rows, -1)
    return (torch.from_numpy(q), *(torch.from_numpy(np.ascontiguousarray(a).reshape(rows, -1))
                                   for a in (sc.astype(np.uint8), m.astype(np.uint8), d, dmin)))


def q4_codes(raw: np.ndarray, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4-bit blocks as Int4Linear's codes, scale and zero per 32 inputs: w = (q - 8) * scale + zero.

    Q4_0: w = d (q - 8), so scale d, zero 0. Q4_1: w = d q + m, so scale d, zero m + 8 d.
    Q4_K: w = d sc_j q - dmin m_j in sub-block j of 32 (6-bit sc_j, m_j), so scale d sc_j, zero
    8 d sc_j - dmin m_j. The codes are the file's; nothing is rounded again.
    `raw`: (rows, bytes per row) -> q uint8 (rows, K), scale and zero float32 (rows, K / 32)."""
    from gguf.quants import Q4_K

    rows = raw.shape[0]
    size = {"Q4_0": 18, "Q4_1": 20, "Q4_K": 144}[kind]
    b = np.ascontiguousarray(raw).reshape(-1, size)
    n = b.shape[0]
    if kind == "Q4_K":
        d = b[:, 0:2].view(np.float16).astype(np.float32)
        dmin = b[:, 2:4].view(np.float16).astype(np.float32)
        sc, m = Q4_K.get_scale_min(b[:, 4:16])
        qs = b[:, 16:].reshape(n, 4, 1, 32)  # four 64-wide chunks: low nibbles, then high nibbles
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n * 8, 32)
        scale = d * sc.astype(np.float32)
        zero = 8.0 * scale - dmin * m.astype(np.float32)
    else:
        d = b[:, 0:2].view(np.float16).astype(np.float32)[:, 0]
        qs = b[:, size - 16:]  # bytes j: inputs j (low nibble) and j + 16 (high nibble)
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
        scale = d
        zero = np.zeros_like(d) if kind == "Q4_0" else b[:, 2:4].view(np.float16).astype(np.float32)[:, 0] + 8.0 * d
    return (torch.from_numpy(q.reshape(rows, -1)), torch.from_numpy(np.ascontiguousarray(scale).reshape(rows, -1)),
            torch.from_numpy(np.ascontiguousarray(zero).reshape(rows, -1)))
