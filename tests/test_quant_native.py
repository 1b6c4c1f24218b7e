"""The C rounding to Q4_K (`quantize_q4.h`, what a first load of Gemma 3n at int4 runs) against
torch's reference (`quantize_int4_kquant`): the same search, so the same numbers but for near-ties."""
import pytest
import torch

from mmsdk.decoder import native
from mmsdk.decoder.quantize import Int4Linear, dequantize_int4, pack_int4, quantize_int4_kquant, unpack_int4

needs_native = pytest.mark.skipif(native.cpu_kernel() is None,
                                  reason="CPU has neither AVX-512 VNNI nor AVX2 + FMA (the kernels' instructions)")


def held(m: Int4Linear) -> torch.Tensor:
    return dequantize_int4(unpack_int4(m.weight, torch.arange(m.out_features)), *m.scale_zero())


def weights(rows: int = 256, cols: int = 2048) -> torch.Tensor:
    """Real-shaped (E2B's 2048 inputs) Gaussian rows at scales 0.001..0.1, heavy-tailed rows (the clip
    search's case), an all-zero row (d = 0: every code 0) and an all-positive one (the min clamps to 0)."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(rows, cols, generator=g) * torch.logspace(-3, -1, rows)[:, None]
    w[::7] = torch.distributions.StudentT(3.0).sample((len(w[::7]), cols)) * 0.02
    w[5] = 0
    w[9] = w[9].abs() + 0.01
    return w


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_c_rounding_matches_torchs(dtype):
    """Codes, 6-bit sc and m and float16 d and dmin as torch's reference finds them: all but near-ties
    (the 49 trials' error sums run in another order; measured: 0 of 512k codes differ here, ~1e-6 at
    E2B's sizes), so at most 1e-4 of them may differ, and the held weight's error is torch's to 1e-4.
    A wrong layout, sign or rounding step moves most codes or the error by percents."""
    w = weights().to(dtype)
    mine = Int4Linear.from_float(w, 32, "kquant")
    ref = Int4Linear.from_kquant(*quantize_int4_kquant(w))
    assert mine.layout == "kquant"
    for name in ("weight", "sub_scales", "super_scales"):
        a, b = getattr(mine, name), getattr(ref, name)
        assert a.shape == b.shape and a.dtype == b.dtype
        assert (a != b).float().mean() <= 1e-4, name
    assert int(mine.sub_scales.max()) <= 63  # Q4_K's 6 bits
    wf = w.float()
    err = (held(mine) - wf).square().sum()
    assert err <= (held(ref) - wf).square().sum() * (1 + 1e-4)
    assert float((err / wf.square().sum()).sqrt()) < 0.08  # the layout's measured 0.073 on Gaussian weights


@needs_native
def test_c_pairs_rounding_matches_torchs():
    """`quantize_int4`'s clip search for torch's (scale, zero) pairs in C against the torch reference: the
    same codes and numbers but for near-ties, the held weight's error torch's to 1e-4."""
    from mmsdk.decoder.quantize import quantize_int4, quantize_int4_reference

    w = weights()
    mine, ref = quantize_int4(w, 32), quantize_int4_reference(w, 32)
    assert [t.shape for t in mine] == [t.shape for t in ref] and mine[0].dtype == torch.uint8
    assert (mine[0] != ref[0]).float().mean() <= 1e-4
    for a, b in zip(mine[1:], ref[1:]):  # last bits apart (zero = lo + 8 scale as one fused multiply-add)
        assert ((a - b).abs() > 1e-5 * ref[1]).float().mean() <= 1e-3
    err = (dequantize_int4(*mine) - w).square().sum()
    assert err <= (dequantize_int4(*ref) - w).square().sum() * (1 + 1e-4)
    assert float((err / w.square().sum()).sqrt()) < 0.08


@needs_native
def test_c_rounding_writes_torchs_packed_layout_by_blocks_of_rows():
    """The codes land in torch's packed CPU layout (repacking them unpacked by `unpack_int4` with
    torch's own packer gives the same bytes: a layout, so exact), and rounding a weight in two
    blocks of rows (as the loader does) writes the same buffers as rounding it whole."""
    w = weights(128, 512)
    whole = Int4Linear.from_float(w, 32, "kquant")
    codes = unpack_int4(whole.weight, torch.arange(128))
    assert torch.equal(pack_int4(codes), whole.weight)
    parts = Int4Linear.from_float(torch.zeros(128, 512), 32, "kquant")
    half = 64
    for start in (0, half):
        native.quantize_q4k(w[start:start + half], parts.weight, parts.sub_scales, parts.super_scales, start)
    for name in ("weight", "sub_scales", "super_scales"):
        assert torch.equal(getattr(parts, name), getattr(whole, name)), name  # the same C code, run twice
    with pytest.raises(ValueError, match="whole blocks"):
        native.quantize_q4k(w[:8], parts.weight, parts.sub_scales, parts.super_scales, 0)
