"""Encoder acceleration as a module swap (gpt-fast `quantize.py`): the encoder files stay plain float32
PyTorch; `accelerate_siglip_`, `accelerate_gemma3n_audio_` and `accelerate_text_embedder_` change
their modules in place after loading. (MobileNet-V5 in channels-last memory was tried: 13% slower than
as stored on a quiet AMD EPYC Zen 3, 14.4 vs 12.7 s a 768 px view, `tests/eval/bench_encoders.py
--encoders mobilenet`.)

Why int8 with 8-bit inputs: the encoders are compute-bound products over many rows (a SigLIP view is
~5 TFLOP over 4096 rows, 60% of it in the linear layers; 30 s of audio ~1 TFLOP over 750 frames, 90%
in the conformer's linears). Integer products run faster than float32: on AVX2 (`vpmaddubsw`) through
oneDNN, on AVX-512 VNNI through our kernels (`decoder.quantize.Int8Linear`). Measured on an AMD EPYC
Zen 3 (AVX2, no AVX-512), one thread, a 750 x 1536 x 6144 product: float32 171 ms, oneDNN int8
85 ms, fbgemm 98 ms, our AVX2 kernel 120 ms; a 4096 x 1152 x 4304 one: 495, 299, 327, 432 ms.
Each input is Hadamard-rotated in blocks first (the weight stored rotated to match), as the decoder's
int8 layers do, so an outlier channel does not take a whole row's 8-bit range.

Attention itself stays in float32: our kernel from the fused q/k/v rows (`decoder/encoder_attention.h`,
a flash attention like torch's SDPA: no 4096 x 4096 matrix is formed), also on float32 loads. At SigLIP's
size its q k^T and p v loops run at ~85% of MKL's sgemm rate on a Zen 3, about torch's SDPA speed; what
it saves are the permuted copies of q, k, v and of the output. Quality (per-token cosine of the projected embeddings to float32):
`tests/eval/eval_vision.py` for SigLIP, `tests/eval/bench_encoders.py --encoders audio` for the conformer.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..decoder import native
from ..decoder.quantize import (
    Int8Linear,
    _qlinear,
    onednn_pack,
    quantize_int8,
    rotation_block,
)
from ..decoder.quantize import rotate as _rotate
from . import siglip

log = logging.getLogger(__name__)


def int8_kernel() -> str:
    """Which int8 product the encoders run here: our kernels where the CPU has AVX-512 VNNI (what they
    were tuned for), else oneDNN's (faster than our AVX2 kernel at encoder sizes, see above)."""
    return "mmsdk avx512-vnni" if native.kernel_name() == "avx512-vnni" else "oneDNN int8"


