"""Our own kernels (int8 and 4-bit products, norms, GeGLU, attention, a whole Gemma 3 layer),
compiled once with the system C compiler into the user cache folder and called through ctypes.

Why: for one input row, fbgemm's dynamic int8 linear spends half its time outside the product
(~45 us for a 1 MB weight that streams in ~20 us), which is most of a decoded token's layer time;
and its packed layout must be rebuilt on every load (~1 s of a cached load). The blocked layout
here is a plain reordering of the int8 rows (a copy at memory speed), and the same blocks serve
the one-row decode product and the many-row prefill one.

One source per CPU kind, chosen once by the CPU's flags (`KERNELS`, best first; the choice is
logged and `kernel_name()` says it): AVX-512 VNNI (`int8_vnni.c`), else AVX2 + FMA
(`kernels_avx2.c`). Both export the same entry points over the same layouts. Where none fits the
CPU, no C compiler is found, or `MMSDK_NATIVE=0`, `available()` is False and the callers keep
torch's kernels; `MMSDK_REQUIRE_NATIVE=1` (CI) makes a kernel that cannot be built an error
instead. A compiled library is loaded only if the record beside it (a hash of the source and the
compiler and flags, and one of the library itself) matches; otherwise it is built again.
"""
import ctypes
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .cache import atomic_path, cache_dir
from .errors import MMSDKError

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
COMMON_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
BLOCK = 16  # output channels per block: one 512-bit register of int32 sums (two 256-bit ones)


class Kernel(NamedTuple):
    name: str  # what `kernel_name()` reports
    source: str  # beside this module
    cpu_flags: tuple[str, ...]  # /proc/cpuinfo flags it needs
    cflags: tuple[str, ...]


KERNELS = (
    # fma, f16c: int4_q8.h's AVX2 code and its float16 scales (every AVX-512 CPU has both, every AVX2 + FMA
    # one F16C; -mavx512f implies neither flag)
    Kernel("avx512-vnni", "int8_vnni.c", ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "fma", "f16c"),
           ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mfma", "-mf16c")),
    Kernel("avx2", "kernels_avx2.c", ("avx2", "fma", "f16c"), ("-mavx2", "-mfma", "-mf16c")),
)

_ptr, _n = ctypes.c_void_p, ctypes.c_long
ENTRY_POINTS = {  # name -> argument types, the same for every kernel source
    "pack_blocks": [_ptr, _n, _n, _ptr, _ptr],
    "int8_linear": [_ptr, _n, _n, _n, _ptr, _ptr, _ptr, _ptr, _n],
    "int4_linear": [_ptr, _n, _n, _ptr, _ptr, _ptr, _n, _n, _ptr, _n],
    "norm_rows": [_ptr, _n, _n, _ptr, ctypes.c_float, _ptr, _ptr],
    "geglu": [_ptr, _n, _n, _ptr],
    "qkv_heads": [_ptr, _n, _n, _n, _n, _ptr, ctypes.c_float, _ptr, _ptr, _ptr, _ptr, _ptr],
    "attend_rows": [_ptr, _n, _n, _ptr, _ptr, _n, _n, _n, _n, _ptr, _ptr, _n, ctypes.c_float, _ptr],
    "gemma3_layer_step": [_ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _n, _n, _n, _ptr],
    "gemma3_layer_rows": [_ptr, _ptr, _n, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _n],
    "gemma3_stack_rows": [_ptr, _n, _ptr, _n, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr],
    "gemma3_prompt_qkv": [_ptr, _ptr, _n, _ptr, _ptr, _ptr, _ptr, _ptr],
    "gemma3_prompt_rest": [_ptr, _ptr, _n, _ptr, _ptr, _ptr, _n, _n, _ptr, _ptr, _n],
    "pack_int4_codes": [_ptr, _n, _n, _n, _ptr],
    "q8_0_to_int8_rows": [_ptr, _n, _n, _n, _ptr, _ptr],
    "q4_0_to_int4pack": [_ptr, _n, _n, _n, _ptr],
    "gemma3n_layer_step": [_ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _n, _n, _n, _ptr],
    "sizeof_gemma3n_layer": [],
    "gemma4_layer_step": [_ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _n, _n, _n, _ptr],
    "sizeof_gemma4_layer": [],
    "quantize_q4k": [_ptr, _n, _n, _n, _n, _n, _ptr, _ptr, _ptr, _n],
    "quantize_int4_pairs": [_ptr, _n, _n, _ptr, _ptr, _ptr, _n],
    "gptq_block": [_ptr, _n, _n, _ptr, _ptr, _ptr, _ptr, _ptr, _n],
    "q8g_pack": [_ptr, _n, _n, _ptr, _ptr],
    "q8g_matmul": [_ptr, _n, _n, _ptr, _ptr, _ptr, _ptr, _n],
    "sizeof_linear": [],
    "sizeof_layer": [],
    "rms_norm_act_2d": [_ptr, _n, _n, _n, _ptr, ctypes.c_float, _n, _ptr],
    "dwconv2d": [_ptr, _n, _n, _n, _n, _ptr, _n, _n, _n, _n, _ptr, _ptr, _n, _n],
    "max_dwconv_w": [],
    "quantize_rows_u8": [_ptr, _n, _n, _n, _n, _ptr, _ptr, _ptr],
    "int8_rows_out": [_ptr, _n, _n, _ptr, _ptr, _ptr, _ptr, _n],
    "encoder_attention": [_ptr, _n, _n, _n, _n, _ptr, ctypes.c_float, _ptr],
}
INT8 = ("pack_blocks", "int8_linear")  # what `available()` asks for by default


