"""Bad model files give a ModelLoadError naming the file and the reason; long prompts a ContextLengthError."""
import json
import shutil

import pytest

import mmsdk
from _tiny import write_tiny_gemma3


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    write_tiny_gemma3(folder)
    return folder


def test_missing_file(tmp_path):
    with pytest.raises(mmsdk.ModelLoadError, match="no such file") as e:
        mmsdk.load(tmp_path / "nope.gguf")
    assert "nope.gguf" in str(e.value)


def test_non_model_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("just some text")
    with pytest.raises(mmsdk.ModelLoadError, match="expected a Hugging Face checkpoint folder") as e:
        mmsdk.load(f)
    assert "notes.txt" in str(e.value)


def test_file_named_gguf_that_is_not(tmp_path):
    f = tmp_path / "fake.gguf"
    f.write_bytes(b"\x00" * 1000)
    with pytest.raises(mmsdk.ModelLoadError, match="not a GGUF file"):
        mmsdk.load(f)


def test_truncated_gguf(tmp_path, bundled_path):
    f = tmp_path / "cut.gguf"
    with open(bundled_path, "rb") as src:
        f.write_bytes(src.read(40_000_000))  # header and some tensors, not all
    with pytest.raises(mmsdk.ModelLoadError, match="truncated|corrupt") as e:
        mmsdk.load(f)
    assert "cut.gguf" in str(e.value)


def test_unsupported_architecture(tmp_path, tiny_folder):
    folder = tmp_path / "llama"
    shutil.copytree(tiny_folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(mmsdk.ModelLoadError, match="unsupported architecture 'llama'") as e:
        mmsdk.load(folder)
    assert "config.json" in str(e.value)


def test_missing_tensor_named(tmp_path, tiny_folder):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    shutil.copytree(tiny_folder, folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.3.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(mmsdk.ModelLoadError, match="model.layers.3.mlp.up_proj.weight|layers.3.mlp.up_proj"):
        mmsdk.load(folder)


def test_unexpected_tensor_named(tmp_path, tiny_folder):
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "extra"
    shutil.copytree(tiny_folder, folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.mystery.weight"] = torch.zeros(3)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(mmsdk.ModelLoadError, match="mystery"):
        mmsdk.load(folder)


def test_unknown_config_key_warns(tmp_path, tiny_folder):
    folder = tmp_path / "odd"
    shutil.copytree(tiny_folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["brand_new_knob"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="brand_new_knob"):
        mmsdk.load(folder)


def test_prompt_over_context(tiny_folder):
    asst = mmsdk.load(tiny_folder)
    ctx = asst.info.context_length
    with pytest.raises(mmsdk.ContextLengthError) as e:
        asst.generate("a" * (ctx + 50), max_tokens=4)
    assert str(ctx) in str(e.value) and e.value.n_tokens > ctx
