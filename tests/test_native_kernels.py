"""Our kernels (decoder/int8_vnni.c on AVX-512 VNNI, decoder/kernels_avx2.c on AVX2 + FMA: whichever
this CPU runs), compiled here with the system C compiler, against torch: the blocked layout, the
product for every tile shape, the fused rotation, the row helpers, whole layers, and the fallback to
torch's kernels where they cannot be built (an error instead under MMSDK_REQUIRE_NATIVE=1)."""
import ctypes
import shutil
from pathlib import Path

import pytest
import torch

from mmsdk.decoder import native
from mmsdk.decoder.quantize import Int8Embedding, Int8Linear, quantize_int8, rotate

# Skipped only for the hardware: a kernel this CPU should run but that does not build fails the tests.
needs_native = pytest.mark.skipif(native.cpu_kernel() is None,
                                  reason="CPU has neither AVX-512 VNNI (avx512f/bw/vl/dq, avx512_vnni) nor AVX2 + FMA")


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


@needs_native
def test_blocks_hold_16_channels_4_inputs_at_a_time():
    q = torch.randint(-127, 128, (48, 64), dtype=torch.int8)
    w = native.pack(q, torch.ones(48))
    assert w.blocks.shape == (3, 16, 16, 4)
    assert torch.equal(w.blocks[1, 5, 7], q[16 + 7, 20:24])  # block 1, inputs 20..23, channel 16+7
    assert torch.equal(w.comp, 128 * q.sum(1, dtype=torch.int32))


@needs_native
@pytest.mark.parametrize("rows", [1, 5, 6, 13])  # one row, and tiles of 6 rows with and without a rest
@pytest.mark.parametrize("out", [16, 48, 80, 640])  # panels of 64 channels, and the 1-3 block rests
def test_product_matches_dequantized_weights(rows, out):
    torch.manual_seed(rows * out)
    w, x = torch.randn(out, 256), torch.randn(rows, 256)
    q, s = quantize_int8(w)
    y = native.linear(x, native.pack(q, s))
    ref = x @ (q.float() * s[:, None]).T
    assert y.shape == (rows, out)
    assert rel_err(y, ref) < 0.01  # 8-bit input rows: ~0.5% each
    # the same rounding of the rows done in torch: equal codes, exact integer sums, so only the
    # float scaling differs (~1e-7); a wrong code, tile edge or channel order is >= 1e-3
    assert rel_err(y, rounded_rows(x) @ (q.float() * s[:, None]).T) < 1e-5


