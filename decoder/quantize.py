"""Weight-only quantization as a module swap (gpt-fast `quantize.py`, mlx-lm `nn.quantize`).

`quantize_(model, bits, group_size)` replaces every `nn.Linear` with `Int8Linear` (per output
channel) or `Int4Linear` (asymmetric, per group of `group_size` inputs; GGUF's Q4_0 loads into its
symmetric layout) and the tied embedding /
LM head with `Int8Embedding`. The float modules stay as they are: no `if quant:` anywhere.

Kernels, one set of weights for prefill (many rows, compute-bound) and decode (one row, memory-bound):
- int8, the layers' matmuls (q/k/v, o, gate/up, down) and the tied LM head: our own kernels
  (`native.py`: `int8_vnni.c` on AVX-512 VNNI, `kernels_avx2.c` on AVX2 + FMA, compiled once on first use). Each input row is rounded to 8
  bits at its own scale; the weight is held in blocks of 16 output channels, a reordering copy
  made at load (~0.1 s for the whole model). One row streams the weight once (the 168 MB head at
  memory speed); many rows run a 6x64 register-tiled GEMM over the same blocks.
- Where those cannot be built (neither ISA, no C compiler, `MMSDK_NATIVE=0`): fbgemm's dynamic
  quantization (`quantized::linear_dynamic`) for the layers and oneDNN (`onednn::qlinear_pointwise`)
  for the head, whose packed layouts are rebuilt on every load (~1 s).
- Every 8-bit input is rotated first. Each has outlier channels that 8-bit rows lose: the RMSNorm
  gains make some (a head input row's peak is 12x its RMS), attention and the GeGLU others. A block
  Hadamard rotation of the input (QuaRot, Ashkboos et al. 2024), undone by storing the weight
  rotated the same way, spreads each outlier over its block. On Gemma 3 270M over 16k tokens:
  int8 perplexity +1.9% with the norm outputs unrotated, +0.2% with every input rotated.
- int8, other inputs (Gemma 3n's extra projections): weights only. One row goes through torch's
  `_weight_int8pack_mm` in bfloat16; a prompt dequantizes the weight and runs one float32 matmul.
- int4: rounded here to nearest (best clip per group), or by GPTQ where a calibration text can be
  run (`gptq.py`, as the loader does), held in torch's packed CPU int4 layout. Float32 inputs go
  through our kernels (`int4_q8.h`), which read that layout as it is, with each input row rounded
  to 8 bits per 32 (llama.cpp's Q8_0): integer products for one row and for a prompt. Elsewhere
  (bfloat16 inputs, no kernels) torch's `_weight_int4pack_mm_for_cpu` dequantizes inside a
  bfloat16 product (float32 inputs take its path ~30x slower).
"""
import functools
import logging
import math
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

from . import native

log = logging.getLogger(__name__)

ACT_DTYPE = torch.bfloat16  # the packed kernels' fast path
INT4_BLOCK_N = 64  # the CPU int4 packing interleaves output rows in blocks of 64
INT4_GROUP_SIZES = (32, 64, 128, 256)
# Linear layers that take 8-bit inputs, after a block rotation: an RMSNorm's output (q/k/v, gate/up),
# attention's output (o_proj), the GeGLU's (down_proj). Others (Gemma 3n's extras) keep float inputs.
ROTATED_INPUTS = frozenset({"qkv_proj", "q_proj", "k_proj", "v_proj", "gate_up_proj", "gate_proj", "up_proj",
                            "o_proj", "down_proj"})
HADAMARD_BLOCK = 256  # the widest block; Gemma 3 270M's 640-wide inputs take 128
_CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)  # shrink factors tried for each group's min and max


# -- pure functions: float weight -> integer codes + scales, and back ------------------------------

def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: w ~= q * scale[:, None]. Returns (q int8 (N, K), scale float32 (N,))."""
    w = w.float()
    scale = (torch.linalg.vector_norm(w, float("inf"), dim=1) / 127.0).clamp(min=1e-10)  # max |w|, no |w| copy
    q = (w / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 over groups of `group_size` inputs: w ~= (q - 8) * scale + zero, q in 0..15
    (torch's tinygemm convention). Returns (q uint8 (N, K), scale (N, K/g), zero (N, K/g)), float32.

    Each group's range is clipped at the (min, max) shrink that gives the least squared error: on
    Gemma 3 270M that cuts the perplexity rise over plain min-max from 26% to 17%. Groups of 32 run
    the same search in C where the kernels build (`native.quantize_int4_pairs`); this is the reference."""
    if group_size == 32 and native.available("quantize_int4_pairs"):
        return native.quantize_int4_pairs(w)
    return quantize_int4_reference(w, group_size)