class KernelBuildError(MMSDKError, RuntimeError):
    """The kernels for this CPU could not be built or loaded while `MMSDK_REQUIRE_NATIVE=1`."""


class Int8Blocks(NamedTuple):
    """An int8 weight (N, K) in the kernel's layout, with what the product needs beside it."""
    blocks: torch.Tensor  # int8 (N/16, K/4, 16, 4)
    scales: torch.Tensor  # float32 (N,)
    comp: torch.Tensor  # int32 (N,): 128 x each channel's weight sum, undoing the inputs' offset (AVX-512)


def _cpu_flags() -> set[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(flags.split(":", 1)[1].split())


def cpu_kernel() -> Kernel | None:
    """The best kernel source this CPU runs, or None where it has none of their instructions."""
    have = _cpu_flags()
    return next((k for k in KERNELS if all(f in have for f in k.cpu_flags)), None)


@functools.cache
def pairs_saturate() -> bool:
    """Whether torch's int8 kernels (fbgemm, oneDNN) saturate here: without VNNI they multiply unsigned
    8-bit inputs by int8 weights with 16-bit pair sums (vpmaddubsw), which 2 x 255 x 127 overflows
    (2-7% off on AVX2). Their inputs then take 7 bits (torch's `reduce_range`)."""
    return not {"avx512_vnni", "avx_vnni"} & _cpu_flags()


def _sources(kernel: Kernel) -> list[Path]:
    """The source and the headers beside it (all of them count in the build's hash)."""
    return [HERE / kernel.source, *sorted(HERE.glob("*.h"))]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compile(cc: str, kernel: Kernel) -> Path:
    """The shared library for this source and these flags: the cached one where the record beside it
    matches (source, compiler and flags, and the library's own bytes), else compiled (atomically)."""
    flags = (*COMMON_FLAGS, *kernel.cflags)
    key = hashlib.sha256(b"".join(p.read_bytes() for p in _sources(kernel))
                         + " ".join((cc, *flags)).encode()).hexdigest()
    lib = cache_dir("kernels") / f"{Path(kernel.source).stem}-{key[:16]}.so"
    record = lib.with_suffix(".json")
    try:
        held = json.loads(record.read_text())
        if held.get("key") == key and held.get("sha256") == _sha256(lib):
            return lib
        log.warning("kernel library %s does not match its record: building it again", lib)
    except (OSError, ValueError, AttributeError):
        pass  # not built yet, or a record that cannot be read: build
    with atomic_path(lib) as tmp:
        subprocess.run([cc, *flags, str(HERE / kernel.source), "-o", str(tmp)], check=True, capture_output=True,
                       text=True)
        digest = _sha256(tmp)
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps({"key": key, "sha256": digest, "source": kernel.source, "cc": cc, "flags": flags}))
    return lib