class Int8LinearBias(nn.Module):
    """`nn.Linear` (with or without bias) as int8 weights per output channel and 8-bit input rows.
    `rotate=False` skips the Hadamard rotation: through oneDNN it is a float32 product of its own,
    ~40% of the int8 one's time at 384 inputs (MiniLM). `zero_point=True` (oneDNN path) rounds each
    row over its own [min, max] rather than [-max |x|, max |x|]: twice the resolution for inputs that
    are nearly all positive, as after a GELU, for one more pass over the output. `gelu`: GELU on the
    output, in place, exact or torch's `approximate="tanh"`."""

    def __init__(self, linear: nn.Linear, *, rotate: bool = True, zero_point: bool = False, gelu: bool = False,
                 approximate: str = "none"):
        super().__init__()
        self.gelu, self.approximate = gelu, approximate
        w = linear.weight.detach().float()
        self.rotation = rotation_block(w.shape[1]) if rotate else None
        self.linear = self.packed = self.weight_sums = None
        if int8_kernel() == "oneDNN int8":
            q, self.scales = quantize_int8(_rotate(w, self.rotation) if self.rotation else w)
            self.packed, self.zeros = onednn_pack(q), torch.zeros(q.shape[0], dtype=torch.long)
            if zero_point:  # what a row's offset adds to each output: its sum over the stored weight's row
                self.weight_sums = q.float().sum(1) * self.scales
        else:
            self.linear = Int8Linear.from_float(w, int8_inputs=True, rotation=self.rotation)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        if self.weight_sums is not None:  # bias + low (x) weight_sums as one rank-2 product: [1, low] @ offsets
            bias = self.bias if self.bias is not None else torch.zeros_like(self.weight_sums)
            self.offsets = torch.stack([bias.detach(), self.weight_sums])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear is not None:
            y = self.linear(x)
            y = y if self.bias is None else y.add_(self.bias)
            return torch.ops.aten.gelu_(y, approximate=self.approximate) if self.gelu else y
        rows = x.reshape(-1, x.shape[-1]).float()
        if self.rotation:
            rows = _rotate(rows, self.rotation)
        if _fused_rows(rows, self.scales.numel()):
            return self._fused(rows).view(*x.shape[:-1], -1).to(x.dtype)
        if self.weight_sums is None:
            qx, step, zero = _symmetric_codes(rows)
        else:
            qx, step, low = _asymmetric_codes(rows)
            zero = 0
        y = _qlinear(qx, 1.0, zero, self.packed, self.scales, self.zeros, None, 1.0, 0, torch.float32, "none", [], "")
        # scale, offsets and bias in place: a new output as large costs more in page faults than the adds
        y.mul_(step)
        if self.weight_sums is not None:
            y.addmm_(torch.cat([torch.ones_like(low), low], 1), self.offsets)
        elif self.bias is not None:
            y.add_(self.bias)
        if self.gelu:
            torch.ops.aten.gelu_(y, approximate=self.approximate)
        return y.view(*x.shape[:-1], y.shape[-1]).to(x.dtype)

    def _fused(self, rows: torch.Tensor) -> torch.Tensor:
        """`forward`'s oneDNN path with the rounding and the output passes as our kernels' one pass each."""
        asymmetric = self.weight_sums is not None
        codes, step, low = native.quantize_rows_u8(rows.contiguous(), _code_max(), asymmetric)
        zero = 0 if asymmetric else (_code_max() - 1) // 2 + 1
        y = _qlinear(codes, 1.0, zero, self.packed, self.scales, self.zeros, None, 1.0, 0, torch.float32, "none", [], "")
        return native.int8_rows_out(y, step, low if asymmetric else None, self.weight_sums, self.bias, self.gelu,
                                    self.approximate)


def _fused_rows(rows: torch.Tensor, out_features: int) -> bool:
    """Whether our kernels (`native.quantize_rows_u8`, `int8_rows_out`) take these rows and the product's
    output: float32, whole registers of inputs (16) and outputs (8)."""
    return (rows.dtype == torch.float32 and rows.shape[-1] % 16 == 0 and out_features % 8 == 0
            and native.available("quantize_rows_u8", "int8_rows_out"))


def _code_max() -> int:
    """The largest input code: 7 bits where torch's int8 products add 16-bit pairs that would
    saturate (`native.pairs_saturate`), else 8."""
    return 127 if native.pairs_saturate() else 255


def _to_codes(shifted: torch.Tensor) -> torch.Tensor:
    """Non-negative floats, already + 0.5, truncated to uint8 codes (truncation rounds them). Codes
    up to 127 go through int8, whose conversion is vectorized (to uint8 is ~6x slower); same bits."""
    return shifted.to(torch.int8).view(torch.uint8) if _code_max() == 127 else shifted.to(torch.int32).to(torch.uint8)