def quantize_int4_reference(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`quantize_int4` in torch: 49 trial clips, each a few passes over the whole weight."""
    N, K = w.shape
    wg = w.float().reshape(N, K // group_size, group_size)
    lo0, hi0 = wg.amin(-1), wg.amax(-1)
    best_err = best_lo = best_scale = None
    for a in _CLIP_GRID:
        for b in _CLIP_GRID:
            lo, scale = lo0 * a, ((hi0 * b - lo0 * a) / 15.0).clamp(min=1e-10)
            q = torch.round((wg - lo[..., None]) / scale[..., None]).clamp(0, 15)
            err = (q * scale[..., None] + lo[..., None] - wg).square_().sum(-1)
            if best_err is None:
                best_err, best_lo, best_scale = err, lo, scale
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_lo, best_scale = torch.where(better, lo, best_lo), torch.where(better, scale, best_scale)
    q = torch.round((wg - best_lo[..., None]) / best_scale[..., None]).clamp(0, 15)
    return q.to(torch.uint8).reshape(N, K), best_scale, best_lo + 8.0 * best_scale


def quantize_int4_symmetric(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 over groups of `group_size` inputs, GGUF's Q4_0: w ~= (q - 8) * d, q in 0..15.
    Returns (q uint8 (N, K), d float16 (N, K/g)): one number per group, 4.5 bits a weight (the
    asymmetric pairs take 5).

    d as llama.cpp's `make_qx_quants` finds it: codes rounded at 19 trial scales around the one
    that maps the group's largest magnitude to -8, the least-squares d of each trial's codes, the
    trial with the least squared error kept; then the codes re-rounded to the float16 d."""
    N, K = w.shape
    wg = w.float().reshape(N, K // group_size, group_size)
    peak = wg.gather(-1, wg.abs().argmax(-1, keepdim=True))  # the signed value of largest magnitude
    peak = torch.where(peak == 0, 1.0, peak)
    best_gain = best_d = None
    for step in range(-9, 10):
        q = (wg * (-(8 + 0.1 * step) / peak)).round_().clamp_(-8, 7)
        qx, qq = (q * wg).sum(-1), q.square_().sum(-1).clamp_(min=1e-30)
        gain = qx.square() / qq  # the squared error is sum(w^2) - gain at the least-squares d = qx / qq
        if best_gain is None:
            best_gain, best_d = gain, qx / qq
        else:
            better = gain > best_gain
            best_gain, best_d = torch.where(better, gain, best_gain), torch.where(better, qx / qq, best_d)
    d = best_d.to(torch.float16)
    inv = torch.where(d == 0, 0.0, 1.0 / d.float())
    q = (wg * inv[..., None]).round_().clamp_(-8, 7).add_(8)
    return q.to(torch.uint8).reshape(N, K), d


def quantize_int4_kquant(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """GGUF's Q4_K from float: w ~= q * (d * sc) - dmin * m per group of 32 inputs, q in 0..15, sc and
    m 6-bit per group, d and dmin float16 per 256 inputs (`Int4Linear.from_kquant`'s parts: q uint8
    (N, K), sc and m (N, K/32), d and dmin (N, K/256)). 4.5 bits a weight in GGUF, 4.625 as we hold
    sc and m (a byte each); asymmetric like the pairs (5 bits) and nearly as close: relative RMS
    error on Gaussian weights 0.0728, pairs 0.0719, symmetric Q4_0 0.0810.

    Each group's (scale, min) is `quantize_int4`'s clip search, the min kept <= 0 (Q4_K stores -min);
    the scales and mins are then rounded to 6 bits of their super-block's largest and the codes
    re-rounded to the numbers stored. `Int4Linear.from_float` runs the same steps in C where the
    kernels build (`native.quantize_q4k`, 20-60x faster on one core); this is the reference and the fallback."""
    N, K = w.shape
    q, scale, zero = quantize_int4(w, 32)
    lo = zero - 8 * scale
    hi = lo + 15 * scale
    lo = lo.clamp(max=0)
    scale = ((hi - lo) / 15).clamp(min=0).reshape(N, K // 256, 8)
    low = (-lo).reshape(N, K // 256, 8)
    d = (scale.amax(-1) / 63).to(torch.float16)
    dmin = (low.amax(-1) / 63).to(torch.float16)
    sc = (scale / d.float().clamp(min=1e-30)[..., None]).round_().clamp_(0, 63)
    m = (low / dmin.float().clamp(min=1e-30)[..., None]).round_().clamp_(0, 63)
    step = (d.float()[..., None] * sc).reshape(N, K // 32, 1)  # what the kernels compute back
    offset = (dmin.float()[..., None] * m).reshape(N, K // 32, 1)
    wg = w.float().reshape(N, K // 32, 32)
    q = torch.where(step > 0, (wg + offset) / step.clamp(min=1e-30), 0.0).round_().clamp_(0, 15)
    return (q.to(torch.uint8).reshape(N, K), sc.to(torch.uint8).reshape(N, -1), m.to(torch.uint8).reshape(N, -1),
            d, dmin)


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    N, K = q.shape
    g = K // scale.shape[1]
    w = (q.float().reshape(N, -1, g) - 8.0) * scale.float()[..., None] + zero.float()[..., None]
    return w.reshape(N, K)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes (N, K) in 0..15 -> the (N, K/2) uint8 layout `_weight_int4pack_mm_for_cpu` reads (see
    `unpack_int4`): in one C pass where our kernels run, else with tensor ops. torch's own converter
    took ~5 s of a 1B model's first load."""
    N, K = q.shape
    B = native.int4_block()
    if N % B or K % 2:
        return torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
    if native.available("pack_int4_codes"):
        return native.pack_int4_codes(q)
    halves = q.to(torch.uint8).view(N // B, 2, B // 2, K)  # row i and row i + B/2 of each block share a byte
    return (halves[:, 0] | (halves[:, 1] << 4)).transpose(1, 2).contiguous().view(N, K // 2)


def unpack_int4(packed: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 (len(rows), K) of some output rows of a `pack_int4` weight (N, K/2). The layout
    (found by `native.int4_block`'s probe): blocks of B output rows, each K columns of B/2 bytes
    whose byte i holds row i's code in its low nibble and row i + B/2's in its high nibble."""
    B = native.int4_block()
    N, K = packed.shape[0], packed.shape[1] * 2
    blocks = packed.view(N // B, K, B // 2)
    i = rows % B
    byte = blocks[rows // B, :, i % (B // 2)]  # (n, K)
    return (byte >> (4 * (i >= B // 2)).to(torch.uint8)[:, None]) & 15


def int4_row_block(in_features: int, elements: int = 1 << 19) -> int:
    """Rows to round at once (`Int4Linear.fill_rows`): whole blocks of the packed layout, about
    `elements` weights (cache-sized temporaries)."""
    return INT4_BLOCK_N * max(1, elements // (INT4_BLOCK_N * in_features))


def int4_supported(out_features: int, in_features: int, group_size: int) -> bool:
    return (group_size in INT4_GROUP_SIZES and in_features % group_size == 0
            and out_features % INT4_BLOCK_N == 0)


@functools.cache
def hadamard(n: int) -> torch.Tensor:
    """The orthonormal Sylvester-Hadamard matrix of size n (a power of two), symmetric: H H = I."""
    with torch.inference_mode(False):  # a normal tensor, usable outside inference mode too
        h = torch.ones(1, 1)
        while h.shape[0] < n:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
        return h / math.sqrt(n)


def rotate(x: torch.Tensor, block: int) -> torch.Tensor:
    """x's last dim times a block-diagonal Hadamard matrix. Rotating both x and W's rows keeps
    x W^T, as the rotation is orthonormal."""
    return (x.reshape(*x.shape[:-1], -1, block) @ hadamard(block).to(x.dtype)).reshape(x.shape)


# -- modules -------------------------------------------------------------------------------------

def fbgemm_pack(q: torch.Tensor, scale: torch.Tensor):
    """int8 codes (N, K) and per-row scales -> fbgemm's packed weight for `quantized::linear_dynamic`."""
    with warnings.catch_warnings():  # quantized tensors are deprecated as a user API; fbgemm still takes them
        warnings.simplefilter("ignore")
        wq = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(wq, None)


def onednn_pack(q: torch.Tensor) -> torch.Tensor:
    """int8 codes (N, K) -> oneDNN's packed weight for `onednn::qlinear_pointwise`. For Gemma 3's
    262144-row LM head this packs in ~0.7 s on 2 threads (fbgemm: ~1.3 s) and adds 164 MB (fbgemm: 275)."""
    return torch.ops.onednn.qlinear_prepack(q, None)


def onednn_int8_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """x W^T through oneDNN, each input row scaled to max |x| = 1 and rounded to 8 bits (stored
    unsigned around 128, the VNNI instruction's input type)."""
    rows = x.reshape(-1, x.shape[-1]).float()
    peak = rows.abs().amax(-1, keepdim=True).clamp_(min=1e-30)
    levels = 63 if native.pairs_saturate() else 127  # 7 bits where 16-bit pair sums would saturate
    qx = torch.round(rows * (levels / peak)).add_(levels + 1).to(torch.uint8)
    y = _qlinear(qx, 1.0 / levels, levels + 1, packed, scales, zeros, None, 1.0, 0, torch.float32, "none", [], "")
    return y.mul_(peak).reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


# The C++ op itself: the Python wrapper scans every call's arguments for tracing placeholders, a few
# microseconds x 90 calls a decoded token.
_linear_dynamic = getattr(torch.ops.quantized.linear_dynamic.default, "_op", torch.ops.quantized.linear_dynamic)
_qlinear = getattr(torch.ops.onednn.qlinear_pointwise.default, "_op", torch.ops.onednn.qlinear_pointwise)


def dynamic_int8_linear(x: torch.Tensor, packed) -> torch.Tensor:
    """x W^T with x quantized per call to 8 bits (full range: VNNI has no 16-bit overflow to avoid;
    7 bits on CPUs without it, `native.pairs_saturate`), W packed by `fbgemm_pack`.

    fbgemm picks one range for the whole input; rows scaled to max |x| = 1 first get about a range
    each, so a small row beside a large one keeps its precision (one range for all: +26% perplexity)."""
    rows = x.reshape(-1, x.shape[-1]).float()
    peak = None
    if rows.shape[0] > 1:
        peak = rows.abs().amax(-1, keepdim=True).clamp_(min=1e-30)
        rows = rows / peak
    y = _linear_dynamic(rows, packed, native.pairs_saturate())  # reduce_range: 7-bit inputs without VNNI
    if peak is not None:
        y = y.mul_(peak)
    return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


class _Packed:
    """Holds the packing of a module's int8 weight for its kernel, rebuilt when the weight tensor
    is replaced (quantizing, or `load_state_dict(assign=True)` from the weight cache)."""

    _packed = _packed_from = None

    def pack(self):
        if native.available() and native.fits(*self.weight.shape):
            return native.pack(self.weight, self.scales)
        return self.torch_pack()

    def torch_pack(self):
        return fbgemm_pack(self.weight, self.scales)

    def packed(self):
        if self._packed_from is not self.weight:
            self.set_packed(self.pack())
        return self._packed

    def set_packed(self, packed) -> None:
        self._packed, self._packed_from = packed, self.weight


class Int8Linear(_Packed, nn.Module):
    """y = x W^T with W stored int8 per output channel, float32 scales. `int8_inputs`: quantize
    the input rows to 8 bits too (fbgemm), else keep them in floating point. `rotation`: a block
    size; inputs are Hadamard-rotated in blocks of it first, and W is stored rotated to match."""

    _scales_bf16 = None  # (scales, the bfloat16 copy `_weight_int8pack_mm` wants)

    def __init__(self, in_features: int, out_features: int, int8_inputs: bool = False, rotation: int | None = None):
        super().__init__()
        self.in_features, self.out_features, self.int8_inputs = in_features, out_features, int8_inputs
        self.rotation = rotation
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features))

    @classmethod
    def from_float(cls, w: torch.Tensor, int8_inputs: bool = False, rotation: int | None = None) -> "Int8Linear":
        m = cls(w.shape[1], w.shape[0], int8_inputs, rotation)
        m.weight, m.scales = quantize_int8(rotate(w.float(), rotation) if rotation else w)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8_inputs:
            packed = self.packed()
            if isinstance(packed, native.Int8Blocks):  # rotates the input itself
                return native.linear(x, packed, self.rotation).to(x.dtype)
            return dynamic_int8_linear(rotate(x, self.rotation) if self.rotation else x, packed)
        if self.rotation:
            x = rotate(x, self.rotation)
        rows = x.reshape(-1, x.shape[-1])
        # A prompt is compute-bound: one dense float32 matmul. So is a width not a multiple of 8, which
        # `_weight_int8pack_mm` reads past (Gemma 3n's 4-input AltUp coefficients: garbage up to 1e38).
        if rows.shape[0] > 1 or self.in_features % 8:
            return F.linear(x.float(), dequantize_int8(self.weight, self.scales)).to(x.dtype)
        if self._scales_bf16 is None or self._scales_bf16[0] is not self.scales:
            self._scales_bf16 = (self.scales, self.scales.to(ACT_DTYPE))
        y = torch._weight_int8pack_mm(rows.to(ACT_DTYPE), self.weight, self._scales_bf16[1])
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int8_inputs={self.int8_inputs}, rotation={self.rotation}")


class Int4Linear(nn.Module):
    """y = x W^T with W stored as 4-bit codes q (0..15) in torch's packed CPU layout and, per group of
    inputs and output channel, numbers in one of three layouts (`layout`):
    - "pairs": a bfloat16 scale and zero, w = (q - 8) * scale + zero (torch's `scales_and_zeros`,
      (K/g, N, 2): our own rounding, GGUF's Q4_1);
    - "symmetric": one float16 d, w = (q - 8) * d (`scales`, (K/g, N): GGUF's Q4_0 exactly as stored, 4.5
      bits a weight instead of 5, so a decoded token streams ~10% fewer bytes);
    - "kquant": GGUF's Q4_K exactly as stored, w = q * (d * sc) - dmin * m: per group of 32 the 6-bit sc
      and m (`sub_scales`, uint8 (K/32, 2, N)), per 256 inputs float16 d and dmin (`super_scales`,
      (K/256, 2, N)); 4.625 bits a weight, and the products exact in float32 as the file means them.

    One class, the layout told by its buffers, so a weight cache's state dict says which it holds
    (`_load_from_state_dict`) and every caller keeps one `isinstance`."""

    _torch_sz = None  # (group numbers, the (scale, zero) pairs torch's kernel takes), made on its first use
    _BUFFERS = {"pairs": ("scales_and_zeros",), "symmetric": ("scales",), "kquant": ("sub_scales", "super_scales")}

    def __init__(self, in_features: int, out_features: int, group_size: int, symmetric: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self._set_layout("symmetric" if symmetric else "pairs", self.weight.device)

    @property
    def symmetric(self) -> bool:
        return self.layout == "symmetric"

    def _set_layout(self, layout: str, device) -> None:
        self.layout = layout
        groups, N = self.in_features // self.group_size, self.out_features
        for names in self._BUFFERS.values():
            for name in names:
                self._buffers.pop(name, None)
        if layout == "symmetric":  # (K/g, N): each group's d for every channel side by side, as the kernel reads them
            self.register_buffer("scales", torch.zeros(groups, N, dtype=torch.float16, device=device))
        elif layout == "kquant":  # rows of N: a group's sc, then its m; a super-block's d, then its dmin
            self.register_buffer("sub_scales", torch.zeros(groups, 2, N, dtype=torch.uint8, device=device))
            self.register_buffer("super_scales", torch.zeros(self.in_features // 256, 2, N, dtype=torch.float16,
                                                             device=device))
        else:  # (K/g, N, 2): scale and zero side by side, as torch's kernel and ours read them
            self.register_buffer("scales_and_zeros", torch.zeros(groups, N, 2, dtype=ACT_DTYPE, device=device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the saved layout wins: an empty module is built with pairs
        layout = next((k for k, names in self._BUFFERS.items() if prefix + names[0] in state_dict), self.layout)
        if layout != self.layout:
            self._set_layout(layout, self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def group_scales(self) -> torch.Tensor:
        """The per-group numbers our kernels read beside the codes (`native.int4_linear`)."""
        return getattr(self, self._BUFFERS[self.layout][0])

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int, layout: str = "pairs") -> "Int4Linear":
        """Rounded to nearest in `layout` (see `int4_layout` for where "kquant" cannot be held)."""
        layout = int4_layout(layout, w.shape[1], group_size)
        if layout == "kquant" and native.available("quantize_q4k"):  # the same search in C, 20-60x faster
            with torch.device("meta"):
                m = cls(w.shape[1], w.shape[0], 32)
            m._set_layout("kquant", "cpu")
            m.weight = torch.empty(w.shape[0], w.shape[1] // 2, dtype=torch.uint8)
            native.quantize_q4k(w, m.weight, m.sub_scales, m.super_scales)
            return m
        if layout == "kquant":
            return cls.from_kquant(*quantize_int4_kquant(w))
        if layout == "symmetric":
            return cls.from_symmetric(*quantize_int4_symmetric(w, group_size), group_size)
        return cls.from_codes(*quantize_int4(w, group_size), group_size)

    @classmethod
    def from_codes(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> "Int4Linear":
        """From codes (N, K) in 0..15 and a scale and zero per group, (N, K/g), as `quantize_int4` gives."""
        with torch.device("meta"):  # no zero-filled buffers to throw away
            m = cls(q.shape[1], q.shape[0], group_size)
        m.weight = pack_int4(q)
        sz = torch.empty(scale.shape[1], scale.shape[0], 2, dtype=ACT_DTYPE)
        sz[..., 0], sz[..., 1] = scale.T, zero.T
        m.scales_and_zeros = sz
        return m

    @classmethod
    def from_symmetric(cls, q: torch.Tensor, d: torch.Tensor, group_size: int) -> "Int4Linear":
        """From codes (N, K) in 0..15 and a float16 d per group, (N, K/g): w = (q - 8) * d, kept exact."""
        return cls.from_packed_symmetric(pack_int4(q), d, group_size)

    @classmethod
    def from_packed_symmetric(cls, weight: torch.Tensor, d: torch.Tensor, group_size: int) -> "Int4Linear":
        """`from_symmetric` with the codes already packed (`pack_int4`'s layout, (N, K/2) uint8)."""
        if d.dtype != torch.float16:
            raise ValueError(f"d must be float16 (stored as it is), got {d.dtype}")
        with torch.device("meta"):
            m = cls(weight.shape[1] * 2, weight.shape[0], group_size, symmetric=True)
        m.weight = weight
        m.scales = d.T.contiguous()
        return m

    @classmethod
    def from_kquant(cls, q: torch.Tensor, sc: torch.Tensor, m: torch.Tensor, d: torch.Tensor,
                    dmin: torch.Tensor) -> "Int4Linear":
        """From Q4_K's parts: codes (N, K) in 0..15, 6-bit sc and m per 32 inputs (N, K/32) and float16
        d and dmin per 256 (N, K/256): w = q * (d * sc) - dmin * m, kept exact."""
        if d.dtype != torch.float16 or dmin.dtype != torch.float16:
            raise ValueError(f"d and dmin must be float16 (stored as they are), got {d.dtype}, {dmin.dtype}")
        with torch.device("meta"):
            lin = cls(q.shape[1], q.shape[0], 32)
        lin._set_layout("kquant", "cpu")
        lin.weight = pack_int4(q)
        lin.sub_scales = torch.stack([sc.T, m.T], 1).to(torch.uint8).contiguous()
        lin.super_scales = torch.stack([d.T, dmin.T], 1).contiguous()
        return lin

    def scale_zero(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero) float32 (N, K/g) of every layout: w = (q - 8) * scale + zero."""
        if self.layout == "pairs":
            return self.scales_and_zeros[..., 0].float().T, self.scales_and_zeros[..., 1].float().T
        if self.layout == "symmetric":
            return self.scales.float().T, torch.zeros(self.scales.shape[::-1])
        scale, low = self.kquant_scale_min()
        return scale, 8 * scale - low

    def fill_rows(self, start: int, part: "Int4Linear") -> None:
        """Copy `part` (the same layer's output rows start.., a whole number of packed blocks, the
        same layout) into this module's buffers: a large weight rounded a block of rows at a time."""
        n = part.out_features
        self.weight[start:start + n] = part.weight
        channels = -2 if self.layout == "pairs" else -1  # pairs: (K/g, N, 2); the others end in N
        for name in self._BUFFERS[self.layout]:
            getattr(self, name).narrow(channels, start, n).copy_(getattr(part, name))

    def row_scale_zero(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`scale_zero` of some output rows only, (len(rows), K/g) each."""
        if self.layout == "pairs":
            sz = self.scales_and_zeros[:, rows].float()
            return sz[..., 0].T, sz[..., 1].T
        if self.layout == "symmetric":
            scale = self.scales[:, rows].float().T
            return scale, torch.zeros_like(scale)
        prod = self.super_scales[:, :, rows].float().repeat_interleave(8, 0) * self.sub_scales[:, :, rows].float()
        scale, low = prod[:, 0].T, prod[:, 1].T
        return scale, 8 * scale - low

    def kquant_scale_min(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kquant: d * sc and dmin * m per group, float32 (N, K/32), as the gguf package computes them."""
        sup = self.super_scales.float().repeat_interleave(8, 0)  # (K/32, 2, N)
        prod = sup * self.sub_scales.float()
        return prod[:, 0].T, prod[:, 1].T

    def torch_scales_and_zeros(self) -> torch.Tensor:
        """The bfloat16 (scale, zero) pairs torch's kernel takes: the buffer itself, or made once from the
        other layouts' numbers (torch has neither; they round to bfloat16 there)."""
        if self.layout == "pairs":
            return self.scales_and_zeros
        if self._torch_sz is None or self._torch_sz[0] is not self.group_scales:
            scale, zero = self.scale_zero()
            self._torch_sz = (self.group_scales, torch.stack([scale.T, zero.T], -1).to(ACT_DTYPE).contiguous())
        return self._torch_sz[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and native.available("int4_linear"):  # our kernels read the same buffers, in float32
            return native.int4_linear(x, self.weight, self.group_scales, self.group_size,
                                      self.super_scales if self.layout == "kquant" else None)
        rows = x.reshape(-1, x.shape[-1]).to(ACT_DTYPE)
        y = torch._weight_int4pack_mm_for_cpu(rows, self.weight, self.group_size, self.torch_scales_and_zeros())
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"layout={self.layout}")


class Int8Embedding(_Packed, nn.Module):
    """A tied embedding / LM head stored int8 per row: rows are looked up and dequantized; the LM
    head is the int8 matrix-vector product, its input rounded to 8 bits. Per-row scales serve both.

    The head's input (the final norm's output) has outlier channels: on Gemma 3 270M a row's peak
    is 12x its RMS, and 8-bit inputs cost +0.45% perplexity. As for o_proj, the rows are stored
    rotated by a block Hadamard matrix (`rotation`) and the input rotated to match (peak 3.3x RMS,
    logit error 3.6x smaller); a looked-up row is rotated back."""

    _zeros = None  # the weight's zero points (all 0), as oneDNN takes them

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.float32,
                 rotation: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype
        self.rotation = rotation
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(num_embeddings))

    @classmethod
    def from_float(cls, w: torch.Tensor, rotation: int | None = None) -> "Int8Embedding":
        m = cls(w.shape[0], w.shape[1], w.dtype, rotation)
        m.weight, m.scales = quantize_int8(rotate(w.float(), rotation) if rotation else w)
        return m

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight).to(self.dtype) * F.embedding(ids, self.scales[:, None]).to(self.dtype)
        if not self.rotation:
            return rows
        if rows.shape[-2] > 16:  # a prompt
            return rotate(rows, self.rotation)  # H H = I
        # a few rows (a speculative check, a batch of streams) one at a time, as a decoded token's: the
        # rotation's matrix product sums in another order for several rows (~1e-7), enough to flip a near-tie
        return torch.cat([rotate(rows[..., i:i + 1, :], self.rotation) for i in range(rows.shape[-2])], -2)

    def torch_pack(self):
        # oneDNN, not fbgemm: its head GEMV is ~3% slower (9.45 vs 9.18 ms) but it packs twice as fast
        # and holds 110 MB less, for the one matrix that dominates load time and memory
        return onednn_pack(self.weight)

    def as_linear(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The head's logits; rows of float32 h can be written to `out` (rows, num_embeddings), e.g. a
        buffer kept from step to step (see batch.py's `_logit_rows`)."""
        packed = self.packed()
        if isinstance(packed, native.Int8Blocks):
            if out is not None:
                return native.linear(h.reshape(-1, h.shape[-1]), packed, self.rotation, out=out)
            return native.linear(h, packed, self.rotation).to(h.dtype)
        if self._zeros is None or len(self._zeros) != self.num_embeddings:
            self._zeros = torch.zeros(self.num_embeddings, dtype=torch.long)
        y = onednn_int8_linear(rotate(h, self.rotation) if self.rotation else h, packed, self.scales, self._zeros)
        return y if out is None else out.copy_(y.reshape(out.shape))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rotation={self.rotation}"


class Int4Embedding(Int4Linear):
    """A tied embedding / LM head at 4 bits, in Q4_0's symmetric layout by default (4.5 bits a weight;
    Gemma 3n's int4 load holds it in Q4_K's, `from_float(layout=...)`): the head
    is `Int4Linear`'s product, its input rounded to 8 bits per 32 (no rotation needed: each group
    has its own input scale); a looked-up row is unpacked (`unpack_int4`) and scaled. The head is
    read whole every token: Gemma 3n E2B's 262400 x 2048 is 302 MB here, 512 MB at int8."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.float32,
                 group_size: int = 32):
        super().__init__(embedding_dim, num_embeddings, group_size, symmetric=True)
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = 32, layout: str = "symmetric") -> "Int4Embedding":
        """Rounded a block of rows at a time: the float temporaries of a 262144-row table at once
        would be gigabytes."""
        m = cls(w.shape[0], w.shape[1], w.dtype, group_size)
        m._set_layout(int4_layout(layout, w.shape[1], group_size), "cpu")
        step = int4_row_block(w.shape[1])
        for i in range(0, w.shape[0], step):
            m.fill_rows(i, Int4Linear.from_float(w[i:i + step], group_size, m.layout))
        return m

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        n, g = len(flat), self.group_size
        codes = unpack_int4(self.weight, flat).float().sub_(8).view(n, -1, g)
        scale, zero = self.row_scale_zero(flat)
        rows = codes * scale[..., None] + zero[..., None]
        return rows.reshape(*ids.shape, self.embedding_dim).to(self.dtype)

    def as_linear(self, h: torch.Tensor) -> torch.Tensor:
        return Int4Linear.forward(self, h)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, group_size={self.group_size}, layout={self.layout}"


# -- the swap --------------------------------------------------------------------------------------

def input_kind(name: str, in_features: int) -> tuple[bool, int | None]:
    """(int8_inputs, rotation) for an int8 linear layer called `name` (see the module notes)."""
    block = rotation_block(in_features)
    if name in ROTATED_INPUTS and block:
        return True, block
    return False, None  # too narrow to rotate: 8-bit inputs would lose the outliers


def rotation_block(width: int) -> int | None:
    """The Hadamard block for inputs `width` wide: HADAMARD_BLOCK, or a smaller power of two the
    width needs; None under 64, too narrow to spread an outlier."""
    block = math.gcd(width, HADAMARD_BLOCK)
    return block if block >= 64 else None


def int4_layout(layout: str, in_features: int, group_size: int) -> str:
    """`layout` where a weight `in_features` wide can hold it: "kquant" needs groups of 32 and
    super-blocks of 256 inputs, and falls back to "pairs" (as close, half a bit more a weight)."""
    if layout not in Int4Linear._BUFFERS:
        raise ValueError(f"int4 layout must be one of {sorted(Int4Linear._BUFFERS)}, got {layout!r}")
    if layout == "kquant" and (group_size != 32 or in_features % 256):
        return "pairs"
    return layout


def quantized_linear(w: torch.Tensor, bits: int, group_size: int, name: str = "", layout: str = "pairs") -> nn.Module:
    """The quantized replacement of the linear layer `name` with weight `w`; int4 falls back to
    int8 where the CPU kernel cannot take the shape."""
    if bits == 4 and int4_supported(w.shape[0], w.shape[1], group_size):
        return Int4Linear.from_float(w, group_size, layout)
    if bits == 4:
        log.info("int4 kernel cannot take a %s weight with group %d; using int8", tuple(w.shape), group_size)
    return Int8Linear.from_float(w, *input_kind(name, w.shape[1]))


def _empty_linear(w: torch.Tensor, bits: int, group_size: int, name: str, layout: str) -> nn.Module:
    N, K = w.shape
    if bits == 4 and int4_supported(N, K, group_size):
        m = Int4Linear(K, N, group_size)
        m._set_layout(int4_layout(layout, K, group_size), m.weight.device)
        return m
    return Int8Linear(K, N, *input_kind(name, K))


def quantize_(model: nn.Module, bits: int | Callable[[str, nn.Module], int | None], group_size: int = 32,
              *, embedding_bits: int | None = 8, empty: bool = False, layout: str = "pairs") -> nn.Module:
    """Replace `model`'s `nn.Linear` layers in place with int8 (`bits=8`) or int4 (`bits=4`) ones.

    `bits` may be a function `(name, module) -> 8 | 4 | None` choosing per layer (None keeps it
    float), e.g. to follow a GGUF file's stored types. Embeddings with an `as_linear` LM head become
    `Int8Embedding` (`embedding_bits=8`: int8 keeps the tied head as good as Q8_0), `Int4Embedding`
    (`embedding_bits=4`, where the int4 kernel takes the shape) or stay float (None).
    Layers named in `ROTATED_INPUTS` quantize their (rotated) inputs to 8 bits as well
    (see the module notes).
    `empty=True` builds the quantized modules without quantizing anything, to be filled by
    `load_state_dict(..., assign=True)` from a weight cache (whose buffers say their layout).
    `layout`: the 4-bit layers' and embedding's `Int4Linear` layout ("pairs", "symmetric", "kquant").
    """
    choose = bits if callable(bits) else (lambda name, mod: bits)
    if embedding_bits not in (None, 4, 8):
        raise ValueError(f"embedding_bits must be 4, 8 or None, got {embedding_bits!r}")
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and child.bias is None:
                b = choose(full, child)
                if b is None:
                    continue
                if b not in (4, 8):
                    raise ValueError(f"bits must be 4 or 8, got {b!r} for {full}")
                w = child.weight.detach()
                setattr(mod, child_name, _empty_linear(w, b, group_size, child_name, layout) if empty
                        else quantized_linear(w, b, group_size, child_name, layout))
            elif isinstance(child, nn.Embedding) and hasattr(child, "as_linear") and embedding_bits:
                w = child.weight.detach()
                if embedding_bits == 4 and int4_supported(*w.shape, group_size):
                    if empty:
                        head = Int4Embedding(*w.shape, w.dtype, group_size)
                        head._set_layout(int4_layout(layout, w.shape[1], group_size), head.weight.device)
                    else:
                        head = Int4Embedding.from_float(w, group_size, layout)
                    setattr(mod, child_name, head)
                    continue
                block = rotation_block(w.shape[1])
                setattr(mod, child_name, Int8Embedding(*w.shape, w.dtype, block) if empty
                        else Int8Embedding.from_float(w, block))
    return model


def packed_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose int8 weight fbgemm packs (those that take 8-bit inputs)."""
    return [m for m in model.modules() if isinstance(m, _Packed) and getattr(m, "int8_inputs", True)]


def prepack(model: nn.Module, workers: int = 1, done: Callable[[torch.Tensor], None] | None = None) -> None:
    """Pack every weight that takes 8-bit inputs for its kernel now, not on its first call, on
    `workers` threads: our kernels' blocks are a reordering copy (~0.1 s for Gemma 3 270M), fbgemm's
    and oneDNN's layouts take ~1 s and cannot be stored. The LM head, by far the largest, goes
    first, so the layers pack beside it.
    `done(weight)` is called with each int8 weight once its kernel holds a packed copy."""
    def pack(m):
        packed = m.pack()
        if done is not None:
            done(m.weight)
        return packed

    mods = sorted(packed_modules(model), key=lambda m: -m.weight.numel())
    with ThreadPoolExecutor(max(1, workers)) as pool:  # fbgemm and oneDNN release the GIL while they pack
        for m, packed in zip(mods, pool.map(pack, mods)):
            m.set_packed(packed)


def quantized_bits(model: nn.Module) -> dict[str, int]:
    """How many modules of each kind a model holds, e.g. {"int4": 36, "int8": 37, "float": 0}."""
    counts = {"int4": 0, "int8": 0, "float": 0}
    for m in model.modules():
        if isinstance(m, Int4Linear):
            counts["int4"] += 1
        elif isinstance(m, (Int8Linear, Int8Embedding)):
            counts["int8"] += 1
        elif isinstance(m, (nn.Linear, nn.Embedding)):
            counts["float"] += 1
    return counts
