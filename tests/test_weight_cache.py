"""The weight cache: roundtrip, memory mapping, format-version invalidation, damage, a killed writer."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from mmsdk.decoder import weight_cache


pytestmark = pytest.mark.usefixtures("mmsdk_cache")  # each test's own cache: its files are checked


def sample_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randint(-127, 127, (64, 33), dtype=torch.int8, generator=g),
        "a.scales": torch.rand(64, generator=g).to(torch.bfloat16),
        "b.packed": torch.randint(0, 255, (7, 5), dtype=torch.uint8, generator=g),
        "norm.weight": torch.randn(13, generator=g),
        "empty": torch.zeros(0, 4),
    }


def test_roundtrip_is_exact_aligned_and_memory_mapped(tmp_path):
    path = tmp_path / "w.safetensors"
    src = sample_tensors()
    weight_cache.save(path, src, {"name": "x", "plan": {"l": 4}})
    tensors, meta = weight_cache.load(path)
    assert meta == {"name": "x", "plan": {"l": 4}}
    assert tensors.keys() == src.keys()
    for k, v in src.items():
        assert tensors[k].dtype == v.dtype and torch.equal(tensors[k], v), k
        assert tensors[k].numel() == 0 or tensors[k].data_ptr() % 64 == 0, k  # packed kernels need it
    before = path.read_bytes()
    tensors["norm.weight"].add_(1.0)  # copy-on-write mapping: the file never changes
    assert path.read_bytes() == before


def test_file_is_valid_safetensors(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "w.safetensors"
    weight_cache.save(path, sample_tensors(), {})
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("a.weight"), sample_tensors()["a.weight"])


def test_other_format_version_is_not_read(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    weight_cache.save(path, sample_tensors(), {})
    monkeypatch.setattr(weight_cache, "FORMAT_VERSION", weight_cache.FORMAT_VERSION + 1)
    assert weight_cache.load(path) is None


def test_writing_a_cache_removes_the_same_models_older_formats(tmp_path, monkeypatch):
    old, other_model = tmp_path / "gemma-aaaa.safetensors", tmp_path / "phi-cccc.safetensors"
    weight_cache.save(old, sample_tensors(), {})
    weight_cache.save(other_model, sample_tensors(), {})
    monkeypatch.setattr(weight_cache, "FORMAT_VERSION", weight_cache.FORMAT_VERSION + 1)
    new, other_options = tmp_path / "gemma-dddd.safetensors", tmp_path / "gemma-bbbb.safetensors"
    weight_cache.save(new, sample_tensors(), {})
    assert not old.exists() and other_model.exists()  # another model's cache is left to that model
    weight_cache.save(other_options, sample_tensors(), {})
    assert new.exists() and other_options.exists()  # the current format stays, whatever its options
    assert weight_cache.load(new) is not None


def test_key_changes_with_version_source_and_options(tmp_path):
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + bytes(10))
    k = weight_cache.cache_key([src], {"quantize": "int4"})
    assert weight_cache.cache_key([src], {"quantize": "int4"}) == k
    assert weight_cache.cache_key([src], {"quantize": "int8"}) != k
    assert weight_cache.cache_key([src], {"quantize": "int4"}, version=weight_cache.FORMAT_VERSION + 1) != k
    os.utime(src, ns=(1, 1))  # a touched (replaced) source file is another source
    assert weight_cache.cache_key([src], {"quantize": "int4"}) != k


def test_truncated_file_is_removed_and_reported_absent(tmp_path):
    path = tmp_path / "w.safetensors"
    weight_cache.save(path, sample_tensors(), {})
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert weight_cache.load(path) is None
    assert not path.exists()
    path.write_bytes(b"garbage!" * 3)
    assert weight_cache.load(path) is None


def test_killed_writer_leaves_no_cache(tmp_path):
    """A real writer process, SIGKILLed after writing its data but before the atomic rename."""
    target = tmp_path / "w.safetensors"
    code = textwrap.dedent(f"""
        import os, time, torch
        from pathlib import Path
        from mmsdk.decoder import weight_cache
        os.fsync = lambda fd: (print("writing", flush=True), time.sleep(120))  # hold the write open
        weight_cache.save(Path({str(target)!r}), {{"w": torch.ones(1 << 20)}}, {{}})
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        parts = list(tmp_path.glob(".w.safetensors.*.part"))
        assert parts and parts[0].stat().st_size > 4 << 20  # the data really was being written
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert not target.exists()
    assert weight_cache.load(target) is None
    # the next writer clears the dead one's leftover once it is stale, and succeeds
    old = time.time() - 2 * weight_cache._STALE_PART_S
    for part in tmp_path.glob(".w.safetensors.*.part"):
        os.utime(part, (old, old))
    weight_cache.save(target, {"w": torch.ones(4)}, {})
    assert list(tmp_path.glob(".w.safetensors.*.part")) == []
    assert torch.equal(weight_cache.load(target)[0]["w"], torch.ones(4))


@pytest.mark.slow
def test_bundled_model_cached_load_matches_first_load(tmp_path, bundled_path, monkeypatch):
    from mmsdk.decoder.kv_cache import make_cache
    from mmsdk.decoder.loader import load_text
    from mmsdk.decoder.quantize import Int4Linear, Int8Linear

    gguf = bundled_path
    first = load_text(gguf, None, quantize="int4")
    files = list((tmp_path / "cache" / "weights").glob("*.safetensors"))
    assert len(files) == 1 and files[0].with_suffix(".tokenizer.model").is_file()
    def no_parse(*a, **k):
        raise AssertionError("a cached load must not parse the GGUF")

    monkeypatch.setattr("mmsdk.decoder.loader.GGUFFile", no_parse)
    again = load_text(gguf, None, quantize="int4")
    assert isinstance(again.model.layers[0].attn.o_proj, Int4Linear)
    assert isinstance(again.model.layers[0].attn.qkv_proj, Int8Linear)  # Q4_K_M's mix
    assert again.quantization == first.quantization == "int4" and again.parameters == first.parameters
    assert again.quantized and first.quantized
    ids = first.tokenizer.encode("The capital of France is")
    assert again.tokenizer.encode("The capital of France is") == ids
    x = torch.tensor([ids])
    with torch.inference_mode():
        a = first.model.logits(first.model(x, make_cache(first.model.config), torch.arange(len(ids))))
        b = again.model.logits(again.model(x, make_cache(again.model.config), torch.arange(len(ids))))
    sa, sb = first.model.state_dict(), again.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # a cache stores a copy: exact
    # Same weights in other buffers (mapped vs. parsed) may take other kernel blocking: equal to float32
    # rounding, while one wrong tensor moves logits by far more than 1e-4.
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
