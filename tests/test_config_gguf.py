"""Gemma 3 hyper-parameters read from GGUF metadata as llama.cpp reads them, checked against
transformers' configs for every released size (the 27B query scale is hidden / heads = 168, not
head_dim = 128) and, on a tiny 62-layer model, against transformers' logits end to end."""
import warnings

import numpy as np
import pytest
import torch

from _tiny import tiny_vocab
from mmsdk.decoder.config import FULL, SLIDING, TextConfig
from mmsdk.decoder.errors import ModelLoadError
from mmsdk.decoder.gemma3 import Gemma3Text
from mmsdk.decoder.gguf_file import GGUFFile

# The text configs of google/gemma-3-{1b,4b,12b,27b}-it (config.json); the rest are transformers' defaults.
SIZES = {
    "1b": dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
               num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
               max_position_embeddings=32768, vocab_size=262144),
    "4b": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
               num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
               rope_scaling={"rope_type": "linear", "factor": 8.0}),
    "12b": dict(hidden_size=3840, intermediate_size=15360, num_hidden_layers=48, num_attention_heads=16,
                num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
                rope_scaling={"rope_type": "linear", "factor": 8.0}),
    "27b": dict(hidden_size=5376, intermediate_size=21504, num_hidden_layers=62, num_attention_heads=32,
                num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=168, sliding_window=1024,
                rope_scaling={"rope_type": "linear", "factor": 8.0}),
}


def hf_text_config(**kw):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(**{"vocab_size": 262208, "max_position_embeddings": 131072, **kw})


def write_gguf(path, tc, *, state_dict=None, extra=None, drop=()):
    """What llama.cpp's `convert_hf_to_gguf.py` (`TextModel` + `Gemma3Model.set_gguf_parameters`)
    writes for the transformers config `tc`, with the tiny vocabulary, plus `extra` keys, minus `drop`."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch="gemma3")
    rope = tc.rope_parameters
    kv = {
        "block_count": tc.num_hidden_layers, "context_length": tc.max_position_embeddings,
        "embedding_length": tc.hidden_size, "feed_forward_length": tc.intermediate_size,
        "head_count": tc.num_attention_heads, "head_count_kv": tc.num_key_value_heads,
        "rope_freq_base": rope[FULL]["rope_theta"], "rope_freq_base_swa": rope[SLIDING]["rope_theta"],
        "layer_norm_rms_eps": tc.rms_norm_eps, "key_length": tc.head_dim, "value_length": tc.head_dim,
        "sliding_window": tc.sliding_window,
    }
    if rope[FULL].get("rope_type") == "linear":
        kv["rope_scaling_type"] = gguf.RopeScalingType.LINEAR
        kv["rope_scaling_factor"] = rope[FULL]["factor"]
    if tc.final_logit_softcapping:
        kv["final_logit_softcapping"] = tc.final_logit_softcapping
    w.add_name("test-gemma3")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, value in kv.items():
        if name not in drop:
            getattr(w, "add_" + name)(value)
    tokens, types = tiny_vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    for kind, i in (("bos", 2), ("eos", 1), ("unk", 3), ("pad", 0)):
        getattr(w, f"add_{kind}_token_id")(i)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    for key, value in (extra or {}).items():
        add = {bool: w.add_bool, int: w.add_uint32, float: w.add_float32, str: w.add_string, list: w.add_array}
        add[type(value)](key, value)
    if state_dict is not None:
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, tc.num_hidden_layers)
        for key, t in state_dict.items():
            if key == "lm_head.weight":
                continue  # tied to the embedding
            t = t.float() + 1 if key.endswith("norm.weight") else t.float()  # Gemma3RMSNorm's (1 + w)
            w.add_tensor(names.get_name(key, try_suffixes=(".weight",)), np.ascontiguousarray(t.numpy()))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def from_file(path) -> TextConfig:
    return TextConfig.from_gguf(GGUFFile(path).meta)


@pytest.mark.parametrize("size", SIZES)
def test_every_size_reads_what_transformers_configures(size, tmp_path):
    """The GGUF header of each released size (no tensors) gives the config transformers' own gives,
    field by field: the query scale (llama.cpp's rule for the size), both RoPE bases, the global
    layers' linear factor, the window and the layer pattern."""
    tc = hf_text_config(**SIZES[size])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a header the converter wrote has nothing left unread
        got = from_file(write_gguf(tmp_path / f"{size}.gguf", tc))
    want = TextConfig.from_hf(tc.to_dict())
    assert got.vocab_size == len(tiny_vocab()[0])  # llama.cpp counts the vocabulary's tokens
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps", "query_pre_attn_scalar", "sliding_window",
                  "max_position_embeddings", "final_logit_softcapping", "rope_global_base", "rope_local_base",
                  "rope_global_scaling", "layer_types", "bos_token_id", "pad_token_id"):
        assert getattr(got, field) == getattr(want, field), field
    assert got.query_pre_attn_scalar == tc.query_pre_attn_scalar


