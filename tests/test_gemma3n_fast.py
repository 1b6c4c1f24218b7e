"""`gemma3n_fast.FastBlock`: a decoded token through a Gemma 3n layer in one C call (`gemma3n_step.h`)
against the reference `gemma3n.Block` on the same 4-bit weights, with the real structure at test size
(4 AltUp streams, LAuReL, the sparse first layers, KV sharing, ring and full caches)."""
import copy

import pytest
import torch
from gemma3n_fixtures import (
    assert_layers_match,
    hf_text_model,
    prefill_then_steps,
    save,
)
from mmsdk.decoder import native
from mmsdk.decoder.gemma3n import Block
from mmsdk.decoder.gemma3n_fast import FastBlock, accelerate_
from mmsdk.decoder.gemma3n_loader import INT4_LAYOUT, plan_int4
from mmsdk.decoder.loader import load_text
from mmsdk.decoder.quantize import quantize_

pytestmark = pytest.mark.skipif(not native.available("gemma3n_layer_step"),
                                reason="CPU has neither AVX-512 VNNI nor AVX2 + FMA for our kernels")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # every width a multiple of 64, so every projection is 4-bit on either block width (the call takes
    # int8 or 4-bit ones); window 4 < the 9-token prompt: the ring wraps while decoding
    return save(hf_text_model(seed=2, hidden_size=128, hidden_size_per_layer_input=64, laurel_rank=64,
                              intermediate_size=[128] * 10), tmp_path_factory.mktemp("g3n_fast"))


@pytest.fixture(scope="module")
def models(folder):
    float_model = load_text(folder).model
    fast = accelerate_(quantize_(float_model, plan_int4(float_model, "int4").get, 32, embedding_bits=4,
                                 layout=INT4_LAYOUT))
    ref = copy.deepcopy(fast)
    for layer in ref.layers:
        layer.__class__ = Block
    return ref, fast


def test_fused_step_matches_the_reference_layer_by_layer(models):
    """Each layer's decoded streams from the C step against `Block.forward` given the same input streams
    and caches (a prompt through both first: prompts run the reference). Layer by layer, because the
    8-bit input rounding of the products can turn a reordered float sum (1e-7) into a flipped code
    that later layers grow to 0.1 of the logits; one layer stays within 1e-6 of its output's size
    (measured 3e-7), while a 10% error in AltUp's router scale moves it by 1e-2."""
    ref, fast = models
    assert all(type(layer) is FastBlock and layer._plan() is not None for layer in fast.layers)
    assert_layers_match(ref, fast, lambda m: prefill_then_steps(m, steps=4, seed=3, stride=13))


def test_float_projections_keep_the_reference(folder):
    """A layer whose projections are float (not what the call takes) runs `Block.forward` itself."""
    fast = accelerate_(load_text(folder).model)
    assert all(type(layer) is FastBlock and layer._plan() is None for layer in fast.layers)
    plain = copy.deepcopy(fast)
    for layer in plain.layers:
        layer.__class__ = Block
    want, got = prefill_then_steps(plain, steps=2, seed=4, stride=7), prefill_then_steps(fast, steps=2, seed=4, stride=7)
    # the same ops; torch's float GEMVs may round by their buffers' alignment (7e-6 seen), a wrong path by O(1)
    assert torch.allclose(got, want, rtol=0, atol=1e-4), (got - want).abs().max()