def rounded_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of x rounded to 8 bits at its own scale (max |x| -> 127), as the kernels do.
    (Not fbgemm's kernel as the reference: without VNNI it saturates 16-bit pair sums, 2-6% off.)"""
    peak = x.abs().amax(-1, keepdim=True)
    return torch.round(x * (127.0 / peak)) * (peak / 127.0)


@needs_native
@pytest.mark.parametrize("block", [16, 64, 128, 256])
def test_fused_rotation_equals_torch_rotation(block):
    torch.manual_seed(block)
    x = torch.randn(7, 512)
    x[:, 3] *= 40  # an outlier channel, what the rotation is for
    w = torch.randn(64, 512)
    q, s = quantize_int8(rotate(w, block))
    packed = native.pack(q, s)
    y = native.linear(x, packed, block)
    assert rel_err(y, native.linear(rotate(x, block), packed)) < 1e-3  # float rounding moves a few codes
    unrotated = native.linear(x, native.pack(*quantize_int8(w)))
    assert rel_err(y, x @ w.T) < rel_err(unrotated, x @ w.T) / 2


@needs_native
def test_modules_use_the_blocks_and_match_torch_kernels(monkeypatch):
    torch.manual_seed(0)
    lin = Int8Linear.from_float(torch.randn(96, 128), int8_inputs=True, rotation=64)
    head = Int8Embedding.from_float(torch.randn(512, 128), rotation=64)
    x = torch.randn(3, 128)
    assert isinstance(lin.packed(), native.Int8Blocks) and isinstance(head.packed(), native.Int8Blocks)
    ours = lin(x), head.as_linear(x)
    monkeypatch.setenv("MMSDK_NATIVE", "0")
    native.library.cache_clear()
    try:
        lin2, head2 = Int8Linear(128, 96, int8_inputs=True, rotation=64), Int8Embedding(512, 128, rotation=64)
        lin2.load_state_dict(lin.state_dict()), head2.load_state_dict(head.state_dict())
        assert not isinstance(lin2.packed(), native.Int8Blocks)
        theirs = lin2(x), head2.as_linear(x)
    finally:
        native.library.cache_clear()
    for a, b in zip(ours, theirs):  # 8-bit rows each: ~0.5%; torch's 7-bit ones without VNNI: ~1.3%
        assert rel_err(a, b) < (0.025 if native.pairs_saturate() else 0.01)


def test_a_compiler_that_fails_leaves_torch_kernels(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("MMSDK_CACHE", str(tmp_path))
    monkeypatch.delenv("MMSDK_REQUIRE_NATIVE", raising=False)
    monkeypatch.setenv("CC", "false")  # exits 1, like a compiler that cannot build the source
    native.library.cache_clear()
    try:
        assert native.library() is None
        lin = Int8Linear.from_float(torch.randn(32, 64), int8_inputs=True)
        assert not isinstance(lin.packed(), native.Int8Blocks)
        x = torch.randn(2, 64)
        assert rel_err(lin(x), x @ (lin.weight.float() * lin.scales[:, None]).T) < 0.02
        assert not list((tmp_path / "kernels").glob("*.so"))  # nothing half-built left under the real name
    finally:
        native.library.cache_clear()


@needs_native
def test_this_cpus_kernels_build_and_export_every_entry_point():
    assert native.kernel_name() == native.cpu_kernel().name
    missing = {name for name in native.ENTRY_POINTS if not native.available(name)}
    # int8_vnni.c leaves out the passes around oneDNN's int8 product and the encoders' attention (AVX2 only,
    # int8_rows.h, encoder_attention.h): with VNNI the encoders run our own product, and torch's attention
    assert missing == ({"quantize_rows_u8", "int8_rows_out", "encoder_attention"}
                       if native.kernel_name() == "avx512-vnni" else set())


@needs_native
def test_a_compiler_that_fails_is_an_error_when_native_is_required(monkeypatch, tmp_path):
    monkeypatch.setenv("MMSDK_CACHE", str(tmp_path))
    monkeypatch.setenv("MMSDK_REQUIRE_NATIVE", "1")
    monkeypatch.setenv("CC", "false")
    native.library.cache_clear()
    try:
        with pytest.raises(native.KernelBuildError, match="could not build"):
            native.library()
    finally:
        native.library.cache_clear()


@needs_native
def test_a_tampered_or_stale_library_is_built_again(monkeypatch, tmp_path):
    """The cached library is loaded only when the record beside it matches the source, compiler and
    flags and the library's own bytes; otherwise it is compiled again (and works)."""
    built_here = Path(native.library()._name)  # this session's library: the same key, so its record holds
    monkeypatch.setenv("MMSDK_CACHE", str(tmp_path))
    (tmp_path / "kernels").mkdir()
    for f in (built_here, built_here.with_suffix(".json")):
        shutil.copy(f, tmp_path / "kernels" / f.name)
    lib = tmp_path / "kernels" / built_here.name
    copied = lib.stat().st_ino
    native.library.cache_clear()
    try:
        native.library()
        assert lib.stat().st_ino == copied  # a matching record: loaded as it is, not rebuilt
        built = lib.read_bytes()
        for spoil in ("library", "record"):
            if spoil == "library":  # a tampered library: its bytes no longer match the record's hash
                tampered = tmp_path / "tampered.so"  # a new file: this process has the old one mapped
                tampered.write_bytes(built[:-64] + bytes(64))
                tampered.replace(lib)
            else:  # a stale record: another source or other flags
                record = lib.with_suffix(".json")
                record.write_text(record.read_text().replace('"key": "', '"key": "0'))
            native.library.cache_clear()
            assert native.library() is not None
            assert lib.read_bytes() != built[:-64] + bytes(64) and native.available()
            x, q = torch.randn(2, 64), torch.randint(-127, 128, (16, 64), dtype=torch.int8)
            assert rel_err(native.linear(x, native.pack(q, torch.ones(16))), rounded_rows(x) @ q.float().T) < 1e-5
    finally:
        native.library.cache_clear()


@needs_native
@pytest.mark.parametrize("bits,tol", [(8, 5e-3), (4, 1e-2), ("q4_0", 1e-2), ("q4_k", 1e-2)])  # 4-bit: 8-bit inputs per 32
def test_fused_decode_step_matches_the_python_layers(monkeypatch, bits, tol):
    """Each decoded token through `fused.step` (one C call a layer) against the Python layers from
    the same caches: past the rings' wrap (window 8) and the full caches' growth at 256 slots."""
    from mmsdk.decoder import fused
    from mmsdk.decoder.kv_cache import make_cache

    model = quantized_tiny_model(bits)
    calls = []
    step = fused.step
    monkeypatch.setattr(fused, "step", lambda *a: calls.append(1) or step(*a))
    ids = torch.randint(0, model.config.vocab_size, (1, 262), generator=torch.Generator().manual_seed(0))
    caches = make_cache(model.config)
    with torch.inference_mode():
        model(ids[:, :250], caches, torch.arange(250))
        for pos in range(250, 262):
            ref_caches = [c.clone() for c in caches]
            out = model(ids[:, pos:pos + 1], caches, torch.tensor([pos]))
            with monkeypatch.context() as m:
                m.setattr(fused, "plan", lambda *a: None)
                ref = model(ids[:, pos:pos + 1], ref_caches, torch.tensor([pos]))
            assert rel_err(out, ref) < tol, pos  # same math; float sums in another order may move an 8-bit code
            for c, r in zip(caches, ref_caches):
                assert c.offset == r.offset and rel_err(c.k, r.k) < tol and rel_err(c.v, r.v) < tol
            caches = ref_caches  # go on from one state, so moved codes do not compound
    assert len(calls) == 12 * len(model.layers)


@needs_native
@pytest.mark.parametrize("bits,tol", [(8, 5e-3), (4, 1e-2), ("q4_0", 1e-2), ("q4_k", 1e-2)])
def test_fused_prompt_matches_the_python_layers(monkeypatch, bits, tol):
    """A prompt's chunks through `fused.prompt` (two C calls a layer) against the Python layers:
    a first chunk into empty caches, then chunks attending the rings (window 8) and full caches."""
    from mmsdk.decoder import fused
    from mmsdk.decoder.kv_cache import make_cache

    model = quantized_tiny_model(bits)
    calls = []
    prompt = fused.prompt
    monkeypatch.setattr(fused, "prompt", lambda *a: calls.append(1) or prompt(*a))
    ids = torch.randint(0, model.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(1))
    caches, ref_caches = make_cache(model.config), make_cache(model.config)
    with torch.inference_mode():
        for s, e in [(0, 13), (13, 30), (30, 48)]:  # later chunks past fused.ROWS rows: not a check's `rows`
            out = model(ids[:, s:e], caches, torch.arange(s, e))
            with monkeypatch.context() as m:
                m.setattr(fused, "plan", lambda *a: None)
                ref = model(ids[:, s:e], ref_caches, torch.arange(s, e))
            assert rel_err(out, ref) < tol, s
            for c, r in zip(caches, ref_caches):
                assert c.offset == r.offset and rel_err(c.k, r.k) < tol and rel_err(c.v, r.v) < tol
            caches = [c.clone() for c in ref_caches]  # go on from one state
    assert len(calls) == 3 * len(model.layers)


@needs_native
def test_the_kept_layer_description_follows_the_weights(monkeypatch):
    """`fused.plan` keeps a layer's C description from token to token; a norm weight changed in place,
    then a projection swapped for another layer's, must each be in the next decoded token."""
    from mmsdk.decoder import fused
    from mmsdk.decoder.kv_cache import make_cache

    model = quantized_tiny_model(8)
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(5))
    caches = make_cache(model.config)
    block, x = model.layers[0], torch.zeros(1, 1, model.config.hidden_size)
    with torch.inference_mode():
        model(ids[:, :10], caches, torch.arange(10))
    kept = fused.plan(block, x, caches[0])
    assert kept is not None and fused.plan(block, x, caches[0]) is kept
    changes = [lambda: block.mlp_norm.weight.add_(0.5), lambda: setattr(block.attn, "o_proj", model.layers[1].attn.o_proj)]
    for pos, change in zip((10, 11), changes):
        with torch.no_grad():
            change()
        ref_caches = [c.clone() for c in caches]
        with torch.inference_mode():
            out = model(ids[:, pos:pos + 1], caches, torch.tensor([pos]))
            with monkeypatch.context() as m:
                m.setattr(fused, "plan", lambda *a: None)
                ref = model(ids[:, pos:pos + 1], ref_caches, torch.tensor([pos]))
        assert rel_err(out, ref) < 5e-3, pos


@needs_native
@pytest.mark.parametrize("bits", [8, 4, "q4_0", "q4_k"])
def test_fused_rows_are_the_steps_they_stand_for(monkeypatch, bits):
    """A speculative check's rows through `fused.rows` (one C call a layer for all of them) against
    the same tokens decoded one `fused.step` at a time, in a ring past its wrap (window 8) and a full
    cache: each row is computed with the step's arithmetic, so greedy checks pick what plain decoding
    picks. Exactness is the design; the tolerance (1e-6, far under one 8-bit code's 1e-3) is there
    only because two code paths are compared."""
    from mmsdk.decoder import fused
    from mmsdk.decoder.kv_cache import make_cache

    model = quantized_tiny_model(bits)
    calls = []
    rows = fused.rows
    monkeypatch.setattr(fused, "rows", lambda *a: calls.append(1) or rows(*a))
    ids = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(2))
    caches = make_cache(model.config)
    with torch.inference_mode():
        model(ids[:, :20], caches, torch.arange(20))
        for start, M in [(20, 5), (25, 1), (26, 9)]:
            steps = [c.clone() for c in caches]
            out = model(ids[:, start:start + M], caches, torch.arange(start, start + M))
            ref = torch.cat([model(ids[:, p:p + 1], steps, torch.tensor([p])) for p in range(start, start + M)], 1)
            assert rel_err(out, ref) < 1e-6, start
            for c, r in zip(caches, steps):
                assert c.offset == r.offset and rel_err(c.k, r.k) < 1e-6 and rel_err(c.v, r.v) < 1e-6
    assert len(calls) == 2 * len(model.layers)