def test_27b_header_builds_the_27b_attention_scale(tmp_path):
    """The whole 27B model built from the header (on the meta device: no memory) scales queries by
    168 ** -0.5 and scales positions on its global layers only."""
    cfg = from_file(write_gguf(tmp_path / "27b.gguf", hf_text_config(**SIZES["27b"])))
    assert (cfg.query_pre_attn_scalar, cfg.head_dim) == (168, 128)
    with torch.device("meta"):
        model = Gemma3Text(cfg)
    assert {layer.attn.scale for layer in model.layers} == {168 ** -0.5}
    assert model.rope_global.scaling == 8.0 and model.rope_local.scaling == 1.0
    assert [t == FULL for t in cfg.layer_types].count(True) == 10  # layers 6, 12, ... 60


def tiny_62_layers(seed=0):
    """A random 62-layer Gemma 3 small enough to run: llama.cpp's 27B rule keys on the layer count,
    so this model's query scale is hidden / heads = 32 where head_dim is 16."""
    from transformers import Gemma3ForCausalLM

    tc = hf_text_config(vocab_size=len(tiny_vocab()[0]), hidden_size=64, intermediate_size=64, num_hidden_layers=62,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=32,
                        sliding_window=8, max_position_embeddings=256,
                        rope_scaling={"rope_type": "linear", "factor": 8.0})
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(tc).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.2)
            elif "q_proj" in name or "k_proj" in name:
                p.mul_(6)  # sharper attention, so a wrong query scale moves the logits well past the tolerance
    return model


def test_tiny_27b_shaped_gguf_matches_transformers(tmp_path):
    """End to end: the GGUF loads with query scale 32 and its logits equal transformers' (which
    reads query_pre_attn_scalar=32) to float32 rounding; with head_dim's 16 they would not."""
    from mmsdk.decoder.loader import load_text

    ref = tiny_62_layers()
    path = write_gguf(tmp_path / "tiny62.gguf", ref.config, state_dict=ref.state_dict())
    loaded = load_text(path, torch.float32, cache=False)
    assert loaded.model.config.query_pre_attn_scalar == 32
    ids = torch.tensor([[2] + list(range(300, 320))])  # past the window of 8: sliding and global layers differ
    with torch.inference_mode():
        want = ref(ids).logits[0]
        from mmsdk.decoder.kv_cache import make_cache

        got = loaded.model.logits(loaded.model(ids, make_cache(loaded.model.config), torch.arange(ids.shape[1])))[0]
        ref.config.query_pre_attn_scalar = 16
        for layer in ref.model.layers:
            layer.self_attn.scaling = 16 ** -0.5
        wrong = ref(ids).logits[0]
    # 1e-4 is float32 rounding through 62 layers; the wrong scale moves the logits by orders of magnitude more
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    assert (wrong - want).abs().max() > 100 * 1e-4


