"""Quantized modules and the module swap on a tiny random Gemma 3, against the float model."""
import copy

import pytest
import torch
from torch import nn

from mmsdk.decoder.config import TextConfig
from mmsdk.decoder.gemma3 import Gemma3Text
from mmsdk.decoder.kv_cache import make_cache
from mmsdk.decoder.quantize import (HADAMARD_BLOCK, Int4Embedding, Int4Linear, Int8Embedding, Int8Linear,
                                    dequantize_int4, dequantize_int8, hadamard, input_kind, pack_int4, quantize_,
                                    quantize_int4, quantize_int4_symmetric, quantize_int8, quantized_bits, rotate,
                                    unpack_int4)


def tiny_config(**kw) -> TextConfig:
    # widths are multiples of 64 so int4 takes every layer (the CPU packing works in 64-row blocks)
    base = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=8,
                layer_types=("sliding_attention", "sliding_attention", "full_attention"))
    return TextConfig(**{**base, **kw})


def tiny_model(seed=0) -> Gemma3Text:
    torch.manual_seed(seed)
    m = Gemma3Text(tiny_config()).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if "norm" in name else p.shape[-1] ** -0.5))
    return m


def rel_err(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_int8_roundtrip_within_half_step():
    w = torch.randn(96, 64)
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (96,)
    assert (dequantize_int8(q, s) - w).abs().max() <= s.max() / 2 + 1e-6


def test_int4_clip_search_never_worse_than_min_max():
    w = torch.randn(64, 128)
    q, s, z = quantize_int4(w, 32)
    assert q.max() <= 15 and s.shape == z.shape == (64, 4)
    wg = w.reshape(64, 4, 32)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    minmax = torch.round((wg - lo) / ((hi - lo) / 15)) * ((hi - lo) / 15) + lo
    err = (dequantize_int4(q, s, z) - w).square().reshape(64, 4, 32).sum(-1)
    assert (err <= (minmax - wg).square().sum(-1) + 1e-5).all()
    assert err.sum() < 0.9 * (minmax - wg).square().sum()  # the search does find better ranges


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [1, 5, 70])
def test_quantized_linear_matches_its_dequantized_weight(bits, rows):
    # the kernels run in bfloat16: measured relative error ~3e-3; 1e-2 leaves room
    torch.manual_seed(1)
    w, x = torch.randn(128, 64), torch.randn(2, rows, 64)
    lin = nn.Linear(64, 128, bias=False)
    lin.weight.data = w
    holder = nn.Sequential(lin)
    quantize_(holder, bits, 32)
    q = holder[0]
    assert isinstance(q, Int4Linear if bits == 4 else Int8Linear)
    ref = x @ (dequantize_int4(*quantize_int4(w, 32)) if bits == 4 else dequantize_int8(*quantize_int8(w))).T
    y = q(x)
    assert y.shape == (2, rows, 128) and y.dtype == torch.float32
    assert rel_err(y, ref) < 1e-2


def test_int4_falls_back_to_int8_for_shapes_the_kernel_cannot_take():
    holder = nn.Sequential(nn.Linear(64, 96, bias=False))  # 96 rows: not a multiple of 64
    quantize_(holder, 4, 32)
    assert isinstance(holder[0], Int8Linear)


@pytest.mark.parametrize("rotation", [None, 64])
def test_int8_embedding_lookup_and_head(rotation):
    w = torch.randn(256, 64)
    e = Int8Embedding.from_float(w, rotation)
    ids = torch.tensor([[3, 200, 7]])
    assert rel_err(e(ids), w[ids]) < 1e-2
    h = torch.randn(1, 3, 64) * torch.tensor([1.0, 1e-3, 30.0])[:, None]  # each row keeps its own range
    for rows in (h, h[:, 1:2]):  # a prompt, one decoded row
        out = e.as_linear(rows)
        for i in range(rows.shape[1]):
            assert rel_err(out[:, i], rows[:, i] @ w.T) < 1e-2


