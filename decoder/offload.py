"""Per-layer parameter offload: weights that stay on disk until the step that needs them.

- `"ple"`: Gemma 3n's per-layer embedding table (4 GB on E2B) stays memory-mapped; each step reads
  only the rows of the tokens in flight (a few 15 KB rows), so it costs neither RAM nor speed.
- `"layers"`: decoder layers live in a packed file and stream into two buffers under a byte budget,
  a thread reading layer i+1 while layer i computes. Layers that fit the budget stay resident.
  Works for any model with a `layers` ModuleList (Gemma 3 and Gemma 3n).

Files go to `cache_dir("offload")`, written atomically and named by a fingerprint of the weights,
so a second load reuses them.
"""
import hashlib
import json
import logging
import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from .cache import atomic_path, cache_dir
from .errors import InputError
from .gemma3n import PerLayerEmbedding
from .memory import release_free_memory

log = logging.getLogger(__name__)
OFFLOAD_MODES = ("ple", "layers")
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_ALIGN = 4096  # layer blocks start on page boundaries


def apply_offload(loaded, mode: str | None, max_memory: int | None = None) -> None:
    """Offload a loaded model's parameters in place (`loaded` is a `LoadedText` or the model).

    "ple" maps Gemma 3n's per-layer embedding table from disk; "layers" also streams decoder layers
    so the resident weights stay under `max_memory` bytes. A `ValueError` says what does not fit.
    """
    model = getattr(loaded, "model", loaded)
    if mode is None:
        return
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"offload={mode!r}: expected None, 'ple' or 'layers'")
    has_ple = isinstance(getattr(model, "ple", None), PerLayerEmbedding)
    if mode == "ple" and not has_ple:
        raise ValueError("offload='ple' needs a model with per-layer embeddings (Gemma 3n); use offload='layers'")
    if has_ple and not isinstance(model.ple, MappedPerLayerEmbedding):
        offload_ple(model)
    if mode == "layers":
        from .quantize import Int4Linear, Int8Embedding, Int8Linear

        if any(isinstance(m, (Int4Linear, Int8Linear, Int8Embedding)) for m in model.modules()):
            raise InputError("offload='layers' streams float weights only, and this model is quantized; use "
                             "offload='layers' with quantize=None, or offload='ple' (Gemma 3n) with quantize")
        if max_memory is None:
            raise ValueError("offload='layers' needs max_memory= (bytes the resident weights may use)")
        model.layer_streamer = LayerStreamer(model, int(max_memory))
    release_free_memory()


# ---- "ple": the per-layer embedding table, memory-mapped -------------------------------------

class MappedPerLayerEmbedding(PerLayerEmbedding):
    """`PerLayerEmbedding` over a memory-mapped table in its stored dtype. The table is a plain
    attribute, not a parameter or buffer, so `model.to(dtype)` never pulls it into memory."""

    def __init__(self, like: PerLayerEmbedding, table: torch.Tensor):
        nn.Module.__init__(self)
        self.vocab, self.scale, self.table = like.vocab, like.scale, table

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids.reshape(-1)].reshape(*ids.shape, self.table.shape[1])


def offload_ple(model, source: tuple[Path, str] | None = None) -> None:
    """Swap `model.ple` for a mapped table: tensor `source = (file, name)` of a safetensors file,
    else the in-memory table written once to the cache folder."""
    if source is None:
        w = model.ple.weight.detach()
        path = cache_dir("offload") / f"ple-{_fingerprint([w])}.safetensors"
        if not path.is_file():
            from safetensors.torch import save_file

            with atomic_path(path) as tmp:
                save_file({"ple": w.contiguous()}, str(tmp))
        source = (path, "ple")
    table = mapped_safetensor(*source)
    model.ple = MappedPerLayerEmbedding(model.ple, table)  # frees the in-memory table, if any


