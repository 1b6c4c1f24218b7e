"""Quantized Gemma 3n loads streamed from the checkpoint (`gemma3n_loader.load_quantized`, what
`mmsdk.load(folder, quantize=..., offload="ple")` runs): the same weights as quantizing the float
model in memory, the per-layer table a map of the checkpoint file, the cache mapped on a second load."""
import pytest
import torch

import mmsdk
from gemma3n_fixtures import hf_text_model, prefill_then_steps, save
from mmsdk.decoder.gemma3n_fast import AltUpRows, accelerate_
from mmsdk.decoder.gemma3n_loader import INT4_LAYOUT, load_quantized, plan_int4
from mmsdk.decoder.loader import load_text
from mmsdk.decoder.offload import MappedPerLayerEmbedding
from mmsdk.decoder.quantize import Int4Embedding, Int4Linear, Int8Linear, quantize_
from mmsdk.errors import InputError


pytestmark = pytest.mark.usefixtures("mmsdk_cache")  # each test its own empty cache folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # 256 wide: the layers reading the residual stream take Q4_K's super-blocks of 256 inputs; the
    # narrower ones (o_proj, down_proj) fall back to the pairs layout, so both are streamed
    return save(hf_text_model(seed=5, hidden_size=256), tmp_path_factory.mktemp("g3n_stream"))


def _run(model):
    return prefill_then_steps(model, steps=3, seed=11, stride=13)


def _mapped_file(address: int) -> str | None:
    """The file mapped at `address` in this process, from /proc/self/maps."""
    for line in open("/proc/self/maps"):
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= address < hi:
            return parts[5] if len(parts) > 5 else None
    return None


def loaded_shard(folder):
    (shard,) = folder.glob("*.safetensors")
    return shard.resolve()


def test_streamed_matches_quantizing_in_memory(checkpoint, tmp_path):
    """Rounding is per row, so reading a tensor (or the embedding a block of rows) at a time gives
    the in-memory codes; logits differ only by kernel summation order (1e-3 of ~30-wide soft-capped
    logits), where one wrongly mapped or rounded layer moves them by O(1). int4 is every layer and
    the embedding / LM head at 4 bits (Q4_K where 256 inputs divide, pairs elsewhere), AltUp's
    4-wide maps float (run as broadcast sums, `gemma3n_fast`)."""
    float_model = load_text(checkpoint).model
    # the same swap as the load's: 8-bit input rounding turns AltUp's reordered sums (1e-6) into 0.1
    ref = _run(accelerate_(quantize_(float_model, plan_int4(float_model, "int4").get, 32, embedding_bits=4,
                                     layout=INT4_LAYOUT)))
    loaded = load_quantized(checkpoint, "int4", offload="ple")
    model = loaded.model
    assert loaded.quantization == "int4" and loaded.quantized
    layouts = {m.layout for m in model.modules() if isinstance(m, Int4Linear)}
    assert layouts == {"kquant", "pairs"} and isinstance(model.embed, Int4Embedding) and model.embed.layout == "kquant"
    assert not any(isinstance(m, Int8Linear) for name, m in model.named_modules() if ".altup." in name)
    assert all(type(layer.altup) is AltUpRows for layer in model.layers)
    # The table is the checkpoint file's own pages (a map of it), not a copy in memory.
    assert isinstance(model.ple, MappedPerLayerEmbedding)
    assert _mapped_file(model.ple.table.data_ptr()) == str(loaded_shard(checkpoint))
    assert not any(name.startswith("ple.") for name, _ in model.named_parameters())
    out = _run(model)
    assert torch.allclose(out, ref, rtol=0, atol=1e-3), (out - ref).abs().max()

    files = list((tmp_path / "cache" / "weights").glob("*.safetensors"))
    assert len(files) == 1
    # Later loads map the cache (nothing rewritten), here through the public path.
    with pytest.raises(InputError, match="offload='layers' streams float weights only"):
        mmsdk.load(checkpoint, quantize="int4", offload="layers", max_memory=10**9)
    asst = mmsdk.load(checkpoint, quantize="int4", offload="ple")
    assert list((tmp_path / "cache" / "weights").glob("*.safetensors")) == files
    assert _mapped_file(asst.model.layers[0].mlp.up_proj.weight.data_ptr()) == str(files[0].resolve())
    assert asst.info.quantization == "int4" and isinstance(asst.model.ple, MappedPerLayerEmbedding)
    assert torch.equal(_run(asst.model), out)  # the same path run twice
    assert isinstance(asst.generate("w1 w2 w3", max_tokens=3), str)


def test_altup_rows_match_the_reference(checkpoint):
    """`gemma3n_fast.AltUpRows` (broadcast sums for a few rows) against `AltUp`'s matmuls on the float
    model: the same sums in another order, so within float32 rounding (1e-4 of logits ~30 wide; a
    transposed coefficient map moves them by O(1)); a prompt of 9 rows and decoded tokens both take
    the rows path. An int8 map (an older cache's) is dequantized into a float one."""
    import copy

    from mmsdk.decoder.quantize import Int8Linear as I8

    model = load_text(checkpoint).model
    ref = _run(model)
    fast = accelerate_(copy.deepcopy(model))
    assert all(type(layer.altup) is AltUpRows for layer in fast.layers)
    assert torch.allclose(_run(fast), ref, rtol=0, atol=1e-4)
    old = copy.deepcopy(model)
    for layer in old.layers:
        layer.altup.correction_coefs = I8.from_float(layer.altup.correction_coefs.weight)
    accelerate_(old)
    assert all(type(layer.altup) is AltUpRows for layer in old.layers)
    assert torch.allclose(_run(old), ref, rtol=0, atol=0.05)  # int8 rounding of a 4x4 map
