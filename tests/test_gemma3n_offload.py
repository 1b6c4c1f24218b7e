"""offload="ple" and offload="layers" compute what the in-memory model computes."""
import pytest
import torch

from gemma3n_fixtures import hf_text_model, prefill_then_steps, save
from mmsdk.decoder.config import TextConfig
from mmsdk.decoder.gemma3 import Gemma3Text
from mmsdk.decoder.gemma3n_loader import load_gemma3n
from mmsdk.decoder.loader import load_text
from mmsdk.decoder.offload import MappedPerLayerEmbedding, apply_offload
from mmsdk.errors import InputError


pytestmark = pytest.mark.usefixtures("mmsdk_cache")  # each test its own empty cache folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save(hf_text_model(seed=3), tmp_path_factory.mktemp("g3n_off"))


def _run(model, vocab=384):
    return prefill_then_steps(model, steps=4, seed=7, stride=11, vocab=vocab)


def test_ple_mapped_from_the_checkpoint(checkpoint):
    ref = _run(load_text(checkpoint).model)
    model = load_gemma3n(checkpoint, offload="ple").model
    assert isinstance(model.ple, MappedPerLayerEmbedding)
    assert not any("ple." in name for name, _ in model.named_parameters())
    # the mapped table's rows are the file's bytes, but the model around them is another allocation (kernels
    # may sum in another order); a wrong or misaligned row moves the logits by O(1)
    torch.testing.assert_close(_run(model), ref, rtol=1e-5, atol=1e-4)


def test_ple_offload_of_a_loaded_model_writes_the_cache_file(checkpoint, tmp_path):
    loaded = load_text(checkpoint)
    ref = _run(loaded.model)
    apply_offload(loaded, "ple")
    assert list((tmp_path / "cache" / "offload").glob("ple-*.safetensors"))
    torch.testing.assert_close(_run(loaded.model), ref, rtol=1e-5, atol=1e-4)  # as above


def _close(out, ref):
    """Streamed weights sit at other addresses (other alignment) than the in-memory ones, and
    BLAS/oneDNN may pick other kernels, with another summation order, for them: the last bits
    differ on some CPUs. A layer run with the wrong or a stale buffer moves logits by O(1)."""
    return torch.allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_layers_stream_under_budget_gemma3n(checkpoint):
    ref = _run(load_text(checkpoint).model)
    model = load_gemma3n(checkpoint, offload="layers", max_memory=900_000).model
    streamer = model.layer_streamer
    assert 0 < len(streamer.streamed) < len(model.layers) and streamer.resident_bytes <= 900_000
    assert _close(_run(model), ref)
    assert _close(_run(model), ref)  # a second pass over the ring of buffers


def test_layers_stream_gemma3():
    cfg = TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=7, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=4)
    torch.manual_seed(0)
    model = Gemma3Text(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    ref = _run(model, vocab=256)
    layer_bytes = sum(p.numel() * 4 for p in model.layers[0].parameters())
    apply_offload(model, "layers", max_memory=256 * 64 * 4 + 64 * 4 + 3 * layer_bytes)
    assert len(model.layer_streamer.streamed) == 6
    assert _close(_run(model, vocab=256), ref)


def test_budget_too_small_and_bad_modes_say_why(checkpoint):
    loaded = load_text(checkpoint)
    with pytest.raises(ValueError, match="max_memory=1000 bytes is below"):
        apply_offload(loaded, "layers", max_memory=1000)
    with pytest.raises(ValueError, match="needs max_memory"):
        apply_offload(loaded, "layers")
    with pytest.raises(ValueError, match="expected None, 'ple' or 'layers'"):
        apply_offload(loaded, "disk")
    with pytest.raises(ValueError, match="per-layer embeddings"):
        apply_offload(Gemma3Text(TextConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                            num_attention_heads=1, head_dim=8)), "ple")
    quantized = load_text(checkpoint, quantize="int8")
    with pytest.raises(InputError, match="offload='layers' streams float weights only"):
        apply_offload(quantized, "layers", max_memory=10**9)
