"""Quantized Gemma 4 loads streamed from the checkpoint (`gemma3n_loader.load_quantized` with
`gemma4_loader.GEMMA4`, what `mmsdk.load(folder, quantize=..., offload="ple")` runs for a Gemma 4
folder): the weights of quantizing the float model in memory, the per-layer table a map of the
checkpoint file, the weight cache mapped on a second load."""
import pytest
import torch

import mmsdk
from gemma3n_fixtures import prefill_then_steps
from gemma4_fixtures import E2B_LIKE, hf_text_model, save
from mmsdk.decoder.gemma3n_loader import INT4_LAYOUT, load_quantized, plan_int4
from mmsdk.decoder.gemma4_fast import accelerate_
from mmsdk.decoder.loader import load_text
from mmsdk.decoder.offload import MappedPerLayerEmbedding
from mmsdk.decoder.quantize import Int4Embedding, Int4Linear, quantize_

pytestmark = pytest.mark.usefixtures("mmsdk_cache")  # each test its own empty cache folder

# 256 wide: the projections reading the residual stream take Q4_K's super-blocks of 256 inputs; the
# narrower ones (o_proj, down_proj, the per-layer projection) fall back to the pairs layout
TEXT = dict(E2B_LIKE, hidden_size=256, hidden_size_per_layer_input=32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save(hf_text_model(TEXT, seed=7), tmp_path_factory.mktemp("g4_stream"))


def _run(model):
    return prefill_then_steps(model, steps=3, seed=11, stride=13, vocab=512)


def test_streamed_matches_quantizing_in_memory(checkpoint, tmp_path):
    """Rounding is per row, so reading a tensor (or the embedding a block of rows) at a time gives the
    in-memory codes; logits differ only by kernel summation order (1e-3 of ~30-wide soft-capped logits),
    where one wrongly mapped or rounded layer (a swapped k/v, a global layer's wider head) moves them by
    O(1)."""
    float_model = load_text(checkpoint).model
    ref = _run(accelerate_(quantize_(float_model, plan_int4(float_model, "int4").get, 32, embedding_bits=4,
                                     layout=INT4_LAYOUT)))
    loaded = load_quantized(checkpoint, "int4", offload="ple")
    model = loaded.model
    assert loaded.quantization == "int4"
    layouts = {m.layout for m in model.modules() if isinstance(m, Int4Linear)}
    assert layouts == {"kquant", "pairs"} and isinstance(model.embed, Int4Embedding) and model.embed.layout == "kquant"
    assert isinstance(model.ple, MappedPerLayerEmbedding)
    assert not any(name.startswith("ple.") for name, _ in model.named_parameters())
    out = _run(model)
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
    """int8 streamed against the float32 load: relative RMS logit error {int8 rounding, ~0.05 here},
    far under the 1.4 of logits that share nothing but their scale (what a misplaced weight gives;
    4-bit's own error on this tiny random stack is ~0.75, too near that to tell, hence the test above)."""
    want = _run(load_text(checkpoint).model)
    out = _run(load_quantized(checkpoint, "int8", offload="ple").model)
    err = ((out - want).norm() / want.norm()).item()
    assert err < 0.2, err