def mapped_safetensor(path, name: str) -> torch.Tensor:
    """Tensor `name` of a safetensors file as a memory map (copy-on-write, never written). The map
    is marked random-access: a row read faults in its own pages, not the kernel's readahead window
    around them (which, row after random row, would fill RSS with rows nobody asked for)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        info = json.loads(f.read(n))[name]
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} is {info['dtype']}; only float tensors can be mapped")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    if hasattr(mmap, "MADV_RANDOM"):  # not on every platform
        mm.madvise(mmap.MADV_RANDOM)
    begin, end = info["data_offsets"]
    raw = torch.frombuffer(mm, dtype=torch.uint8, count=end - begin, offset=8 + n + begin)
    return raw.view(_ST_DTYPES[info["dtype"]]).view(info["shape"])


# ---- "layers": decoder layers streamed from a packed file ------------------------------------

class LayerStreamer:
    """Streams the parameters of `model.layers[k:]` from disk, keeping the first k resident, where
    k is as many as fit `max_memory` beside the other weights and two layer buffers."""

    def __init__(self, model: nn.Module, max_memory: int):
        layers = list(model.layers)
        in_layers = {id(p) for layer in layers for p in layer.parameters()}
        base = sum(_nbytes(t) for t in [*model.parameters(), *model.buffers()] if id(t) not in in_layers)
        sizes = [sum(_nbytes(p) for p in layer.parameters()) for layer in layers]
        slot = max(sizes)
        if base + 2 * slot > max_memory:
            raise ValueError(f"max_memory={max_memory} bytes is below the {base + 2 * slot} the non-layer weights "
                             f"({base}) and two layer buffers ({slot} each) need")
        k, used = 0, base + 2 * slot
        while k < len(layers) and used + sizes[k] <= max_memory:
            used, k = used + sizes[k], k + 1
        if k >= len(layers) - 1:  # one streamed layer would fit in the buffers: keep it instead
            log.info("offload='layers': all %d layers fit in max_memory=%d; nothing streamed", len(layers), max_memory)
            self.streamed = []
            return
        self.streamed = layers[k:]
        self.resident_bytes = used
        self.layout, self.path = self._write_pack(self.streamed)
        for layer in self.streamed:  # the pack holds them now
            for p in layer.parameters():
                p.data = torch.empty(0, dtype=p.dtype)
        # Loaded weights may be views of the mapped checkpoint (safetensors maps uncast tensors);
        # owning copies of the resident ones let that mapping, and its resident pages, go.
        for p in model.parameters():
            p.data = p.data.clone()
        self.slots = [torch.empty(slot, dtype=torch.uint8) for _ in range(2)]
        self.next_slot, self.pending = 0, None  # pending: (streamed index, slot, future)
        self.fd = os.open(self.path, os.O_RDONLY)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mmsdk-offload")
        for j, layer in enumerate(self.streamed):
            layer.register_forward_pre_hook(lambda mod, args, j=j: self._enter(j))
            layer.register_forward_hook(lambda mod, args, out, j=j: self._leave(j))
        log.info("offload='layers': %d layers resident, %d streamed from %s (%d bytes resident weights)",
                 k, len(self.streamed), self.path, used)

    def __del__(self):
        if getattr(self, "pool", None) is not None:
            self.pool.shutdown(wait=True)
            os.close(self.fd)

    @staticmethod
    def _write_pack(layers) -> tuple[list, Path]:
        """Each layer's parameters back to back, each layer on a page boundary; layout per layer:
        (block offset, block bytes, [(param, byte offset in block, bytes, shape)])."""
        params = [p.detach() for layer in layers for p in layer.parameters()]
        path = cache_dir("offload") / f"layers-{_fingerprint(params)}.bin"
        layout, offset = [], 0
        for layer in layers:
            entries, size = [], 0
            for p in layer.parameters():
                entries.append((p, size, _nbytes(p), p.shape))
                size += _nbytes(p)
            layout.append((offset, size, entries))
            offset += -(-size // _ALIGN) * _ALIGN
        if not path.is_file():
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                for (start, _, entries) in layout:
                    f.seek(start)
                    for p, *_ in entries:
                        f.write(p.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        return layout, path

    def _read(self, j: int, slot: int) -> int:
        start, size, _ = self.layout[j]
        pread_exact(self.fd, memoryview(self.slots[slot].numpy())[:size], start, self.path)
        return slot

    def _submit(self, j: int):
        slot, self.next_slot = self.next_slot, 1 - self.next_slot
        self.pending = (j, self.pool.submit(self._read, j, slot))

    def _enter(self, j: int) -> None:
        if self.pending is not None and self.pending[0] != j:  # an interrupted step: drop its prefetch
            self.pending[1].result()
            self.pending = None
        if self.pending is None:
            self._submit(j)
        slot = self.pending[1].result()
        _, _, entries = self.layout[j]
        buf = self.slots[slot]
        for p, off, n, shape in entries:
            p.data = buf[off:off + n].view(p.dtype).view(shape)
        self._submit((j + 1) % len(self.streamed))  # prefetch into the other buffer

    def _leave(self, j: int) -> None:
        for p, *_ in self.layout[j][2]:
            p.data = torch.empty(0, dtype=p.dtype)


def pread_exact(fd: int, view: memoryview, offset: int, name="file") -> None:
    """Fill `view` from byte `offset` of open file `fd`. pread may return short; it releases the
    GIL while it copies."""
    done, size = 0, view.nbytes
    while done < size:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"short read from {name} at byte {offset + done}")
        done += n


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _fingerprint(tensors) -> str:
    """A cheap identity for weights: shapes, dtypes and a strided sample of every tensor."""
    h = hashlib.sha256()
    for t in tensors:
        flat = t.detach().reshape(-1)
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(flat[::max(1, flat.numel() // 4096)].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]
