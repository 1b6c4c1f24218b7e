"""Gemma 4 at 4 bits: the streamed quantized load (`gemma3n_loader.load_quantized` with
`gemma4_loader.GEMMA4`, what `mmsdk.load(folder, quantize=..., offload="ple")` runs for a Gemma 4
folder) and the fused decode step it swaps in (`gemma4_fast.FastBlock`, `gemma4_step.h`), on one
checkpoint with the real structure at test size: per-layer inputs, KV sharing, wider global layers
with proportional RoPE whose values are their keys, a ring cache that wraps (window 4 < the 9-token
prompt) and full caches."""
import copy

import pytest
import torch
from gemma3n_fixtures import assert_layers_match, prefill_then_steps
from gemma4_fixtures import E2B_LIKE, hf_text_model, save
from mmsdk.decoder import native
from mmsdk.decoder.gemma3n_loader import INT4_LAYOUT, load_quantized, plan_int4
from mmsdk.decoder.gemma4 import Block
from mmsdk.decoder.gemma4_fast import FastBlock, accelerate_
from mmsdk.decoder.loader import load_text
from mmsdk.decoder.offload import MappedPerLayerEmbedding
from mmsdk.decoder.quantize import Int4Embedding, Int4Linear, quantize_

import mmsdk

pytestmark = pytest.mark.usefixtures("mmsdk_cache")  # each test its own empty cache folder
needs_kernels = pytest.mark.skipif(not native.available("gemma4_layer_step"),
                                   reason="CPU has neither AVX-512 VNNI nor AVX2 + FMA for our kernels")

# 256 wide: the projections reading the residual stream take Q4_K's super-blocks of 256 inputs; the
# narrower ones (o_proj, down_proj, the per-layer projection), multiples of 64, the pairs layout: every
# projection is 4-bit, as the fused step takes them
TEXT = dict(E2B_LIKE, hidden_size=256, hidden_size_per_layer_input=64, intermediate_size=128)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save(hf_text_model(TEXT, seed=7), tmp_path_factory.mktemp("g4_quantized"))


@pytest.fixture(scope="module")
def in_memory(checkpoint):
    """The float model quantized in memory as the load quantizes it, with the load's swaps."""
    float_model = load_text(checkpoint).model
    return accelerate_(quantize_(float_model, plan_int4(float_model, "int4").get, 32, embedding_bits=4,
                                 layout=INT4_LAYOUT))


def _run(model):
    return prefill_then_steps(model, steps=4, seed=3, stride=13, vocab=512)


def test_streamed_matches_quantizing_in_memory(checkpoint, in_memory, tmp_path):
    """Rounding is per row, so reading a tensor (or the embedding a block of rows) at a time gives the
    in-memory codes; logits differ only by kernel summation order (1e-3 of ~30-wide soft-capped logits),
    where one wrongly mapped or rounded layer (a swapped k/v, a global layer's wider head) moves them by
    O(1)."""
    loaded = load_quantized(checkpoint, "int4", offload="ple")
    model = loaded.model
    assert loaded.quantization == "int4"
    layouts = {m.layout for m in model.modules() if isinstance(m, Int4Linear)}
    assert layouts == {"kquant", "pairs"} and isinstance(model.embed, Int4Embedding) and model.embed.layout == "kquant"
    assert isinstance(model.ple, MappedPerLayerEmbedding)
    assert not any(name.startswith("ple.") for name, _ in model.named_parameters())
    assert all(type(layer) is FastBlock for layer in model.layers)
    out, ref = _run(model), _run(in_memory)
    assert torch.allclose(out, ref, rtol=0, atol=1e-3), (out - ref).abs().max()

    files = list((tmp_path / "cache" / "weights").glob("*.safetensors"))
    assert len(files) == 1
    # A later load maps the cache (nothing rewritten), here through the public path.
    asst = mmsdk.load(checkpoint, quantize="int4", offload="ple")
    assert list((tmp_path / "cache" / "weights").glob("*.safetensors")) == files
    assert asst.info.family == "gemma4" and asst.info.quantization == "int4"
    assert isinstance(asst.model.ple, MappedPerLayerEmbedding)
    assert torch.equal(_run(asst.model), out)  # the same path run twice
    assert isinstance(asst.generate("w1 w2 w3", max_tokens=3), str)


def test_int8_stays_near_the_float_load(checkpoint):
    """int8 streamed against the float32 load: relative RMS logit error under 0.2 (int8 rounding), far
    under the 1.4 of logits that share nothing but their scale (what a misplaced weight gives; 4-bit's
    own error on this tiny random stack is ~0.75, too near that to tell, hence the test above)."""
    want = _run(load_text(checkpoint).model)
    out = _run(load_quantized(checkpoint, "int8", offload="ple").model)
    err = ((out - want).norm() / want.norm()).item()
    assert err < 0.2, err


@needs_kernels
def test_fused_step_matches_the_reference_layer_by_layer(in_memory):
    """Each layer's decoded output from the C step against `Block.forward` given the same input and caches
    (the prompt through both first: prompts run the reference). Layer by layer, because the 8-bit input
    rounding of the products can turn a reordered float sum (1e-7) into a flipped code that later layers
    grow; one layer stays within 1e-4 of its output's size, while a missed output scale, a rotated value
    or the wrong cache slot moves it by 1e-1 or more."""
    fast = in_memory
    ref = copy.deepcopy(fast)
    for layer in ref.layers:
        layer.__class__ = Block
    assert all(type(layer) is FastBlock and layer._plan() is not None for layer in fast.layers)
    assert any(layer._plan().values_are_keys for layer in fast.layers)  # the global layers with k = v
    assert_layers_match(ref, fast, _run)


@needs_kernels
def test_float_projections_keep_the_reference(checkpoint):
    """A layer whose projections are float (not what the call takes) runs `Block.forward` itself."""
    fast = accelerate_(load_text(checkpoint).model)
    assert all(type(layer) is FastBlock and layer._plan() is None for layer in fast.layers)
    plain = copy.deepcopy(fast)
    for layer in plain.layers:
        layer.__class__ = Block
    want, got = _run(plain), _run(fast)
    # the same ops; torch's float GEMVs may round by their buffers' alignment, a wrong path by O(1)
    assert torch.allclose(got, want, rtol=0, atol=1e-4), (got - want).abs().max()
