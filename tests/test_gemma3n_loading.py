"""Loading Gemma 3n checkpoints in the real layout: strict tensors, reported config keys."""
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from gemma3n_fixtures import TEXT, edit_config, hf_full_model, save
from mmsdk.decoder.errors import ModelLoadError
from mmsdk.decoder.loader import load_text

LM = "model.language_model."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save(hf_full_model(seed=2), tmp_path_factory.mktemp("g3n_ckpt"))


def _copy_with(checkpoint, tmp_path, edit):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_real_layout_loads_and_hands_encoder_tensors_over(checkpoint):
    loaded = load_text(checkpoint)
    assert loaded.hf_config["model_type"] == "gemma3n"
    prefixes = {k.split(".")[1] for k in loaded.extra_tensors}
    assert prefixes == {"audio_tower", "vision_tower", "embed_audio", "embed_vision"}
    assert not any(k.startswith(LM) for k in loaded.extra_tensors)
    assert loaded.tokenizer.encode("w1 w2")[0] == 2


def test_missing_tensor_is_named(checkpoint, tmp_path):
    name = LM + "layers.3.laurel.linear_left.weight"
    folder = _copy_with(checkpoint, tmp_path, lambda t: t.pop(name))
    with pytest.raises(ModelLoadError, match="layers.3.laurel.linear_left.weight"):
        load_text(folder)


def test_wrong_shape_is_named(checkpoint, tmp_path):
    name = LM + "layers.1.altup.prediction_coefs.weight"
    folder = _copy_with(checkpoint, tmp_path, lambda t: t.__setitem__(name, torch.zeros(16, 3)))
    with pytest.raises(ModelLoadError, match=r"layers.1.altup.prediction_coefs.weight.*\(16, 3\)"):
        load_text(folder)


def test_wrong_ple_shape_is_named_with_offload(checkpoint, tmp_path):
    from mmsdk.decoder.gemma3n_loader import load_gemma3n

    name = LM + "embed_tokens_per_layer.weight"
    folder = _copy_with(checkpoint, tmp_path, lambda t: t.__setitem__(name, torch.zeros(10, 80)))
    with pytest.raises(ModelLoadError, match="embed_tokens_per_layer"):
        load_gemma3n(folder, offload="ple")


def test_unexpected_tensor_is_named(checkpoint, tmp_path):
    folder = _copy_with(checkpoint, tmp_path, lambda t: t.__setitem__("model.frobnicator.weight", torch.zeros(2)))
    with pytest.raises(ModelLoadError, match="model.frobnicator.weight"):
        load_text(folder)


def test_released_checkpoints_kv_weights_on_shared_layers_are_accepted(checkpoint, tmp_path):
    """google/gemma-3n-E2B still carries (unused) k/v projections for its KV-shared layers."""
    H, kv = TEXT["hidden_size"], TEXT["num_key_value_heads"] * TEXT["head_dim"]

    def add(t):
        t[LM + "layers.8.self_attn.k_proj.weight"] = torch.zeros(kv, H)
        t[LM + "layers.8.self_attn.v_proj.weight"] = torch.zeros(kv, H)
        t[LM + "layers.8.self_attn.k_norm.weight"] = torch.zeros(TEXT["head_dim"])

    extra, plain = load_text(_copy_with(checkpoint, tmp_path, add)).model, load_text(checkpoint).model
    # Ignored, not loaded: the model holds the same tensors as without them (a copy of one file: exact).
    a, b = extra.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_config_keys_are_reported(checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    edit_config(folder, frobnicate_layers=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_text(folder)
    assert any("frobnicate_layers" in str(w.message) for w in caught)


def test_bad_config_is_a_load_error(checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    edit_config(folder, activation_sparsity_pattern=[0.95])
    with pytest.raises(ModelLoadError, match="activation_sparsity_pattern"):
        load_text(folder)