def test_missing_keys_take_llama_cpp_defaults(tmp_path):
    """No window: every layer global (llama.cpp: no SWA). No base: 10k. No SWA base: 10k. A factor
    with no type name: linear. No query-scale key exists at all: the size rule decides."""
    tc = hf_text_config(**SIZES["4b"])
    cfg = from_file(write_gguf(tmp_path / "a.gguf", tc, drop={"sliding_window", "rope_freq_base",
                                                               "rope_freq_base_swa", "rope_scaling_type"}))
    assert cfg.layer_types == (FULL,) * 34
    assert (cfg.rope_global_base, cfg.rope_local_base, cfg.rope_global_scaling) == (10_000.0, 10_000.0, 8.0)
    assert cfg.query_pre_attn_scalar == 256


def test_pattern_keys(tmp_path):
    """`sliding_window_pattern` as a period (the last layer of each period global; 0: all sliding)
    or as one flag per layer."""
    tc = hf_text_config(**SIZES["1b"])
    for pattern, want in ((3, [SLIDING, SLIDING, FULL] * 8 + [SLIDING, SLIDING]), (0, [SLIDING] * 26)):
        cfg = from_file(write_gguf(tmp_path / f"p{pattern}.gguf", tc,
                                   extra={"gemma3.attention.sliding_window_pattern": pattern}))
        assert list(cfg.layer_types) == want
    import gguf

    flags = [i % 2 == 0 for i in range(26)]  # what `add_sliding_window_pattern` writes: one bool per layer
    cfg = from_file(write_gguf(tmp_path / "flags.gguf", tc, extra={"gemma3.attention.sliding_window_pattern": flags}))
    assert list(cfg.layer_types) == [SLIDING if f else FULL for f in flags]


def test_unused_keys_are_reported_once(tmp_path):
    """Keys no part of the runtime reads, and tokenizer settings it does not follow, are listed in
    one warning; `general.*` descriptions are not."""
    path = write_gguf(tmp_path / "x.gguf", hf_text_config(**SIZES["1b"]),
                      extra={"gemma3.attention.scale": 0.5, "gemma3.some_new_key": 3, "general.author": "someone",
                             "tokenizer.ggml.remove_extra_whitespaces": True})
    with pytest.warns(UserWarning) as record:
        from_file(path)
    messages = [str(r.message) for r in record if "GGUF metadata" in str(r.message)]
    assert len(messages) == 1
    assert "gemma3.attention.scale" in messages[0] and "gemma3.some_new_key" in messages[0]
    assert "tokenizer.ggml.remove_extra_whitespaces=True" in messages[0]
    assert "general.author" not in messages[0]


def test_unsupported_values_are_load_errors(tmp_path):
    from mmsdk.decoder.loader import load_text

    tc = hf_text_config(**SIZES["1b"])
    for name, extra in (("yarn", {"gemma3.rope.scaling.type": "yarn"}),
                        ("bidir", {"gemma3.attention.causal": False}),
                        ("rot", {"gemma3.rope.dimension_count": 128})):
        path = write_gguf(tmp_path / f"{name}.gguf", tc, extra=extra,
                          drop={"rope_scaling_type"} if name == "yarn" else ())
        with pytest.raises(ModelLoadError, match="unsupported|not supported|differs"):
            load_text(path, torch.float32, cache=False)
    path = write_gguf(tmp_path / "eps.gguf", tc, drop={"layer_norm_rms_eps"})  # required by llama.cpp too
    with pytest.raises(ModelLoadError, match="layer_norm_rms_epsilon"):
        load_text(path, torch.float32, cache=False)


def test_chat_template_and_end_of_turn_read_from_the_file(tmp_path):
    path = write_gguf(tmp_path / "t.gguf", hf_text_config(**SIZES["1b"]),
                      extra={"tokenizer.chat_template": "{{ bos_token }}{% for m in messages %}{% endfor %}"})
    cfg = from_file(path)
    assert cfg.chat_template.startswith("{{ bos_token }}")
    assert cfg.eos_token_ids == (1, tiny_vocab()[0].index("<end_of_turn>"))


def test_hf_config_with_an_attention_softcap_is_refused():
    with pytest.raises(ValueError, match="attn_logit_softcapping"):
        TextConfig.from_hf(hf_text_config(**SIZES["1b"], attn_logit_softcapping=50.0).to_dict())
