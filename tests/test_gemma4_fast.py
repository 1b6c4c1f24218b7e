"""`gemma4_fast.FastBlock`: a decoded token through a Gemma 4 layer in one C call (`gemma4_step.h`)
against the reference `gemma4.Block` on the same 4-bit weights, with the real structure at test size
(per-layer inputs, KV sharing, wider global layers with proportional RoPE whose values are their keys,
a ring cache that wraps and full caches)."""
import copy

import pytest
import torch

from gemma3n_fixtures import prefill_then_steps
from gemma4_fixtures import E2B_LIKE, hf_text_model, save
from mmsdk.decoder import native
from mmsdk.decoder.gemma3n_loader import INT4_LAYOUT, plan_int4
from mmsdk.decoder.gemma4 import Block
from mmsdk.decoder.gemma4_fast import FastBlock, accelerate_
from mmsdk.decoder.loader import load_text
from mmsdk.decoder.quantize import quantize_

pytestmark = pytest.mark.skipif(not native.available("gemma4_layer_step"),
                                reason="CPU has neither AVX-512 VNNI nor AVX2 + FMA for our kernels")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # every width a multiple of 64, so every projection is 4-bit on either block width (the call takes
    # int8 or 4-bit ones); window 4 < the 9-token prompt: the ring wraps while decoding
    text = dict(E2B_LIKE, hidden_size=128, hidden_size_per_layer_input=64, intermediate_size=128)
    return save(hf_text_model(text, seed=6), tmp_path_factory.mktemp("g4_fast"))


def _steps(model):
    return prefill_then_steps(model, steps=4, seed=3, stride=13, vocab=512)


def test_fused_step_matches_the_reference_layer_by_layer(folder):
    """Each layer's decoded output from the C step against `Block.forward` given the same input and caches
    (a 9-token prompt through both first: prompts run the reference). Layer by layer, because the 8-bit
    input rounding of the products can turn a reordered float sum (1e-7) into a flipped code that later
    layers grow; one layer stays within 1e-4 of its output's size, while a missed output scale, a
    rotated value or the wrong cache slot moves it by 1e-1 or more."""
    float_model = load_text(folder).model
    fast = accelerate_(quantize_(float_model, plan_int4(float_model, "int4").get, 32, embedding_bits=4,
                                 layout=INT4_LAYOUT))
    ref = copy.deepcopy(fast)
    for layer in ref.layers:
        layer.__class__ = Block
    assert all(type(layer) is FastBlock and layer._plan() is not None for layer in fast.layers)
    assert any(layer._plan().values_are_keys for layer in fast.layers)  # the global layers with k = v
    seen = {}

    def record(tag, i):
        def hook(mod, args, out):
            seen.setdefault((tag, i), []).append((args[0], out))
        return hook

    def replay(i):  # the reference's input for this layer and step
        def hook(mod, args):
            return (seen[("ref", i)][len(seen.get(("fast", i), []))][0], *args[1:])
        return hook

    hooks = []
    for i, (a, b) in enumerate(zip(ref.layers, fast.layers)):
        hooks += [a.register_forward_hook(record("ref", i)), b.register_forward_pre_hook(replay(i)),
                  b.register_forward_hook(record("fast", i))]
    try:
        _steps(ref)
        _steps(fast)
    finally:
        for h in hooks:
            h.remove()
    for i in range(len(ref.layers)):
        steps = list(zip(seen[("ref", i)], seen[("fast", i)]))
        assert len(steps) == 5  # the prompt, then 4 decoded tokens
        for (_, want), (_, got) in steps[1:]:
            assert got.shape == want.shape
            assert (got - want).abs().max() <= 1e-4 * want.abs().max(), (i, (got - want).abs().max())
    # and the logits of the whole stack: within the 8-bit input rounding's spread, O(1) for a wrong layer
    assert (_steps(fast) - _steps(ref)).abs().max() < 0.05


def test_float_projections_keep_the_reference(folder):
    """A layer whose projections are float (not what the call takes) runs `Block.forward` itself."""
    fast = accelerate_(load_text(folder).model)
    assert all(type(layer) is FastBlock and layer._plan() is None for layer in fast.layers)
    plain = copy.deepcopy(fast)
    for layer in plain.layers:
        layer.__class__ = Block
    want, got = _steps(plain), _steps(fast)
    # the same ops; torch's float GEMVs may round by their buffers' alignment, a wrong path by O(1)
    assert torch.allclose(got, want, rtol=0, atol=1e-4), (got - want).abs().max()