def test_rotated_head_keeps_an_outlier_channel_apart():
    """The final norm's output has outlier channels; rotated, 8-bit inputs lose much less."""
    w = torch.randn(4096, 256)
    h = torch.randn(8, 256)
    h[:, 5] *= 40.0
    errs = [rel_err(Int8Embedding.from_float(w, r).as_linear(h), h @ w.T) for r in (None, 256)]
    assert errs[1] < errs[0] / 3


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_model_close_to_float(bits):
    float_model = tiny_model()
    qmodel = quantize_(copy.deepcopy(float_model), bits, 32)
    counts = quantized_bits(qmodel)
    assert counts["float"] == 0 and counts["int8"] >= 1
    assert (counts["int4"] > 0) == (bits == 4)
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = float_model.logits(float_model(ids, make_cache(float_model.config), torch.arange(12)))
        out = qmodel.logits(qmodel(ids, make_cache(qmodel.config), torch.arange(12)))
    # measured over 5 random models: relative logit error int8 0.019-0.028, int4 0.20-0.26;
    # top-1 agreement int8 0.92-1.0, int4 0.5-0.83 (random weights are the worst case for int4)
    assert rel_err(out, ref) < (0.05 if bits == 8 else 0.4)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= (0.8 if bits == 8 else 0.4)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_cached_decoding_equals_full_pass(bits):
    m = quantize_(tiny_model(), bits, 32)
    ids = torch.randint(0, 256, (1, 14))
    with torch.no_grad():
        full = m.logits(m(ids, make_cache(m.config), torch.arange(14)))
        caches = make_cache(m.config)
        steps = [m.logits(m(ids[:, :10], caches, torch.arange(10)))]
        for t in range(10, 14):
            steps.append(m.logits(m(ids[:, t:t + 1], caches, torch.tensor([t]))))
    # bf16 activations: one row vs many rows may round differently inside the kernel
    assert rel_err(torch.cat(steps, 1), full) < 2e-2


def test_batch_of_two_matches_singles():
    m = quantize_(tiny_model(), 4, 32)
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        both = m.logits(m(ids, make_cache(m.config, batch=2), torch.arange(9)))
        one = m.logits(m(ids[1:], make_cache(m.config), torch.arange(9)))
    assert rel_err(both[1:], one) < 2e-2


def test_empty_swap_then_assign_reproduces_the_model():
    m = quantize_(tiny_model(), 4, 32)
    with torch.device("meta"):
        skeleton = Gemma3Text(tiny_config())
        quantize_(skeleton, 4, 32, empty=True)
    skeleton.load_state_dict(m.state_dict(), strict=True, assign=True)
    ids = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        a = m.logits(m(ids, make_cache(m.config), torch.arange(6)))
        b = skeleton.logits(skeleton(ids, make_cache(m.config), torch.arange(6)))
    # assign=True shares the very tensors, so this is one code path run twice on one storage: exact.
    assert torch.equal(a, b)


def test_callable_bits_choose_per_layer_and_none_keeps_float():
    m = quantize_(tiny_model(), lambda name, mod: None if "down" in name else 8, 32, embedding_bits=None)
    assert isinstance(m.layers[0].mlp.down_proj, nn.Linear)
    assert isinstance(m.layers[0].attn.qkv_proj, Int8Linear)
    assert type(m.embed).__name__ == "TiedEmbedding"


def test_bad_bits_is_a_value_error():
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        quantize_(tiny_model(), 3, 32)


def test_int8_inputs_are_quantized_per_row():
    """fbgemm quantizes a whole input at once; rows scaled first keep about their own range, so a
    small row beside a 1000x larger one is as exact as alone (per-tensor, it would lose everything)."""
    lin = Int8Linear.from_float(torch.randn(128, 64) * 0.1, int8_inputs=True)
    rows = torch.randn(3, 64)
    rows[1] *= 1000.0
    ref = rows @ dequantize_int8(lin.weight, lin.scales).t()
    with torch.no_grad():
        together = lin(rows)
        alone = torch.cat([lin(rows[i:i + 1]) for i in range(3)])
    for i in range(3):
        assert rel_err(together[i], ref[i]) < 0.02
    for i in range(3):
        assert rel_err(alone[i], ref[i]) < 0.02


def test_int8_modules_match_dequantized_weights_for_prompt_and_one_row():
    w = torch.randn(128, 64) * 0.1
    x = torch.randn(5, 64)
    for int8_inputs in (True, False):
        lin = Int8Linear.from_float(w, int8_inputs=int8_inputs)
        ref = x @ dequantize_int8(lin.weight, lin.scales).t()
        with torch.no_grad():
            assert rel_err(lin(x), ref) < 0.02  # prompt rows
            assert rel_err(lin(x[:1]), ref[:1]) < 0.02  # one decode row


