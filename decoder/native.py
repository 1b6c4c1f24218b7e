"""Our own int8 kernels (`int8_vnni.c`), compiled once with the system C compiler into the user
cache folder and called through ctypes.

Why: for one input row, fbgemm's dynamic int8 linear spends half its time outside the product
(~45 us for a 1 MB weight that streams in ~20 us), which is most of a decoded token's layer time;
and its packed layout must be rebuilt on every load (~1 s of a cached load). The blocked layout
here is a plain reordering of the int8 rows (a copy at memory speed), and the same blocks serve
the one-row decode product and the many-row prefill one.

`available()` is False, and the callers keep torch's kernels, where the CPU lacks AVX-512 VNNI, no
C compiler is found, or `MMSDK_NATIVE=0`.
"""
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import torch

from .cache import atomic_path, cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("int8_vnni.c")
CFLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-fopenmp",
          "-shared", "-fPIC")
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni")
BLOCK = 16  # output channels per block: one 512-bit register of int32 sums


class Int8Blocks(NamedTuple):
    """An int8 weight (N, K) in the kernel's layout, with what the product needs beside it."""
    blocks: torch.Tensor  # int8 (N/16, K/4, 16, 4)
    scales: torch.Tensor  # float32 (N,)
    comp: torch.Tensor  # int32 (N,): 128 x each channel's weight sum, undoing the inputs' offset


def _cpu_has_vnni() -> bool:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    have = set(flags.split(":", 1)[1].split())
    return all(f in have for f in CPU_FLAGS)


def _compile(cc: str) -> Path:
    """The shared library for this source and these flags, compiled on first use (atomically)."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((cc, *CFLAGS)).encode()).hexdigest()[:16]
    lib = cache_dir("kernels") / f"int8_vnni-{key}.so"
    if not lib.exists():
        with atomic_path(lib) as tmp:
            subprocess.run([cc, *CFLAGS, str(SOURCE), "-o", str(tmp)], check=True, capture_output=True, text=True)
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they cannot run here (the reason is logged once)."""
    if os.environ.get("MMSDK_NATIVE", "1") == "0":
        return None
    if not _cpu_has_vnni():
        log.info("CPU lacks AVX-512 VNNI: int8 layers use torch's kernels")
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler found: int8 layers use torch's kernels (slower decode and load)")
        return None
    try:
        lib = ctypes.CDLL(str(_compile(cc)))  # after torch: the library shares torch's OpenMP runtime
    except (OSError, subprocess.CalledProcessError) as e:
        log.warning("could not build the int8 kernels (%s): int8 layers use torch's kernels",
                    getattr(e, "stderr", None) or e)
        return None
    ptr, n = ctypes.c_void_p, ctypes.c_long
    lib.pack_blocks.argtypes = [ptr, n, n, ptr, ptr]
    lib.int8_linear.argtypes = [ptr, n, n, n, ptr, ptr, ptr, ptr, n]
    lib.int4_linear.argtypes = [ptr, n, n, ptr, ptr, n, ptr, n]
    lib.norm_rows.argtypes = [ptr, n, n, ptr, ctypes.c_float, ptr, ptr]
    lib.geglu.argtypes = [ptr, n, n, ptr]
    lib.qkv_heads.argtypes = [ptr, n, n, n, n, ptr, ctypes.c_float, ptr, ptr, ptr, ptr, ptr]
    lib.attend_rows.argtypes = [ptr, n, n, ptr, ptr, n, n, n, n, ptr, ptr, n, ctypes.c_float, ptr]
    lib.gemma3_layer_step.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, n, n, n, ptr]
    lib.gemma3_prompt_qkv.argtypes = [ptr, ptr, n, ptr, ptr, ptr, ptr, ptr]
    lib.gemma3_prompt_rest.argtypes = [ptr, ptr, n, ptr, ptr, ptr, n, n, ptr, ptr, n]
    return lib


def available() -> bool:
    return library() is not None


def fits(out_features: int, in_features: int) -> bool:
    """Whether the kernels take this weight shape (rotations are 64 wide or more, as they need)."""
    return out_features % BLOCK == 0 and in_features % 16 == 0