def quantized_tiny_model(bits):
    """test_quant_modules' tiny model quantized to `bits`; "q4_0": its linear layers rounded as GGUF's
    Q4_0 into Int4Linear's symmetric layout, "q4_k": as Q4_K into its kquant layout (widths of 256,
    Q4_K's super-block), the embedding int8."""
    from mmsdk.decoder.gemma3 import Gemma3Text
    from mmsdk.decoder.quantize import Int4Linear, quantize_
    from test_quant_modules import tiny_config, tiny_model

    if bits == "q4_k":
        torch.manual_seed(0)
        model = Gemma3Text(tiny_config(hidden_size=256, intermediate_size=256, head_dim=128,
                                       query_pre_attn_scalar=128)).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.randn_like(p) * (0.1 if "norm" in name else p.shape[-1] ** -0.5))
    else:
        model = tiny_model()
    layout = {"q4_0": "symmetric", "q4_k": "kquant"}.get(bits)
    if layout:
        for mod in list(model.modules()):
            for name, child in list(mod.named_children()):
                if isinstance(child, torch.nn.Linear):
                    w = child.weight.detach()
                    setattr(mod, name, Int4Linear.from_symmetric(*q4_0(w), 32) if bits == "q4_0"
                            else Int4Linear.from_kquant(*q4_k(w)))
    model = quantize_(model, 8 if layout else bits)
    assert not layout or sum(isinstance(m, Int4Linear) and m.layout == layout for m in model.modules()) == 4 * len(model.layers)
    return model