def test_hadamard_is_orthonormal_and_rotation_keeps_the_product():
    h = hadamard(256)
    torch.testing.assert_close(h @ h, torch.eye(256), atol=1e-5, rtol=0)
    w, x = torch.randn(32, 512), torch.randn(4, 512)
    torch.testing.assert_close(rotate(x, 256) @ rotate(w, 256).t(), x @ w.t(), atol=1e-3, rtol=1e-4)


def test_rotation_keeps_8_bit_inputs_exact_despite_outlier_channels():
    """A GeGLU output with a few channels 100x the rest: 8-bit rows round the others to nothing;
    rotated first, each outlier is spread over 256 channels and the product stays close."""
    torch.manual_seed(0)
    w = torch.randn(64, 1024) * 0.03
    x = torch.randn(6, 1024)
    x[:, [3, 700]] *= 100.0
    ref = x @ w.t()
    plain = Int8Linear.from_float(w, int8_inputs=True)
    rotated = Int8Linear.from_float(w, int8_inputs=True, rotation=256)
    with torch.no_grad():
        err_plain, err_rot = rel_err(plain(x), ref), rel_err(rotated(x), ref)
        err_row = rel_err(rotated(x[:1]), ref[:1])  # one decode row takes the same path
    assert err_rot < 0.02 and err_row < 0.02
    assert err_plain > 3 * err_rot


def test_swap_rotates_every_8_bit_input():
    m = quantize_(tiny_model(), 8, embedding_bits=None)
    block = m.layers[0]
    assert (block.attn.o_proj.rotation, block.mlp.down_proj.rotation) == (64, 128)  # the tiny widths
    assert (block.attn.qkv_proj.rotation, block.mlp.gate_up_proj.rotation) == (64, 64)
    assert all(mod.int8_inputs for mod in (block.attn.qkv_proj, block.attn.o_proj, block.mlp.gate_up_proj))
    assert input_kind("down_proj", 6912) == (True, HADAMARD_BLOCK)
    assert input_kind("o_proj", 1024) == (True, HADAMARD_BLOCK)
    assert input_kind("qkv_proj", 640) == (True, 128)
    assert input_kind("qkv_proj", 96) == (False, None)  # too narrow to rotate: float inputs
    assert input_kind("per_layer_input_gate", 640) == (False, None)
    assert input_kind("per_layer_projection", 2048) == (False, None)
    assert input_kind("down_proj", 96) == (False, None)  # no power-of-two block of 64 or more


def test_int4_keeps_q4_k_m_mix_at_8_bits():
    """llama.cpp's Q4_K_M: q/k/v and the down_proj of `use_more_bits` layers keep more bits."""
    from mmsdk.decoder.quant_plan import int4_bits

    n = 18
    assert [i for i in range(n) if int4_bits(f"layers.{i}.mlp.down_proj", n) == 8] == [0, 1, 4, 7, 10, 13, 15, 16, 17]
    assert int4_bits("layers.5.attn.qkv_proj", n) == int4_bits("layers.5.attn.v_proj", n) == 8
    assert int4_bits("layers.5.mlp.gate_up_proj", n) == int4_bits("layers.5.attn.o_proj", n) == 4


# -- 4.5-bit layouts rounded from float, and the 4-bit tied embedding / LM head -------------------------

def _dequantized(m: Int4Linear) -> torch.Tensor:
    """The weight `m` holds, from its own buffers: codes unpacked from torch's packed layout."""
    scale, zero = m.scale_zero()
    return dequantize_int4(unpack_int4(m.weight, torch.arange(m.out_features)), scale, zero)


@pytest.mark.parametrize("shape", [(128, 64), (96, 48), (48, 32)])
def test_pack_int4_writes_torchs_packed_layout(shape):
    # our tensor-op packing must give the bytes torch's converter gives (its int4 kernels read them)
    q = torch.randint(0, 16, shape, dtype=torch.uint8)
    ref = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    assert torch.equal(pack_int4(q), ref)  # integer bytes: exact


def test_unpack_int4_reads_the_packed_codes():
    q = torch.randint(0, 16, (192, 64), dtype=torch.uint8)
    rows = torch.tensor([0, 17, 31, 32, 63, 64, 100, 191])
    assert torch.equal(unpack_int4(pack_int4(q), rows), q[rows])  # integer codes: exact