def _symmetric_codes(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Each row rounded to `levels` steps either side of 0, stored around levels + 1 (the numbers of
    `quantize.onednn_int8_linear`, in fewer passes: no |x| copy, one multiply-add). Returns (codes,
    each row's step (rows, 1), the zero code)."""
    levels = (_code_max() - 1) // 2
    peak = torch.maximum(rows.amax(-1, keepdim=True), rows.amin(-1, keepdim=True).neg_()).clamp_(min=1e-30)
    return _to_codes(torch.addcmul(torch.tensor(levels + 1.5), rows, levels / peak)), peak / levels, levels + 1


def _asymmetric_codes(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row rounded over its own [min, max] to codes 0.._code_max(). Returns (codes, each row's
    step and minimum (rows, 1)): x ~= low + step * code."""
    low, high = rows.amin(-1, keepdim=True), rows.amax(-1, keepdim=True)  # torch.aminmax: 5x slower than both
    step = (high - low).div_(_code_max()).clamp_(min=1e-30)
    inv = 1.0 / step
    return _to_codes(torch.addcmul(0.5 - low * inv, rows, inv)), step, low


def fused_linear(*linears: nn.Linear) -> nn.Linear:
    """One linear computing `linears` side by side (q, k and v), their outputs concatenated."""
    fused = nn.Linear(linears[0].in_features, sum(m.out_features for m in linears))
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in linears]))
        fused.bias.copy_(torch.cat([m.bias for m in linears]))
    return fused


class FusedQKVAttention(nn.Module):
    """SigLIP's attention (`Attention`'s math) with q, k, v as one product, int8 (its input rounded once,
    not three times) or float32, and the attention from its rows by our kernel where it runs
    (`native.encoder_attention`: no permuted copies of q, k, v or of the output), else torch's SDPA."""

    def __init__(self, attn: siglip.Attention, int8: bool = True):
        super().__init__()
        self.n_heads, self.head_dim = attn.n_heads, attn.head_dim
        qkv = fused_linear(attn.q_proj, attn.k_proj, attn.v_proj)
        self.qkv_proj = Int8LinearBias(qkv) if int8 else qkv
        self.o_proj = Int8LinearBias(attn.o_proj) if int8 else attn.o_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv_proj(x).view(B, T, 3, self.n_heads, self.head_dim)
        if native.takes_encoder_attention(qkv):
            return self.o_proj(native.encoder_attention(qkv, torch.full((B,), T), self.head_dim**-0.5))
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


@torch.inference_mode()
def accelerate_siglip_(encoder: siglip.SiglipVisionEncoder, *, int8: bool = True, attention: bool = False,
                       keep_float: tuple[int, ...] = ()) -> nn.Module:
    """Swap, in place, each block's attention for `FusedQKVAttention` (q, k, v as one product, the
    attention by our kernel from its rows: float32 math) and with `int8=True` its MLP linears for int8
    ones, the GELU in the first one's output pass (with `attention=True` its q/k/v/o too), except in
    the blocks listed in `keep_float`, which stay float32. Returns `encoder`.

    The attention's q/k/v and output take 8-bit inputs per 32 (`Q8GroupLinear`) where our kernels run:
    per-row inputs (`attention=True`; 7-bit on AVX2) move the attention logits, and the error grows through
    the softmax. On the real-size SigLIP (random weights, per-token cosine of the projected features to
    float32) per-row int8 attention projections alone give min 0.9986 (4 blocks); per 32 with the int8 MLPs,
    all 27 blocks, 0.99985 (`tests/eval/eval_vision.py --simulate-q8-attention`)."""
    approximate = "none" if encoder.config.hidden_act == "gelu" else "tanh"  # the others are tanh's
    for i, block in enumerate(encoder.layers):
        quantize = int8 and i not in keep_float
        block.attn = attn = FusedQKVAttention(block.attn, int8=quantize and attention)
        if quantize and not attention and Q8GroupLinear.takes(attn.qkv_proj) and Q8GroupLinear.takes(attn.o_proj):
            attn.qkv_proj, attn.o_proj = Q8GroupLinear(attn.qkv_proj), Q8GroupLinear(attn.o_proj)
        if quantize:
            block.mlp = nn.Sequential(Int8LinearBias(block.mlp.fc1, gelu=True, approximate=approximate),
                                      Int8LinearBias(block.mlp.fc2))
    log.info("SigLIP: fused q/k/v attention%s", f", int8 {'linears' if attention else 'MLPs'} in "
             f"{len(encoder.layers) - len(keep_float)} of {len(encoder.layers)} blocks" if int8 else "")
    return encoder


class Q8GroupLinear(nn.Module):
    """`nn.Linear` as int8 weights and 8-bit inputs, each with a scale per 32 inputs (llama.cpp's Q8_0 x
    Q8_0), through `native.q8g_matmul` (AVX2 and AVX-512 VNNI hosts). Finer than `Int8LinearBias`'s per-row
    inputs, which AVX2 can only take at 7 bits: what the audio conformer's and SigLIP's attention's quality
    gates need."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        groups = w.view(w.shape[0], -1, 32)
        scales = groups.abs().amax(-1) / 127
        codes = torch.round(groups / torch.where(scales > 0, scales, 1.0)[..., None]).to(torch.int8)
        self.groups = native.q8g_pack(codes.view(w.shape), scales)
        self.in_features = w.shape[1]
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    @staticmethod
    def takes(linear: nn.Module) -> bool:
        """A linear in the kernel's whole tiles, where either of our kernels runs: AVX2 (measured
        1.25-1.49x float32) or AVX-512 VNNI (not measured: no such host at hand; float32 products are twice
        as wide there, but vpdpbusd takes 32 products an instruction with no saturation fix-ups, where AVX2
        takes four: sign, maddubs, madd, add)."""
        return (isinstance(linear, nn.Linear) and native.available("q8g_matmul")
                and native.q8g_fits(*linear.weight.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = native.q8g_matmul(x.reshape(-1, self.in_features).float(), self.groups)
        y = y if self.bias is None else y.add_(self.bias)
        return y.view(*x.shape[:-1], y.shape[-1]).to(x.dtype)


@torch.inference_mode()
def accelerate_gemma3n_audio_(audio: nn.Module) -> nn.Module:
    """Swap the conformer's half-step FFNs and light-conv linears for `Q8GroupLinear`s, in place, on AVX2
    and AVX-512 VNNI hosts (elsewhere it stays float32). Returns `audio`. Quantized loads apply it.

    They are ~75% of the tower's time on 30 s of audio. Attention's q/k/v and output stay float32: with
    them too the per-token cosine of the encodings to float32 falls to 0.99886 (0.99912 Hadamard-rotated),
    at the 0.999 gate; these alone measured 0.99953 (real-size random weights, 30 s; docs/performance.md).
    Per-row 8-bit inputs give 0.99727, oneDNN's 7-bit ones 0.9929 (all linears)."""
    swapped = 0
    for layer in audio.encoder.layers:
        for owner, name in ((layer.ffn_start, "up"), (layer.ffn_start, "down"), (layer.ffn_end, "up"),
                            (layer.ffn_end, "down"), (layer.conv, "linear_start"), (layer.conv, "linear_end")):
            if Q8GroupLinear.takes(getattr(owner, name)):
                setattr(owner, name, Q8GroupLinear(getattr(owner, name)))
                swapped += 1
    log.info("Gemma 3n audio: %d linears int8 with 8-bit inputs per 32 (%s)", swapped,
             f"mmsdk {native.kernel_name()}" if swapped else "none here: float32")
    return audio


class ChannelNorm2d(nn.Module):
    """timm's `RmsNorm2d` / `RmsNormAct2d` (GELU tanh or no activation) as one pass of our kernel
    (`native.rms_norm_act_2d`); other inputs (not float32, not contiguous NCHW) go through timm's module.
    `inplace`: the input is a convolution's fresh output that nothing else reads (timm's `ConvNormAct`),
    so it is overwritten: a new 75 MB output costs 7x the norm itself in page faults on a Zen 3 VM."""

    def __init__(self, norm: nn.Module, inplace: bool = False):
        super().__init__()
        self.timm, self.inplace = norm, inplace
        self.gelu = isinstance(getattr(norm, "act", None), nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.dim() != 4 or not x.is_contiguous():
            return self.timm(x)
        return native.rms_norm_act_2d(x, self.timm.weight, self.timm.eps, self.gelu, out=x if self.inplace else None)


class DepthwiseConv2d(nn.Module):
    """A stride-2 depthwise `nn.Conv2d` (timm's `Conv2dSame` too: its asymmetric "same" padding is read as
    zeros, no padded copy) through our kernel (`native.dwconv2d`). One thread, Zen 3, with the padding:
    768 x 192 x 192, 5 x 5: ~95 against ~400 ms; 3840 x 48 x 48: 54 against 229 ms; the 31 of a 768 px
    view, each at its own shape, alternating: 0.21 against 0.58 s of CPU time. Stride 1 stays
    oneDNN's (faster there: 12-35 against ~45 ms at 1536 x 48 x 48, 5 x 5). Other inputs (not float32,
    not contiguous NCHW, rows wider than the kernel's) go through the convolution itself."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        from timm.layers.conv2d_same import Conv2dSame

        self.conv, self.same = conv, isinstance(conv, Conv2dSame)
        self.k, self.stride = conv.kernel_size[0], conv.stride[0]

    @staticmethod
    def takes(m: nn.Module) -> bool:
        return (type(m).__name__ in ("Conv2d", "Conv2dSame") and m.groups == m.in_channels == m.out_channels > 1
                and m.kernel_size[0] == m.kernel_size[1] and m.stride == (2, 2)
                and m.dilation == (1, 1) and m.padding_mode == "zeros" and isinstance(m.padding, tuple))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not native.takes_dwconv2d(x):
            return self.conv(x)
        k, s = self.k, self.stride
        H, W = x.shape[-2:]
        if self.same:  # timm's pad_same: the output ceil(H / s), padding split with the extra row below
            Ho, Wo = -(-H // s), -(-W // s)
            top, left = max((Ho - 1) * s + k - H, 0) // 2, max((Wo - 1) * s + k - W, 0) // 2
        else:
            top, left = self.conv.padding
            Ho, Wo = (H + 2 * top - k) // s + 1, (W + 2 * left - k) // s + 1
        return native.dwconv2d(x, self.conv.weight, self.conv.bias, s, top, left, (Ho, Wo))


def _swappable_norm(m: nn.Module) -> bool:
    """A timm RMS norm over channels whose activation our kernel computes (GELU tanh, or none)."""
    from timm.layers.norm import RmsNorm2d

    act, drop = getattr(m, "act", nn.Identity()), getattr(m, "drop", nn.Identity())
    return (isinstance(m, RmsNorm2d) and isinstance(drop, nn.Identity)
            and (isinstance(act, nn.Identity) or (isinstance(act, nn.GELU) and act.approximate == "tanh")))


def _norms_after_conv(backbone: nn.Module) -> set[str]:
    """The norms whose input is a convolution's fresh output that nothing else reads, to be normalized in
    place: timm's `ConvNormAct.bn`, `EdgeResidual.bn1` / `bn2` (a 75 MB output at 768 px, ~18k page
    faults each if allocated anew) and a norm right after a convolution in a `Sequential` (the attention's
    key and value after their strided convolutions)."""
    from timm.layers.conv_bn_act import ConvNormAct
    from timm.models._efficientnet_blocks import EdgeResidual

    names = set()
    for name, m in backbone.named_modules():
        if isinstance(m, ConvNormAct):
            names.add(f"{name}.bn")
        elif isinstance(m, EdgeResidual):
            names |= {f"{name}.bn1", f"{name}.bn2"}
        elif isinstance(m, nn.Sequential):
            children = list(m.named_children())
            names |= {f"{name}.{b}" for (_, a), (b, _) in zip(children, children[1:]) if isinstance(a, nn.Conv2d)}
    return names


@torch.inference_mode()
def accelerate_mobilenet_(backbone: nn.Module) -> nn.Module:
    """Swap MobileNet-V5's (timm's) channel RMS norms and their GELU for `ChannelNorm2d` and its stride-2
    depthwise convolutions for `DepthwiseConv2d`, in place, where our kernels run: the same float32 math.
    Returns `backbone`.

    ~180 norms over up to 768 x 192 x 192 activations took 28% of a 768 px view in torch (six passes each
    over a layout strided across channels). Also tried: the 1x1 convolutions as MKL matrix products on
    the NCHW planes (no oneDNN reorders): no faster, and int8 ones through oneDNN (7-bit inputs on AVX2):
    ~15% faster at a per-token cosine of 0.996 to float32, short of the 0.999 gate; rounding every 1x1
    convolution's input per pixel instead (simulated, weights int8 per output channel): min 0.9909 symmetric
    7-bit, 0.9953 with a zero point, 0.9968 per 32 channels, all short too. Multi-query attention as
    plain matrix products over the heads (no SDPA, no permuted copies): slower (150-290 against 125 ms).

    Where a view's time goes after these swaps (1 thread, Zen 3, timing hooks): 1x1 convolutions ~60% at
    20-30 GMAC/s (a 2048^3 float32 product runs at ~30 here), the two full 3x3 convolutions at 192 x 192
    ~10%, attention (SDPA) ~12%, norms ~6%; ~250k page faults a view (activations over glibc's 32 MB mmap
    cap are mapped anew each time: `THP_MEM_ALLOC_ENABLE=1` before torch starts cut them to ~13k)."""
    if not native.available("rms_norm_act_2d"):
        return backbone
    after_conv = _norms_after_conv(backbone)
    norms = [(name, m) for name, m in backbone.named_modules() if _swappable_norm(m)]
    for name, norm in norms:
        parent, _, attr = name.rpartition(".")
        setattr(backbone.get_submodule(parent) if parent else backbone, attr, ChannelNorm2d(norm, name in after_conv))
    convs = [(name, m) for name, m in backbone.named_modules() if DepthwiseConv2d.takes(m)]
    convs = convs if native.available("dwconv2d") else []
    for name, conv in convs:
        parent, _, attr = name.rpartition(".")
        setattr(backbone.get_submodule(parent), attr, DepthwiseConv2d(conv))
    log.info("MobileNet-V5: %d channel norms in one pass each, %d stride-2 depthwise convolutions", len(norms),
             len(convs))
    return backbone


class FusedQKVSelfAttention(nn.Module):
    """A BERT self-attention (`BertSelfAttention`: no cache, no cross-attention) with q, k and v as one
    int8 product: its input rounded once, not three times. Attention: our kernel straight from the q/k/v
    rows (`native.encoder_attention`, AVX2: ~20% faster than torch's flash attention at 12 heads of 32)
    where the batch is right-padded; else the mask BertModel built (boolean for SDPA, additive for
    eager) goes to torch's SDPA as it is, which reads either."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.head_dim, self.scaling = attn.attention_head_size, attn.scaling
        self.qkv = Int8LinearBias(fused_linear(attn.query, attn.key, attn.value), rotate=int8_kernel() != "oneDNN int8",
                                  zero_point=True)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        B, T, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(B, T, 3, -1, self.head_dim)
        lens = _prefix_lengths(attention_mask, B, T)
        if lens is not None and native.takes_encoder_attention(qkv):
            return native.encoder_attention(qkv, lens, self.scaling), None
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            # torch's CPU flash attention runs ~25% faster with an additive mask than a boolean one
            attention_mask = torch.zeros(attention_mask.shape, dtype=q.dtype).masked_fill_(
                ~attention_mask, torch.finfo(q.dtype).min)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=self.scaling)
        return y.transpose(1, 2).reshape(B, T, -1), None