def _fail(message: str) -> None:
    """A kernel that cannot be built: an error under MMSDK_REQUIRE_NATIVE=1, else torch's kernels."""
    if os.environ.get("MMSDK_REQUIRE_NATIVE") == "1":
        raise KernelBuildError(message)
    log.warning("%s: torch's kernels run instead (slower decode and load)", message)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they cannot run here (the reason is logged once)."""
    if os.environ.get("MMSDK_NATIVE", "1") == "0":
        return None
    kernel = cpu_kernel()
    if kernel is None:
        log.info("CPU has neither AVX-512 VNNI nor AVX2 + FMA: torch's kernels run")
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return _fail("no C compiler found for our kernels")
    try:
        lib = ctypes.CDLL(str(_compile(cc, kernel)))  # after torch: the library shares torch's OpenMP runtime
    except (OSError, subprocess.CalledProcessError) as e:
        return _fail(f"could not build the {kernel.name} kernels ({getattr(e, 'stderr', None) or e})")
    lib.kernel = kernel
    for name, argtypes in ENTRY_POINTS.items():
        if (fn := getattr(lib, name, None)) is not None:  # a source without it: that call stays torch's
            fn.argtypes = argtypes
            if name.startswith(("sizeof_", "max_")):  # the C side's sizes and limits, read by the Python side
                fn.restype = _n
    lib.int4_layout.argtypes = [_n]  # the 4-bit kernels read either of torch's layouts: say which one
    lib.int4_layout(int4_block())
    log.info("kernels: %s (%s)", kernel.name, kernel.source)
    return lib


def available(*entry_points: str) -> bool:
    """Whether our kernels run here and export these entry points (default: the int8 product's)."""
    lib = library()
    return lib is not None and all(hasattr(lib, name) for name in entry_points or INT8)


@functools.cache
def int4_block() -> int:
    """The output channels per block of torch's packed CPU int4 layout here: 64 where torch runs its
    AVX-512 kernels, 32 where it runs AVX2 (found by packing a probe: channel 16's code lands in the
    high nibble of byte 0 with blocks of 32, in the low nibble of byte 16 with blocks of 64)."""
    probe = torch.zeros(64, 2, dtype=torch.int32)
    probe[16, 0] = 1
    packed = torch._convert_weight_to_int4pack_for_cpu(probe, 1).reshape(-1)
    return 32 if int(packed[0]) >> 4 == 1 else 64


def kernel_name() -> str:
    """Which kernels run: "avx512-vnni", "avx2", or "torch" (none of ours)."""
    lib = library()
    return "torch" if lib is None else lib.kernel.name


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


def linear(x: torch.Tensor, w: Int8Blocks, rotation: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T, each row of x rounded to 8 bits at its own scale, after a block Hadamard rotation of
    `rotation` inputs where given (`quantize.rotate`, done here in K log2(block) adds). Float32 out,
    written to `out` (contiguous float32, x's rows by W's) where given."""
    K = x.shape[-1]
    rows = x.reshape(-1, K)
    if rows.dtype != torch.float32 or not rows.is_contiguous():
        rows = rows.float().contiguous()
    M, N = rows.shape[0], w.scales.shape[0]
    if out is not None and (out.shape != (M, N) or out.dtype != torch.float32 or not out.is_contiguous()):
        raise ValueError(f"out must be contiguous float32 ({M}, {N}), got {out.dtype} {tuple(out.shape)}")
    y = torch.empty(M, N) if out is None else out
    library().int8_linear(rows.data_ptr(), M, K, rotation or 0, w.blocks.data_ptr(), w.scales.data_ptr(),
                          w.comp.data_ptr(), y.data_ptr(), N)
    return y.view(*x.shape[:-1], N)


def pack_int4_codes(q: torch.Tensor) -> torch.Tensor:
    """`quantize.pack_int4` in one pass: codes (N, K) uint8 in 0..15, N a multiple of `int4_block()`."""
    N, K = q.shape
    q = q.to(torch.uint8).contiguous()
    out = torch.empty(N, K // 2, dtype=torch.uint8)
    library().pack_int4_codes(q.data_ptr(), N, K, int4_block(), out.data_ptr())
    return out


def q4_0_to_int4pack(raw: np.ndarray, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GGUF Q4_0 rows (uint8 (N, K / 32 * 18)) -> `pack_int4` of their codes and their float16 d
    (N, K / 32), in one pass: `Int4Linear.from_symmetric`'s parts without a codes array."""
    N = raw.shape[0]
    raw = np.ascontiguousarray(raw)
    out = torch.empty(N, K // 2, dtype=torch.uint8)
    library().q4_0_to_int4pack(raw.ctypes.data, N, K, int4_block(), out.data_ptr())
    d = torch.from_numpy(raw.reshape(N, K // 32, 18)[:, :, :2].copy().view(np.float16)).reshape(N, K // 32)
    return out, d


def q8_0_to_int8(raw: np.ndarray, K: int, block: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """GGUF Q8_0 rows (uint8 (rows, K / 32 * 34), e.g. a view of the mapped file) ->
    `quantize.quantize_int8(quantize.rotate(w, block))` in one pass: int8 codes (rows, K), float32 scales (rows,)."""
    rows = raw.shape[0]
    raw = np.ascontiguousarray(raw)
    q, scale = torch.empty(rows, K, dtype=torch.int8), torch.empty(rows)
    library().q8_0_to_int8_rows(raw.ctypes.data, rows, K, block or 0, q.data_ptr(), scale.data_ptr())
    return q, scale


LAYOUTS = {"pairs": 0, "symmetric": 1, "kquant": 2}  # int4_q8.h's PAIRS, SYM, KQ


def int4_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, group: int,
                super_scales: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) times a 4-bit weight in torch's CPU layout (`quantize.Int4Linear`'s buffers, read as
    they are), the rows rounded to 8 bits per 32 inputs and multiplied in integers (`int4_q8.h`):
    one row streams the weight, more run a GEMM. `scales`: bfloat16 (scale, zero) pairs (K/group, N, 2);
    float16 d (K/group, N) of the symmetric layout (w = (q - 8) d); or, with `super_scales` (float16
    (d, dmin), (K/256, 2, N)), uint8 (sc, m) (K/32, 2, N) of the kquant layout (w = q d sc - dmin m).
    Float32 (..., N) out."""
    K, N = x.shape[-1], scales.shape[-1] if super_scales is not None else scales.shape[1]
    layout = "kquant" if super_scales is not None else "symmetric" if scales.dtype == torch.float16 else "pairs"
    if (layout == "pairs" and scales.dtype != torch.bfloat16) or (layout == "kquant" and scales.dtype != torch.uint8) \
            or not scales.is_contiguous():
        raise ValueError(f"scales must be contiguous bfloat16 pairs, float16 d or uint8 (sc, m), got {scales.dtype}")
    rows = x.reshape(-1, K).float().contiguous()
    y = torch.empty(rows.shape[0], N)
    library().int4_linear(rows.data_ptr(), rows.shape[0], K, weight.data_ptr(), scales.data_ptr(),
                          super_scales.data_ptr() if super_scales is not None else None, LAYOUTS[layout], group,
                          y.data_ptr(), N)
    return y.view(*x.shape[:-1], N)


def quantize_q4k(w: torch.Tensor, weight: torch.Tensor, sub_scales: torch.Tensor, super_scales: torch.Tensor,
                 row0: int = 0, threads: int | None = None) -> None:
    """Rows row0.. of a 4-bit weight in the kquant layout (`quantize.Int4Linear`'s buffers: packed codes
    (N, K/2), uint8 (sc, m) (K/32, 2, N), float16 (d, dmin) (K/256, 2, N)) rounded from float rows w
    (float32 or bfloat16, (rows, K)) by `quantize_q4.h`: `quantize.quantize_int4_kquant`'s search in C,
    on `threads` OpenMP threads (default torch's). row0 and len(w) are whole blocks of `int4_block()` rows."""
    rows, K = w.shape
    N, B = weight.shape[0], int4_block()
    if row0 % B or rows % B or K % 256 or row0 + rows > N or weight.shape[1] * 2 != K:
        raise ValueError(f"quantize_q4k: rows {row0}..{row0 + rows} of a ({N}, {K}) weight must be whole blocks "
                         f"of {B} rows, K a multiple of 256")
    if w.dtype not in (torch.float32, torch.bfloat16):
        w = w.float()
    w = w.contiguous()
    for t in (weight, sub_scales, super_scales):
        if not t.is_contiguous():
            raise ValueError("quantize_q4k: the output buffers must be contiguous")
    library().quantize_q4k(w.data_ptr(), int(w.dtype == torch.bfloat16), rows, K, row0, N, weight.data_ptr(),
                           sub_scales.data_ptr(), super_scales.data_ptr(), threads or torch.get_num_threads())


def quantize_int4_pairs(w: torch.Tensor, threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`quantize.quantize_int4(w, 32)`'s search in C (`quantize_q4.h`), on `threads` OpenMP threads (default
    torch's): (codes uint8 (N, K), scale (N, K/32), zero (N, K/32)), float32."""
    N, K = w.shape
    if K % 32:
        raise ValueError(f"quantize_int4_pairs: {K} inputs is not a whole number of groups of 32")
    w = w.float().contiguous()
    codes = torch.empty(N, K, dtype=torch.uint8)
    scale, zero = torch.empty(N, K // 32), torch.empty(N, K // 32)
    library().quantize_int4_pairs(w.data_ptr(), N, K, codes.data_ptr(), scale.data_ptr(), zero.data_ptr(),
                                  threads or torch.get_num_threads())
    return codes, scale, zero


def gptq_block(block: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, hinv: torch.Tensor,
               threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`gptq._gptq_int4`'s column loop over one block (`quantize_q4.h`): block (N, B) float32, updated in
    place; scale, zero (N, B) each column's group numbers; hinv (B, B). Returns (codes uint8 (N, B), errors
    (N, B))."""
    N, B = block.shape
    for name, t in (("block", block), ("scale", scale), ("zero", zero), ("hinv", hinv)):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"gptq_block: {name} must be contiguous float32")
    codes, errs = torch.empty(N, B, dtype=torch.uint8), torch.empty(N, B)
    library().gptq_block(block.data_ptr(), N, B, scale.data_ptr(), zero.data_ptr(), hinv.data_ptr(), codes.data_ptr(),
                         errs.data_ptr(), threads or torch.get_num_threads())
    return codes, errs


Q8G_BLOCK, Q8G_CHANNELS = 24, 192  # q8_groups.h: Q8G_NB, Q8G_NC


def q8g_fits(out_features: int, in_features: int) -> bool:
    """Whether `q8g_matmul` takes a weight this shape: channels in whole tiles of 192, inputs in groups of 32."""
    return out_features % Q8G_CHANNELS == 0 and in_features % 32 == 0


class Q8Groups(NamedTuple):
    """An int8 weight (N, K) with a scale per 32 inputs, in `q8g_matmul`'s layouts."""
    packed: torch.Tensor  # int8 N * K: chunks of 512 inputs, blocks of 24 channels
    scales: torch.Tensor  # float32 (N/24, K/32, 24)
    offsets: torch.Tensor | None  # int32 as scales: -128 x each group's code sum (AVX-512 VNNI only, else None)


def q8g_pack(codes: torch.Tensor, scales: torch.Tensor) -> Q8Groups:
    """int8 codes (N, K) and their scales per 32 inputs (N, K/32) in `q8g_matmul`'s layouts."""
    N, K = codes.shape
    codes = codes.contiguous()  # held in a name: a temporary's memory would be freed before the call reads it
    packed = torch.empty(N * K, dtype=torch.int8)
    # the VNNI tile's inputs are unsigned (x + 128): these take the 128 back (an eighth of the codes' size)
    vnni = kernel_name() == "avx512-vnni"
    offsets = torch.empty(N // Q8G_BLOCK, K // 32, Q8G_BLOCK, dtype=torch.int32) if vnni else None
    library().q8g_pack(codes.data_ptr(), N, K, packed.data_ptr(), None if offsets is None else offsets.data_ptr())
    return Q8Groups(packed, scales.float().reshape(N // Q8G_BLOCK, Q8G_BLOCK, K // 32).transpose(1, 2).contiguous(),
                    offsets)


def q8g_matmul(x: torch.Tensor, w: Q8Groups) -> torch.Tensor:
    """x (M, K) float32 W^T for a weight from `q8g_pack`, x rounded to 8 bits per 32 inputs (`q8_groups.h`)."""
    M, K = x.shape
    N = w.packed.numel() // K
    x = x.contiguous()  # held in a name: a temporary's memory would be freed before the call reads it
    y = torch.empty(M, N)
    library().q8g_matmul(x.data_ptr(), M, K, w.packed.data_ptr(), w.scales.data_ptr(),
                         None if w.offsets is None else w.offsets.data_ptr(), y.data_ptr(), N)
    return y


def takes_rows(x: torch.Tensor) -> bool:
    """Whether the row helpers below take x: float32, contiguous, rows a whole number of registers."""
    return (x.dtype == torch.float32 and x.is_contiguous() and x.shape[-1] % 16 == 0
            and available("norm_rows", "geglu", "qkv_heads", "attend_rows"))


def norm_rows(x: torch.Tensor, gain: torch.Tensor, eps_term: float, add: torch.Tensor | None = None) -> torch.Tensor:
    """`layers.normalize` of each row of x (gain one row), plus `add` where given: one pass over the rows."""
    y = torch.empty_like(x)
    library().norm_rows(x.data_ptr(), x.numel() // x.shape[-1], x.shape[-1], gain.data_ptr(), eps_term,
                        None if add is None else add.data_ptr(), y.data_ptr())
    return y


def rms_norm_act_2d(x: torch.Tensor, gain: torch.Tensor | None, eps: float, gelu: bool,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """timm's `RmsNormAct2d` on a contiguous float32 NCHW x: the norm over channels (times `gain`), then
    GELU (tanh) where `gelu`, in one pass over each block of pixels (`norm2d.h`), into `out` (may be x)."""
    N, C, H, W = x.shape
    y = torch.empty_like(x) if out is None else out
    library().rms_norm_act_2d(x.data_ptr(), N, C, H * W, None if gain is None else gain.data_ptr(), eps, int(gelu),
                              y.data_ptr())
    return y


def takes_dwconv2d(x: torch.Tensor) -> bool:
    """Whether `dwconv2d` takes x: contiguous float32 NCHW, rows no wider than the kernel's buffers."""
    return x.dtype == torch.float32 and x.dim() == 4 and x.is_contiguous() and x.shape[-1] <= library().max_dwconv_w()


def dwconv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, pad_top: int,
             pad_left: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """A depthwise convolution of a contiguous float32 NCHW x with weight (C, 1, k, k) (`dwconv2d.h`):
    stride 1 or 2, zero padding pad_top rows above and pad_left columns left, an out_hw output."""
    N, C, H, W = x.shape
    y = x.new_empty((N, C, *out_hw))
    library().dwconv2d(x.data_ptr(), N, C, H, W, weight.data_ptr(), weight.shape[-1], stride, pad_top, pad_left,
                       None if bias is None else bias.data_ptr(), y.data_ptr(), *out_hw)
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


def quantize_rows_u8(rows: torch.Tensor, code_max: int, asymmetric: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contiguous float32 rows (M, K), K a multiple of 16, as 8-bit codes 0..code_max (`int8_rows.h`):
    (codes (M, K) uint8, each row's step (M, 1), its minimum (M, 1), zeros where not asymmetric)."""
    M, K = rows.shape
    codes = torch.empty(M, K, dtype=torch.uint8)
    step, low = torch.empty(M, 1), torch.zeros(M, 1)
    library().quantize_rows_u8(rows.data_ptr(), M, K, code_max, int(asymmetric), codes.data_ptr(), step.data_ptr(),
                               low.data_ptr())
    return codes, step, low


# int8_rows.h's ROWS_* modes by torch's `approximate` name (None: no GELU)
ROWS_GELU = {None: 0, "none": 1, "tanh": 2}


def int8_rows_out(y: torch.Tensor, step: torch.Tensor, low: torch.Tensor | None, weight_sums: torch.Tensor | None,
                  bias: torch.Tensor | None, gelu: bool, approximate: str = "none") -> torch.Tensor:
    """An int8 product's contiguous float32 output y (M, N), N a multiple of 8, in place: times each row's
    step, plus low x weight_sums where given, plus bias, then GELU where `gelu` (exact, or torch's
    `approximate="tanh"`) (`int8_rows.h`)."""
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    library().int8_rows_out(y.data_ptr(), y.shape[0], y.shape[1], step.data_ptr(), ptr(low), ptr(weight_sums),
                            ptr(bias), ROWS_GELU[approximate if gelu else None])
    return y


def takes_encoder_attention(qkv: torch.Tensor) -> bool:
    """Whether `encoder_attention` takes these q/k/v rows (B, T, 3, H, D): float32, contiguous, D a multiple
    of 8."""
    return qkv.dtype == torch.float32 and qkv.is_contiguous() and qkv.shape[-1] % 8 == 0 and available("encoder_attention")


def encoder_attention(qkv: torch.Tensor, lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Bidirectional attention from contiguous float32 q/k/v rows (B, T, 3, H, D), D a multiple of 8,
    sample b over its first lens[b] tokens (`encoder_attention.h`): (B, T, H * D), zeros past lens[b]."""
    B, T, _, H, D = qkv.shape
    lens = lens.to(torch.long).contiguous()
    out = qkv.new_empty(B, T, H * D)
    library().encoder_attention(qkv.data_ptr(), B, T, H, D, lens.data_ptr(), scale, out.data_ptr())
    return out