def pack(q: torch.Tensor, scales: torch.Tensor) -> Int8Blocks:
    """int8 codes (N, K), one scale per row -> the kernel's blocks (a copy, at memory speed)."""
    N, K = q.shape
    q = q.contiguous()
    blocks, comp = torch.empty(N // BLOCK, K // 4, BLOCK, 4, dtype=torch.int8), torch.empty(N, dtype=torch.int32)
    library().pack_blocks(q.data_ptr(), N, K, blocks.data_ptr(), comp.data_ptr())
    return Int8Blocks(blocks, scales.float().contiguous(), comp)


def linear(x: torch.Tensor, w: Int8Blocks, rotation: int | None = None) -> torch.Tensor:
    """x W^T, each row of x rounded to 8 bits at its own scale, after a block Hadamard rotation of
    `rotation` inputs where given (`quantize.rotate`, done here in K log2(block) adds). Float32 out."""
    K = x.shape[-1]
    rows = x.reshape(-1, K)
    if rows.dtype != torch.float32 or not rows.is_contiguous():
        rows = rows.float().contiguous()
    M, N = rows.shape[0], w.scales.shape[0]
    y = torch.empty(M, N)
    library().int8_linear(rows.data_ptr(), M, K, rotation or 0, w.blocks.data_ptr(), w.scales.data_ptr(),
                          w.comp.data_ptr(), y.data_ptr(), N)
    return y.view(*x.shape[:-1], N)


def int4_linear(x: torch.Tensor, weight: torch.Tensor, scales_and_zeros: torch.Tensor, group: int) -> torch.Tensor:
    """x (..., K) times a 4-bit weight in torch's CPU layout (`quantize.Int4Linear`'s buffers, read as
    they are), in float32: one row streams the weight (`int4_gemv`), more rows run a GEMM over
    dequantized panels (`int4_matmul`). Float32 (..., N) out."""
    K, N = x.shape[-1], scales_and_zeros.shape[1]
    rows = x.reshape(-1, K).float().contiguous()
    y = torch.empty(rows.shape[0], N)
    library().int4_linear(rows.data_ptr(), rows.shape[0], K, weight.data_ptr(), scales_and_zeros.data_ptr(), group,
                          y.data_ptr(), N)
    return y.view(*x.shape[:-1], N)


def takes_rows(x: torch.Tensor) -> bool:
    """Whether the row helpers below take x: float32, contiguous, rows a whole number of registers."""
    return x.dtype == torch.float32 and x.is_contiguous() and x.shape[-1] % 16 == 0 and available()


def norm_rows(x: torch.Tensor, gain: torch.Tensor, eps_term: float, add: torch.Tensor | None = None) -> torch.Tensor:
    """`layers.normalize` of each row of x (gain one row), plus `add` where given: one pass over the rows."""
    y = torch.empty_like(x)
    library().norm_rows(x.data_ptr(), x.numel() // x.shape[-1], x.shape[-1], gain.data_ptr(), eps_term,
                        None if add is None else add.data_ptr(), y.data_ptr())
    return y


def geglu(gate_up: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(gate) * up for rows holding gate then up (..., 2I), I a multiple of 16: one pass, no temporaries."""
    I = gate_up.shape[-1] // 2
    out = gate_up.new_empty(*gate_up.shape[:-1], I)
    library().geglu(gate_up.data_ptr(), gate_up.numel() // (2 * I), I, out.data_ptr())
    return out


def qkv_heads(qkv: torch.Tensor, heads: int, kv_heads: int, gain: torch.Tensor, eps_term: float,
              cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A prompt's q, k, v (1, heads, T, D) from its qkv rows (1, T, heads + 2 kv_heads, D): QK-norm
    with gain rows (heads + kv_heads, D) and RoPE (`layers.apply_rope`'s tables) on q and k."""
    _, T, _, D = qkv.shape
    q, k, v = qkv.new_empty(1, heads, T, D), qkv.new_empty(1, kv_heads, T, D), qkv.new_empty(1, kv_heads, T, D)
    gain, cos, sin = gain.contiguous(), cos.contiguous(), sin.contiguous()
    library().qkv_heads(qkv.data_ptr(), T, heads, kv_heads, D, gain.data_ptr(), eps_term, cos.data_ptr(),
                        sin.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr())
    return q, k, v


def kv_rows(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (1, Hkv, S, D) as the C attention reads them: rows of D floats, the key heads
    equally apart (a full cache's slice of its buffer is; anything else is copied)."""
    if k.stride()[1:] != (k.stride(1), k.shape[3], 1) or v.stride() != k.stride():
        k, v = k.contiguous(), v.contiguous()
    return k, v


def attend_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                window: int | None, scale: float) -> torch.Tensor:
    """Attention of a prompt's queries q (1, H, T, D) over keys and values (1, Hkv, S, D) with the
    mask of `layers.attention_mask` (no image groups) made from positions; (1, T, H * D) out, the
    layout the output projection takes."""
    _, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    k, v = kv_rows(k, v)
    q, q_pos, k_pos = q.contiguous(), q_pos.to(torch.long).contiguous(), k_pos.to(torch.long).contiguous()
    out = q.new_empty(1, T, H * D)
    library().attend_rows(q.data_ptr(), H, T, k.data_ptr(), v.data_ptr(), Hkv, S, D, k.stride(1),
                          q_pos.data_ptr(), k_pos.data_ptr(), window or 0, scale, out.data_ptr())
    return out
