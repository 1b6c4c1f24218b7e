"""GPTQ on one layer: with correlated inputs it keeps the layer's outputs closer than rounding each
weight to nearest, which is its whole point."""
import torch

from mmsdk.decoder.gptq import calibration_text, gptq_int4, input_grams
from mmsdk.decoder.quantize import Int4Linear


def test_gptq_output_error_is_below_rounding_to_nearest_on_correlated_inputs():
    torch.manual_seed(0)
    n_in, n_out = 256, 128
    basis = torch.randn(32, n_in)

    def inputs(n):  # near a 32-dimensional subspace, as a layer's inputs mostly are
        return torch.randn(n, 32) @ basis + 0.1 * torch.randn(n, n_in)

    calib, held_out = inputs(2048), inputs(512)
    w = torch.randn(n_out, n_in) / n_in ** 0.5
    layer = torch.nn.Linear(n_in, n_out, bias=False)
    layer.weight.data.copy_(w)
    grams = input_grams(layer, [lambda: layer(calib)], {""})
    ref = held_out @ w.t()
    with torch.inference_mode():
        err_rtn = float((Int4Linear.from_float(w, 32)(held_out) - ref).norm() / ref.norm())
        err_gptq = float((gptq_int4(w, grams[""], 32)(held_out) - ref).norm() / ref.norm())
    assert err_gptq < 0.5 * err_rtn, (err_gptq, err_rtn)  # measured 0.018 vs 0.072


def test_gram_of_inputs_sums_over_calls():
    layer = torch.nn.Linear(8, 4, bias=False)
    a, b = torch.randn(5, 8), torch.randn(3, 8)
    grams = input_grams(layer, [lambda: layer(a), lambda: layer(b)], {""})
    torch.testing.assert_close(grams[""], a.t() @ a + b.t() @ b)


def test_calibration_text_is_prose_from_the_installed_stdlib():
    from pydoc_data.topics import topics

    text = calibration_text()
    assert len(text) > 50_000
    assert topics["assert"][:200] not in text  # not the corpus perplexity is measured on


def test_a_gram_matrix_cholesky_cannot_take_falls_back_to_rounding_to_nearest(caplog):
    w = torch.randn(64, 64)
    gram = torch.eye(64)
    gram[3, 5] = float("nan")  # what non-finite activations leave behind
    with caplog.at_level("WARNING"):
        got = gptq_int4(w, gram, 32)
    assert "rounding to nearest" in caplog.text
    # The fallback is Int4Linear.from_float itself: the same integer codes, so exact.
    assert torch.equal(got.weight, Int4Linear.from_float(w, 32).weight)


def test_layers_whose_gram_matrices_exceed_the_budget_take_more_passes(monkeypatch):
    from mmsdk.decoder import gptq

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 128), torch.nn.Linear(128, 64))
    assert gptq._passes(model, ["0", "1", "2"]) == [["0", "1", "2"]]
    monkeypatch.setattr(gptq, "GRAM_BUDGET", 4 * 64 * 64 * 2)  # two 64-wide inputs, not the 128-wide one
    assert gptq._passes(model, ["2", "1", "0"]) == [["0", "1"], ["2"]]


def test_c_block_rounding_matches_the_torch_loop():
    """`native.gptq_block` (each row's columns in C) against the torch loop it replaces, on one block of a
    real GPTQ run: the same codes but for near-ties, errors to float32 rounding; a wrong column order,
    sign or update moves most codes."""
    from mmsdk.decoder import native
    from mmsdk.decoder.gptq import gptq_block_reference
    from mmsdk.decoder.quantize import quantize_int4

    if not native.available("gptq_block"):
        import pytest

        pytest.skip("CPU has neither AVX-512 VNNI nor AVX2 + FMA (the kernels' instructions)")
    torch.manual_seed(0)
    w = torch.randn(96, 128) / 128 ** 0.5
    x = torch.randn(512, 16) @ torch.randn(16, 128) + 0.1 * torch.randn(512, 128)
    h = x.t() @ x
    h.diagonal().add_(0.01 * h.diagonal().mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    _, scales, zeros = quantize_int4(w, 32)
    groups = torch.arange(128) // 32
    s, z = scales[:, groups].contiguous(), zeros[:, groups].contiguous()
    codes, errs = native.gptq_block(w.clone(), s, z, hinv.contiguous())
    ref_codes, ref_errs = gptq_block_reference(w.clone(), s, z, hinv)
    assert (codes != ref_codes).float().mean() <= 2e-3
    same = (codes == ref_codes).all(1)  # rows with no near-tie: every error as torch's
    assert same.float().mean() > 0.8
    torch.testing.assert_close(errs[same], ref_errs[same], rtol=1e-4, atol=1e-5)