def test_symmetric_rounding_beats_plain_q4_0():
    """Q4_0 from float (`quantize_int4_symmetric`): codes in range, d float16, and the scale search
    at least as close as Q4_0's plain d = peak / -8 in every group (it is one of the trials; 1e-4
    for the float16 rounding of d), and closer overall. Gaussian weights: relative RMS error 0.081
    measured; a wrong sign or an off-by-one code shift gives > 0.2."""
    torch.manual_seed(3)
    w = torch.randn(128, 256)
    q, d = quantize_int4_symmetric(w, 32)
    assert q.max() <= 15 and d.dtype == torch.float16 and d.shape == (128, 8)
    got = (q.float().reshape(128, 8, 32) - 8) * d.float()[..., None]
    wg = w.reshape(128, 8, 32)
    peak = wg.gather(-1, wg.abs().argmax(-1, keepdim=True))
    d0 = (peak / -8).half().float()
    plain = (wg / d0).round().clamp(-8, 7) * d0
    err, err0 = (got - wg).square().sum(-1), (plain - wg).square().sum(-1)
    assert (err <= err0 * (1 + 1e-4) + 1e-7).all() and err.sum() < 0.97 * err0.sum()
    assert rel_err(got.reshape(128, 256), w) < 0.085


@pytest.mark.parametrize("layout, bound", [("symmetric", 0.085), ("kquant", 0.076), ("pairs", 0.075)])
def test_int4_layouts_from_float(layout, bound):
    """Each layout rounded from float: the weight it holds is within its measured error (relative
    RMS on Gaussian weights: symmetric 0.081, kquant 0.073, pairs 0.072), and the kernel computes
    with that weight (8-bit input rows: ~4e-3 measured)."""
    torch.manual_seed(4)
    w = torch.randn(128, 512)
    m = Int4Linear.from_float(w, 32, layout)
    assert m.layout == layout
    held = _dequantized(m)
    assert rel_err(held, w) < bound
    x = torch.randn(3, 512)
    assert rel_err(m(x), x @ held.T) < 1e-2


def test_kquant_falls_back_where_256_inputs_do_not_divide():
    assert Int4Linear.from_float(torch.randn(64, 96), 32, "kquant").layout == "pairs"


@pytest.mark.parametrize("layout", ["symmetric", "kquant"])
def test_int4_embedding_rows_and_head(layout):
    """The 4-bit tied embedding: a looked-up row is exactly the held weight's row (the same numbers
    unpacked), and the head is the held weight's product to the kernel's 8-bit input rounding
    (~4e-3), and the float head's to 4-bit rounding (< 0.085)."""
    torch.manual_seed(5)
    w = torch.randn(640, 256)
    e = Int4Embedding.from_float(w, 32, layout)
    held = _dequantized(e)
    ids = torch.tensor([[3, 0, 639, 64, 3]])
    assert e(ids).shape == (1, 5, 256)
    assert torch.equal(e(ids)[0], held[ids[0]])  # the same dequantization, row by row
    h = torch.randn(2, 4, 256)
    assert rel_err(e.as_linear(h), h @ held.T) < 1e-2
    assert rel_err(e.as_linear(h), h @ w.T) < 0.085


@pytest.mark.parametrize("layout", ["pairs", "symmetric", "kquant"])
def test_int4_embedding_rounded_in_blocks_of_rows_is_rounded_whole(layout):
    """A table taller than one block of rows (`int4_row_block`: 2048 rows 256 wide) is filled block by
    block into the right channels of every layout's buffers (pairs hold channels second to last)."""
    torch.manual_seed(6)
    w = torch.randn(2048 + 64, 256)
    e = Int4Embedding.from_float(w, 32, layout)
    whole = Int4Linear.from_float(w, 32, layout)
    assert e.layout == whole.layout == layout
    assert all(torch.equal(a, b) for a, b in zip(e.buffers(), whole.buffers()))  # the same rounding, by parts


def test_quantize_swaps_in_a_4bit_head():
    """`embedding_bits=4`: the tied embedding becomes an `Int4Embedding` in the layers' layout, and
    the quantized model's logits stay near the float model's: relative error 0.17 measured (4-bit
    rounding enters twice, in the looked-up rows and the head), wrong rows or scales give > 1."""
    m = tiny_model()
    ids = torch.tensor([[1, 5, 9, 200]])
    q = quantize_(copy.deepcopy(m), 8, embedding_bits=4, layout="symmetric")
    assert isinstance(q.embed, Int4Embedding) and q.embed.layout == "symmetric"
    with torch.inference_mode():
        ref = m.logits(m(ids, make_cache(m.config), torch.arange(4)))
        out = q.logits(q(ids, make_cache(q.config), torch.arange(4)))
    assert rel_err(out, ref) < 0.25