def q4_k(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """w (N, K) rounded in Q4_K's form (simply: per 32 the range's min and step, those rounded to 6 bits
    of a float16 d, dmin per 256): codes, sc, m (uint8) and d, dmin (float16), w ~ q d sc - dmin m."""
    g = w.float().reshape(w.shape[0], -1, 32)
    low, step = (-g.amin(-1)).clamp(min=0), (g.amax(-1) + (-g.amin(-1)).clamp(min=0)) / 15
    n = w.shape[0]
    d = (step.reshape(n, -1, 8).amax(-1) / 63).half().clamp(min=1e-4)
    dmin = (low.reshape(n, -1, 8).amax(-1) / 63).half().clamp(min=1e-4)
    sc = (step / d.float().repeat_interleave(8, 1)).round().clamp(1, 63)
    m = (low / dmin.float().repeat_interleave(8, 1)).round().clamp(0, 63)
    scale, mins = d.float().repeat_interleave(8, 1) * sc, dmin.float().repeat_interleave(8, 1) * m
    q = ((g + mins[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.uint8).reshape(w.shape)
    return q, sc.to(torch.uint8), m.to(torch.uint8), d, dmin


def q4_0(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) rounded as llama.cpp's Q4_0: per 32 inputs d = (the largest-magnitude weight) / -8 in
    float16, q = round(w / d) + 8 in 0..15. Codes (N, K) uint8 and d (N, K/32) float16."""
    g = w.float().reshape(w.shape[0], -1, 32)
    d = (g.gather(-1, g.abs().argmax(-1, keepdim=True)) / -8).half()
    q = torch.round(g / torch.where(d == 0, 1.0, d.float())).add_(8).clamp_(0, 15)
    return q.to(torch.uint8).reshape(w.shape), d[..., 0]


def dequantize_q4_0(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    n, k = q.shape
    return ((q.float().reshape(n, -1, 32) - 8) * d.float()[..., None]).reshape(n, k)


@needs_native
def test_int4_products_read_torchs_layout():
    from mmsdk.decoder.quantize import Int4Linear, dequantize_int4

    torch.manual_seed(0)
    for n, k, group in [(128, 64, 32), (64, 512, 64), (128, 512, 256), (640, 2048, 128)]:
        codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)  # random codes: from_float's clip search is slow
        m = Int4Linear.from_codes(codes, torch.rand(n, k // group) + 0.5, torch.randn(n, k // group), group)
        w = dequantize_int4(*_codes(m, group))
        for rows in (1, 2, 5, 6, 13):  # one row streams the weight; more run the GEMM, tiles of 4 and their rests
            x = torch.randn(rows, k)
            y = native.int4_linear(x, m.weight, m.scales_and_zeros, group)
            # the rows meet the codes with 8-bit inputs, rounded per 32 (int4_q8.h): exact up to float
            # sums against that rounding, and within 8-bit rounding (~1e-2) of the float product
            assert rel_err(y, q8_groups(x) @ w.T) < 1e-5
            assert rel_err(y, x @ w.T) < 1e-2
            # and torch's own kernel on the same buffers (bfloat16 inputs: ~3e-3), so a misread layout
            # cannot pass by being misread the same way here
            theirs = torch._weight_int4pack_mm_for_cpu(x.bfloat16(), m.weight, group, m.scales_and_zeros).float()
            assert rel_err(y, theirs) < 1e-2


@needs_native
def test_symmetric_int4_products_and_torchs_fallback(monkeypatch):
    """The symmetric layout (GGUF's Q4_0: codes in torch's packing, one float16 d per 32): our kernels
    for one row and a prompt against the float product of the same weights, and the torch fallback
    (no kernels here, or bfloat16 inputs) on the (d, 0) pairs it derives."""
    from mmsdk.decoder.quantize import Int4Linear

    torch.manual_seed(2)
    n, k = 256, 1024
    codes, d = q4_0(torch.randn(n, k))
    m = Int4Linear.from_symmetric(codes, d, 32)
    assert m.symmetric and m.scales.dtype == torch.float16 and m.scales.shape == (k // 32, n)
    assert not hasattr(m, "scales_and_zeros")
    assert torch.equal(_codes(m, 32)[0], codes)  # exactness is the point: a layout read
    w = dequantize_q4_0(codes, d)
    for rows in (1, 6):
        x = torch.randn(rows, k)
        y = m(x)
        assert rel_err(y, q8_groups(x) @ w.T) < 1e-5  # 8-bit inputs per 32, float sums in another order
        with monkeypatch.context() as mp:  # no kernels of ours: torch's, bfloat16 scales and inputs (~4e-3)
            mp.setattr(native, "available", lambda *a: False)
            assert rel_err(m(x), x @ w.T) < 1e-2
        assert rel_err(m(x.bfloat16()).float(), x @ w.T) < 2e-2  # torch's kernel here too


@needs_native
@pytest.mark.parametrize("block", [32, 64])
@pytest.mark.parametrize("layout", ["pairs", "symmetric", "kquant"])
def test_int4_products_read_both_block_widths(block, layout):
    """torch packs 4-bit weights in blocks of 64 channels on AVX-512 CPUs and 32 on AVX2 ones; this
    machine's torch makes one of them, so both are laid out here by hand (`_pack`, the inverse of
    `_codes`) and read by the kernels set to that width, one row, a few and a prompt's."""
    from mmsdk.decoder.quantize import Int4Linear, dequantize_int4

    torch.manual_seed(1)
    n, k, group = 128, 512, 32 if layout == "kquant" else 64
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    sup = None
    if layout == "symmetric":  # one float16 d per (group, channel), no zero: GGUF's Q4_0
        scale = (torch.rand(n, k // group) + 0.5).half()
        sz, zero = scale.T.contiguous(), torch.zeros(n, k // group)
    elif layout == "kquant":  # GGUF's Q4_K: 6-bit sc, m per 32; float16 d, dmin per 256
        sc, mins = (torch.randint(0, 64, (n, k // 32), dtype=torch.uint8) for _ in range(2))
        d, dmin = ((torch.rand(n, k // 256) * 0.01).half() for _ in range(2))
        kq = Int4Linear.from_kquant(codes, sc, mins, d, dmin)
        sz, sup = kq.sub_scales, kq.super_scales
        scale, low = kq.kquant_scale_min()
        zero = 8 * scale - low
    else:
        scale, zero = (torch.rand(n, k // group) + 0.5).bfloat16(), torch.randn(n, k // group).bfloat16()
        sz = torch.stack([scale.T, zero.T], -1).contiguous()
    w = dequantize_int4(codes, scale.float(), zero.float())
    lib = native.library()
    try:
        lib.int4_layout(block)
        for rows in (1, 7, 13):  # one row, a few rows (the block kernel), a prompt (the GEMM's tiles)
            x = torch.randn(rows, k)
            y = native.int4_linear(x, _pack(codes, block), sz, group, sup)
            assert rel_err(y, q8_groups(x) @ w.T) < 1e-5
    finally:
        lib.int4_layout(native.int4_block())


def _pack(q, block):
    """Codes (N, K) -> torch's packed int4 layout with blocks of `block` channels (see `_codes`)."""
    n, k = q.shape
    b = q.reshape(n // block, block, k).permute(0, 2, 1)  # (blocks, K, block)
    return (b[..., :block // 2] | (b[..., block // 2:] << 4)).contiguous().reshape(n, k // 2)


def test_int4_layout_probe_finds_torchs_block():
    """Codes whose value is their channel's number mod 16, packed by torch, read back at the block width
    `native.int4_block` reports: each channel's own codes."""
    from mmsdk.decoder.quantize import pack_int4
    q = (torch.arange(128)[:, None] % 16).expand(128, 64).to(torch.uint8) ^ (torch.arange(64) % 2).to(torch.uint8)
    m = type("Packed", (), {"weight": pack_int4(q), "out_features": 128, "in_features": 64,
                            "scales_and_zeros": torch.zeros(2, 128, 2)})
    assert native.int4_block() in (32, 64)
    assert torch.equal(_codes(m, 32)[0], q)  # exactness is the point: a layout read


def q8_groups(x: torch.Tensor) -> torch.Tensor:
    """x rounded to 8 bits in groups of 32 inputs, one scale (max |x| -> 127) each, as int4_q8.h does."""
    g = x.reshape(*x.shape[:-1], -1, 32)
    top = g.abs().amax(-1, keepdim=True)
    q = torch.round(g * torch.where(top > 0, 127.0 / top, 0.0))
    return (q * (top / 127.0)).reshape(x.shape)


def _codes(m, group):
    """The codes and the (bfloat16-rounded) scales and zeros an `Int4Linear` holds, unpacked."""
    n, k, block = m.out_features, m.in_features, native.int4_block()
    b = m.weight.reshape(n // block, k, block // 2)
    q = torch.cat([b & 15, b >> 4], -1).permute(0, 2, 1).reshape(n, k)  # see int4_linear's notes in the kernel sources
    if getattr(m, "symmetric", False):  # float16 d (K/g, N), no zero
        return q, m.scales.float().T, torch.zeros(n, k // group)
    sz = m.scales_and_zeros.float().transpose(0, 1)  # (N, K/g, 2)
    return q, sz[..., 0], sz[..., 1]


# ---- the row helpers a prompt runs through (norms, GeGLU, QK-norm + RoPE, attention) ----

@needs_native
def test_norm_rows_and_geglu_match_torch_ops():
    torch.manual_seed(0)
    x, y, gain = torch.randn(37, 640) * 3, torch.randn(37, 640), torch.rand(640) + 0.5
    eps_term = (640 * 1e-6) ** 0.5
    ref = x * gain / torch.hypot(x.norm(dim=-1, keepdim=True), torch.tensor(eps_term))
    assert rel_err(native.norm_rows(x, gain, eps_term), ref) < 1e-6
    assert rel_err(native.norm_rows(x, gain, eps_term, add=y), y + ref) < 1e-6
    gate_up = torch.randn(37, 2 * 128) * 4  # tails both ways: gelu's zero and identity ends
    gate, up = gate_up.chunk(2, -1)
    assert (native.geglu(gate_up) - torch.nn.functional.gelu(gate, approximate="tanh") * up).abs().max() < 1e-5


@needs_native
def test_qkv_heads_match_qk_norm_and_rope():
    from mmsdk.decoder.layers import RotaryEmbedding, apply_rope, normalize
    torch.manual_seed(1)
    H, Hkv, D, T = 4, 2, 64, 11
    qkv, gain = torch.randn(1, T, H + 2 * Hkv, D), torch.rand(H + Hkv, D) + 0.5
    cos, sin = RotaryEmbedding(D, 10000.0)(torch.arange(5, 5 + T), torch.float32)
    q, k, v = native.qkv_heads(qkv, H, Hkv, gain, (D * 1e-6) ** 0.5, cos, sin)
    ref = apply_rope(normalize(qkv[:, :, :H + Hkv], gain, 1e-6).transpose(1, 2), cos, sin)
    assert rel_err(q, ref[:, :H]) < 1e-6 and rel_err(k, ref[:, H:]) < 1e-6
    assert torch.equal(v, qkv[:, :, H + Hkv:].transpose(1, 2))


@needs_native
@pytest.mark.parametrize("T,past,window", [(1, 0, None), (13, 0, None), (40, 70, None), (33, 0, 8), (9, 50, 16)])
def test_prompt_attention_matches_masked_softmax(T, past, window):
    """Queries at positions past..past+T-1 over a cache: a full cache (keys 0.. in order) or a
    ring of `window` slots (positions wrapped, empty slots -1) followed by the new keys."""
    from mmsdk.decoder.layers import attend, attention_bias, attention_mask
    torch.manual_seed(T + past)
    H, Hkv, D = 4, 2, 64
    q_pos = torch.arange(past, past + T)
    if window is None:
        k_pos = torch.arange(past + T)
    else:  # the ring as RingCache leaves it (slot p % window holds p), then the chunk's own keys
        ring = torch.full((window,), -1)
        held = torch.arange(max(0, past - window), past)
        ring[held % window] = held
        k_pos = torch.cat([ring, q_pos])
    S = k_pos.shape[0]
    big = torch.randn(1, Hkv, S + 7, D)  # keys as a slice of a longer buffer, as FullCache hands them
    q, k, v = torch.randn(1, H, T, D), big[:, :, :S], torch.randn(1, Hkv, S, D)
    got = native.attend_rows(q, k, v, q_pos, k_pos, window, 0.125)
    ref = attend(q, k, v, attention_bias(attention_mask(q_pos, k_pos, window)), 0.125)
    assert got.shape == (1, T, H * D)
    assert (got - ref.transpose(1, 2).reshape(1, T, H * D)).abs().max() < 1e-5


@needs_native
def test_prompt_through_the_row_helpers_matches_torch_ops(monkeypatch):
    """The whole model on a prompt with the C row helpers and with torch's ops only."""
    from mmsdk.decoder.config import TextConfig
    from mmsdk.decoder.gemma3 import Gemma3Text
    from mmsdk.decoder.kv_cache import make_cache
    torch.manual_seed(2)
    cfg = TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=32, sliding_window=8, query_pre_attn_scalar=32,
                     layer_types=["sliding_attention"] * 3 + ["full_attention"])
    model = Gemma3Text(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    ids = torch.randint(0, 300, (1, 21))

    def run():
        caches = make_cache(cfg)
        with torch.no_grad():  # two chunks: the second attends the rings and the full cache
            first = model(ids[:, :12], caches, torch.arange(12))
            return torch.cat([first, model(ids[:, 12:], caches, torch.arange(12, 21))], 1)

    ours = run()
    monkeypatch.setattr(native, "takes_rows", lambda x: False)
    assert rel_err(ours, run()) < 1e-5


@needs_native
def test_the_ctypes_mirrors_match_the_kernels_structs():
    # fused.py passes _Linear/_Layer by pointer: a field added on one side only would misread every pointer
    from mmsdk.decoder import fused

    lib = native.library()
    assert (ctypes.sizeof(fused.CLinear), ctypes.sizeof(fused._Layer)) == (lib.sizeof_linear(), lib.sizeof_layer())
    fused.check_mirrors()


@needs_native
@pytest.mark.parametrize("K, block", [(1152, 128), (640, 128), (96, None)])
def test_q8_0_rows_round_as_the_tensor_ops_do(K, block):
    """`native.q8_0_to_int8` (a first load's embedding in one pass) against the reference: dequantize,
    rotate, `quantize_int8`. The rotation sums in another order, so a code may land one step away
    where a value sits on a rounding boundary; a wrong block, scale or sign moves most codes."""
    rows = 300
    d = (torch.rand(rows, K // 32) * 0.01 + 1e-4).half()
    codes = torch.randint(-127, 128, (rows, K // 32, 32), dtype=torch.int8)
    raw = torch.cat([d.view(torch.uint8).view(rows, K // 32, 2), codes.view(torch.uint8)], -1).reshape(rows, -1)
    w = (codes.float() * d.float()[..., None]).reshape(rows, K)
    q_ref, s_ref = quantize_int8(rotate(w, block) if block else w)
    q, s = native.q8_0_to_int8(raw.numpy(), K, block)
    assert rel_err(s, s_ref) < 1e-5
    diff = (q.int() - q_ref.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


@needs_native
def test_q4_0_blocks_pack_as_their_codes_do():
    # `native.q4_0_to_int4pack` (a first load's Q4_0 layers in one pass) against decoding the codes and
    # packing them: the same bytes and float16 d (integer codes: exact)
    from mmsdk.decoder.gguf_file import q4_codes
    from mmsdk.decoder.quantize import pack_int4

    N, K = 128, 256
    raw = torch.randint(0, 256, (N, K // 32, 18), dtype=torch.uint8)
    raw[..., :2] = torch.rand(N, K // 32).half().view(torch.uint8).view(N, K // 32, 2)
    raw = raw.reshape(N, -1).numpy()
    packed, d = native.q4_0_to_int4pack(raw, K)
    q, scale, _ = q4_codes(raw, "Q4_0")
    assert torch.equal(packed, pack_int4(q))
    assert torch.equal(d.float(), scale)


def test_the_kernels_for_other_cpus_compile_here(tmp_path):
    """CI hosts differ (AVX2 only, AVX-512 VNNI, AMX): every kernel source must build on each, not only the
    one this CPU runs. Unoptimised (-O0, ~2 s a source), which still checks every intrinsic against its flags."""
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc") or "cc"  # none: an error, as for the kernels this CPU runs
    flags = [f for f in native.COMMON_FLAGS if not f.startswith("-O")]
    for kernel in native.KERNELS:
        if kernel == native.cpu_kernel():
            continue  # built at -O3 by every other test here
        p = subprocess.run([cc, *flags, "-O0", *kernel.cflags, str(native.HERE / kernel.source),
                            "-o", str(tmp_path / f"{kernel.name}.so")], capture_output=True, text=True)
        assert p.returncode == 0, f"{kernel.source} ({kernel.name}) does not build: {p.stderr[-2000:]}"
