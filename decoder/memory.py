"""Keeping resident memory (RSS) to what the model uses: pages freed or no longer read go back."""
import contextlib
import ctypes
import mmap
import re

import torch

try:
    _libc = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: nothing to trim or advise
    _libc = None
_MADV_DONTNEED = 4
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1
_threshold: int | None = None  # what map_large_allocations set, if it ran


# the GPU libraries torch's CUDA build maps at import (pip's nvidia-* wheels, torch's own CUDA parts):
# shared objects only, so a model file under such a folder is never touched
_GPU_LIBRARY = re.compile(r"(/nvidia/|/libtorch_cuda|/libc10_cuda|/cuda/bindings/|/triton/).*\.so(\.[0-9]+)*$")


def release_gpu_libraries() -> int:
    """Hand back the pages torch's CUDA build touched in its GPU libraries at import (~140 MB of
    cuBLASLt, nvJitLink, NVRTC, ... resident, Zen 3) while this process has not started CUDA: a CPU
    run never executes them. Only read-only file mappings with no private (copied) page: dropped,
    their pages are read back from the file if a later call needs them. Returns the bytes released."""
    if _libc is None or torch.cuda.is_initialized():
        return 0
    released, current = 0, None
    try:
        with open("/proc/self/smaps") as f:
            lines = f.read().splitlines()
    except OSError:  # no /proc (a sandbox): nothing known to release
        return 0
    for line in lines:
        head = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
        if head:
            start, end, perm, path = int(head[1], 16), int(head[2], 16), head[3], head[4]
            current = (start, end) if "w" not in perm and _GPU_LIBRARY.search(path) else None
        elif current and line.startswith("Rss:"):
            rss = int(line.split()[1]) << 10
        elif current and line.startswith("Anonymous:") and int(line.split()[1]) == 0 and rss:
            size = ctypes.c_size_t(current[1] - current[0])
            released += rss if _libc.madvise(ctypes.c_void_p(current[0]), size, _MADV_DONTNEED) == 0 else 0
    return released


def map_large_allocations(threshold: int = 4 << 20) -> None:
    """Serve allocations of `threshold` bytes and more from their own mappings, returned to the
    OS when freed. glibc otherwise raises its threshold to 32 MB as large blocks are freed, and
    freed weight copies and prompt activations stay in the heap as RSS nobody uses. The heap keeps
    up to 2x that free at its top (glibc's own rule for a raised threshold): at its fixed 128 KB,
    a decode step's few 1 MB blocks (4 streams' logits rows) went back to the OS as each step
    freed them, ~1,000 pages faulted in again every step."""
    global _threshold
    if _libc is not None:
        _libc.mallopt(_M_MMAP_THRESHOLD, threshold)
        _libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold)
        _threshold = threshold


@contextlib.contextmanager
def heap_allocations(threshold: int = 32 << 20):
    """Within it, allocations under `threshold` come from the heap and are reused once freed, as
    glibc does by default; on leaving, the free heap goes back to the OS and `map_large_allocations`'
    threshold is back. For the encoders: with every 4 MB+ activation a fresh mapping faulted in page
    by page, MobileNet-V5 took 15.9 s a 768 px view against 10.8 s in a process without it (Zen 3)."""
    if _libc is None or _threshold is None:
        yield
        return
    _libc.mallopt(_M_MMAP_THRESHOLD, threshold)
    # and kept there: with the default 128 KB trim threshold each large block freed at the heap's top went
    # back to the OS at once (the text embedder still faulted 540k pages a call); 2x is glibc's own rule
    _libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold)
    try:
        yield
    finally:
        _libc.mallopt(_M_MMAP_THRESHOLD, _threshold)
        _libc.mallopt(_M_TRIM_THRESHOLD, 2 * _threshold)
        _libc.malloc_trim(0)


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS. glibc keeps freed blocks below its mmap threshold
    (up to 32 MB) in the heap: parsing a tokenizer's 500k merges leaves ~280 MB there, offloaded
    layers their weights."""
    if _libc is not None:
        _libc.malloc_trim(0)


def drop_resident(t) -> None:
    """Let the kernel drop the pages of `t`, a tensor or numpy array mapped read-only-in-practice
    from a file (the weight cache, a GGUF): touched again, they are read back from the file. Only
    whole pages inside `t`."""
    if _libc is None:
        return
    if isinstance(t, torch.Tensor):
        start, end = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    else:  # a contiguous numpy array
        start, end = t.ctypes.data, t.ctypes.data + t.nbytes
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        _libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)