def _prefix_lengths(mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor | None:
    """Each sample's length where BertModel's mask (None, or (B, 1, T or 1, T) boolean or additive) lets
    every query see the same first keys, as right-padded batches do; else None."""
    if mask is None:
        return torch.full((B,), T)
    if mask.dim() != 4 or mask.shape[0] != B or mask.shape[-1] != T:
        return None
    seen = mask if mask.dtype == torch.bool else mask == 0
    lens = seen[:, 0, 0].sum(-1)
    return lens if bool((seen == (torch.arange(T) < lens[:, None])[:, None, None]).all()) else None


@torch.inference_mode()
def accelerate_text_embedder_(encoder: nn.Module) -> nn.Module:
    """Swap the linears of a BERT sentence encoder's layer stack (`BertModel.encoder`) for int8 ones, in
    place: q, k, v as one (`FusedQKVSelfAttention`), the attention output, both FFN linears, the first
    with its GELU applied in place. Returns `encoder`.

    They are ~75% of all-MiniLM-L6-v2's time on 200-word-piece chunks; attention stays float32 (our
    kernel or torch's SDPA, see `FusedQKVSelfAttention`). Inputs are rotated only where our VNNI kernel
    does it in its own adds; through oneDNN a rotation costs ~40% of the int8 product at 384 inputs.
    Rows take a zero point (`Int8LinearBias(zero_point=True)`): the FFN's second linear sees GELU
    outputs, nearly all positive; symmetric 7-bit rows gave a per-chunk cosine to float32 of min 0.9898 on the RAG eval's
    822 chunks, with the zero point min 0.9939, mean 0.9978 (AVX2, 7-bit inputs). One range for the
    whole input (oneDNN then applies scale, bias and GELU inside the product) gave min 0.938.

    Speed on a shared AMD EPYC Zen 3 (AVX2, no AVX-512), 1 thread, 103 of the eval's chunks, one run:
    9.9 chunks/s before these swaps (q, k, v apart, batches of 32), 15.6 after, float32 9.8. Where a
    chunk's ~64 ms go: the int8 products ~53%, SDPA ~22%, rounding, offsets and GELU the rest. With
    those passes in C (`decoder/int8_rows.h`) and the attention too, 200 chunks, alternating, CPU time:
    13.2 chunks/s before, 16.2 with the C passes, 17.4 with both; oneDNN's int8 products (~75 GMAC/s
    here, the AVX2 peak of 32 multiply-adds a cycle) are then ~65% of the time.
    `tests/eval/eval_rag.py --bench-embedders` times int8 against float32 at the process's threads."""
    # BERT's "gelu": torch's exact (erf) one
    from transformers.activations import GELUActivation

    rotate = int8_kernel() != "oneDNN int8"
    for layer in encoder.layer:
        layer.attention.self = FusedQKVSelfAttention(layer.attention.self)
        layer.attention.output.dense = Int8LinearBias(layer.attention.output.dense, rotate=rotate, zero_point=True)
        inter = layer.intermediate
        fuse_gelu = isinstance(inter.intermediate_act_fn, GELUActivation)
        inter.dense = Int8LinearBias(inter.dense, rotate=rotate, zero_point=True, gelu=fuse_gelu)
        if fuse_gelu:
            inter.intermediate_act_fn = nn.Identity()
        layer.output.dense = Int8LinearBias(layer.output.dense, rotate=rotate, zero_point=True)
    log.info("text embedder: int8 linears in %d layers (%s)", len(encoder.layer), int8_kernel())
    return encoder
