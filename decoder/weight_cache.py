"""The weight cache: a model's runtime layout (fused, quantized, packed) written once to the user
cache folder and memory-mapped on later loads, with what the loader needs from the source's
metadata, so a cached load neither parses the GGUF (seconds for 262k tokenizer strings) nor
dequantizes or repacks anything.

Container: a safetensors file (8-byte header length, JSON header, raw tensor bytes), read here with
one `mmap` so tensors are zero-copy views of the page cache. The key covers the source files'
identity (path, size, mtime), `FORMAT_VERSION`, the torch version and CPU capability (the int4
packing is the kernel's), and the load options. Writes go through `atomic_path`: a kill mid-write
leaves no file under the real name.
"""
import contextlib
import glob
import hashlib
import json
import logging
import mmap
import os
import time
from pathlib import Path

import torch

from .cache import atomic_path, cache_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 12  # bump when the runtime layout changes: old files are then never read
# (11: GGUF Q4_0 layers in Int4Linear's symmetric layout, float16 d; 12: Q4_K in its kquant layout)
_STALE_PART_S = 600
_ALIGN = 64  # every tensor starts on a 64-byte boundary
_PAD = "__pad"  # temp files left by a killed writer are removed after this long

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I8": torch.int8,
           "U8": torch.uint8, "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}


def source_identity(paths) -> list:
    """What identifies the source files: resolved path, size and modification time of each."""
    out = []
    for p in sorted(Path(p).resolve() for p in paths):
        st = os.stat(p)
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def cache_key(sources, options: dict, version: int = FORMAT_VERSION) -> str:
    ident = {"sources": source_identity(sources), "options": options, "format": version,
             "torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def cache_path(stem: str, key: str) -> Path:
    return cache_dir("weights") / f"{stem}-{key}.safetensors"


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write `tensors` and JSON-able `meta` to `path` atomically."""
    _remove_stale_parts(path)
    _remove_old_formats(path)
    header, offset, order = {"__metadata__": {"mmsdk": json.dumps(meta), "format": str(FORMAT_VERSION)}}, 0, []
    for name, t in tensors.items():
        if offset % _ALIGN:  # packed CPU kernels use aligned loads: pad with a filler tensor
            pad = _ALIGN - offset % _ALIGN
            header[f"{_PAD}{len(order)}"] = {"dtype": "U8", "shape": [pad], "data_offsets": [offset, offset + pad]}
            order.append(torch.zeros(pad, dtype=torch.uint8))
            offset += pad
        t = t.detach().contiguous()
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        order.append(t)
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % _ALIGN)  # tensor data starts aligned too (the mmap is page-aligned)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for t in order:
                if t.numel():
                    f.write(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
            f.flush()
            os.fsync(f.fileno())


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Tensors (memory-mapped, copy-on-write) and meta from `path`; None if it is absent, of another
    format version, or damaged (then it is removed, to be rebuilt)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            n, header = _read_header(f, size)
            extra = header.pop("__metadata__")
            if extra.get("format") != str(FORMAT_VERSION):
                return None
            end = max((v["data_offsets"][1] for v in header.values()), default=0)
            if 8 + n + end != size:
                raise ValueError(f"size {size} != {8 + n + end}")
            meta = json.loads(extra["mmsdk"])
            # ACCESS_COPY: private pages, so tensors are writable without ever touching the file.
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        except (ValueError, KeyError, TypeError, OSError) as e:
            log.warning("weight cache %s is damaged (%s); rebuilding it", path, e)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
    base = 8 + n
    tensors = {}
    for name, v in header.items():
        if name.startswith(_PAD):
            continue
        a, b = v["data_offsets"]
        dtype = _DTYPES[v["dtype"]]
        if b == a:
            tensors[name] = torch.empty(v["shape"], dtype=dtype)
            continue
        raw = torch.frombuffer(mm, dtype=torch.uint8, count=b - a, offset=base + a)
        tensors[name] = raw.view(dtype).view(v["shape"])
    return tensors, meta


def _remove_stale_parts(path: Path) -> None:
    """Temp files of writers killed long ago (a live writer touches its file continuously)."""
    now = time.time()
    for p in path.parent.glob(f".{path.name}.*.part"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > _STALE_PART_S:
                p.unlink()


def _remove_old_formats(path: Path) -> None:
    """Caches of the same model in an older format (never read again, up to ~1 GB each), found
    when a new one is written. Other options or sources of the current format stay."""
    stem = path.name.rsplit("-", 1)[0]
    for p in path.parent.glob(f"{glob.escape(stem)}-*.safetensors"):
        if p != path and _format_of(p) not in (None, str(FORMAT_VERSION)):
            log.info("removing weight cache %s of an older format", p)
            with contextlib.suppress(OSError):
                p.unlink()


def _read_header(f, size: int) -> tuple[int, dict]:
    """The header's length and its JSON, from the start of an open cache file of `size` bytes."""
    n = int.from_bytes(f.read(8), "little")
    if n > size - 8:
        raise ValueError(f"header length {n} exceeds the file")
    return n, json.loads(f.read(n))


def _format_of(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return str(_read_header(f, os.fstat(f.fileno()).st_size)[1].get("__metadata__", {}).get("format"))
    except (OSError, ValueError, AttributeError):
        return None
