"""Gemma 4 checkpoints through `mmsdk.load`: the real layouts, strict errors, the family and its
modalities, the per-layer table offloaded, greedy text equal to transformers', and the chat format
equal to what the checkpoint's chat template writes."""
import json
import shutil

import pytest
import torch

import mmsdk
from gemma4_fixtures import CHAT_TEMPLATE, E2B_LIKE, hf_full_model, hf_text_model, save
from mmsdk import chat_format
from mmsdk.chat_format_gemma4 import render_messages, split_thinking
from mmsdk.decoder.offload import MappedPerLayerEmbedding

pytestmark = pytest.mark.usefixtures("mmsdk_cache")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Gemma4ForConditionalGeneration's layout, towers included."""
    ref = hf_full_model(seed=3)
    return ref, save(ref, tmp_path_factory.mktemp("g4_full_public"))


@pytest.fixture(scope="module")
def text_only(tmp_path_factory):
    ref = hf_text_model(seed=4)
    return ref, save(ref, tmp_path_factory.mktemp("g4_text_public"))


def reference_greedy(ref, asst, ids, n):
    """transformers' greedy continuation, cut at the first end-of-turn as ours stops there."""
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None)[0, len(ids):]
    out = out.tolist()
    cut = next((i for i, t in enumerate(out) if t in asst.tokenizer.eos_ids), len(out))
    return asst.tokenizer.decode(out[:cut])


@pytest.mark.parametrize("offload", [None, "ple"])
def test_full_checkpoint_generates_as_transformers(full, offload):
    ref, folder = full
    asst = mmsdk.load(folder, dtype="float32", offload=offload)
    assert asst.info.family == "gemma4"
    assert asst.info.modalities == {"text", "image", "audio"}
    assert isinstance(asst.model.ple, MappedPerLayerEmbedding) == (offload == "ple")
    prompt = "w5 w17 w99 w3 w250 w42 w7"
    want = reference_greedy(ref, asst, asst.tokenizer.encode(prompt), 8)
    assert want and asst.generate(prompt, max_tokens=8) == want
    # text only so far: neither tower was built (they are built on their first image or clip)
    assert not asst.encoders.gemma4.loaded("vision") and not asst.encoders.gemma4.loaded("audio")


def test_chat_prompt_is_the_templates_and_reply_matches_transformers(text_only):
    """Our prompt is what the checkpoint's template renders (exact: a format), thinking off by
    default; the chat reply is transformers' greedy continuation of it."""
    from jinja2 import Environment

    ref, folder = text_only
    asst = mmsdk.load(folder)
    assert asst.info.family == "gemma4" and asst.info.modalities == {"text"}
    template = Environment().from_string(CHAT_TEMPLATE.read_text())
    messages = [{"role": "system", "content": "w9 w10 "}, {"role": "user", "content": " w11 w12"},
                {"role": "assistant", "content": "w13"}, {"role": "user", "content": "w14 w15"}]
    for thinking, msgs in ((False, messages), (True, messages), (True, messages[1:]), (False, messages[1:])):
        want = template.render(messages=msgs, bos_token="<bos>", add_generation_prompt=True, enable_thinking=thinking)
        assert "<bos>" + chat_format.as_text(render_messages(msgs, thinking=thinking)[0]) == want
    ids = chat_format.encode(asst.tokenizer, render_messages(messages)[0])
    assert asst.chat(messages, max_tokens=6).text == reference_greedy(ref, asst, ids, 6)


def test_thinking_reply_splits_thought_from_answer(text_only):
    """With thinking=True the prompt carries <|think|>; what the model writes in the thought
    channel is `Reply.thinking`, what follows is `Reply.text` (tokens forced by a processor)."""
    _, folder = text_only
    asst = mmsdk.load(folder)
    tok = asst.tokenizer
    forced = [tok.token_id("<|channel>"), *tok.encode("thought w20 w21", add_bos=False), tok.token_id("<channel|>"),
              *tok.encode("w30 w31", add_bos=False), tok.token_id("<turn|>")]

    def force(logits, generated):
        out = torch.full_like(logits, float("-inf"))
        out[forced[len(generated)]] = 0.0
        return out

    reply = asst.chat([{"role": "user", "content": "w1"}], thinking=True, processors=[force], max_tokens=20)
    assert (reply.thinking, reply.text, reply.finish_reason) == ("w20 w21", "w30 w31", "stop")
    assert asst.chat([{"role": "user", "content": "w1"}], max_tokens=2).thinking is None
    assert split_thinking(tok, tok.encode("w1 w2", add_bos=False)) == (None, tok.encode("w1 w2", add_bos=False))


def test_session_uses_gemma4_turns(text_only):
    ref, folder = text_only
    asst = mmsdk.load(folder)
    s = asst.session(system="w9")
    reply = s.send("w11 w12", max_tokens=5)
    ids = chat_format.encode(asst.tokenizer, render_messages([{"role": "system", "content": "w9"},
                                                             {"role": "user", "content": "w11 w12"}])[0])
    assert s.ids[:len(ids)] == ids and reply.text == reference_greedy(ref, asst, ids, 5)


def test_text_only_refuses_images(text_only):
    _, folder = text_only
    asst = mmsdk.load(folder)
    with pytest.raises(mmsdk.UnsupportedModalityError, match="image"):
        asst.chat([{"role": "user", "content": [{"type": "image", "image": b"x"}, {"type": "text", "text": "w1"}]}])


def _copy(folder, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out


def _edit(folder, fn):
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_and_unexpected_tensors_are_named(text_only, tmp_path):
    _, folder = text_only
    missing = _copy(folder, tmp_path / "a")
    _edit(missing, lambda t: t.pop("model.layers.2.layer_scalar"))
    with pytest.raises(mmsdk.ModelLoadError, match=r"missing tensor 'layers\.2\.layer_scalar'"):
        mmsdk.load(missing)
    stray = _copy(folder, tmp_path / "b")
    _edit(stray, lambda t: t.update({"model.layers.3.self_attn.v_proj.weight": torch.zeros(32, 64)}))
    with pytest.raises(mmsdk.ModelLoadError, match=r"unexpected tensor 'layers\.3\.self_attn\.v_proj\.weight'"):
        mmsdk.load(stray)  # layer 3 is global with keys equal to values: it has no value projection


def test_config_unknown_keys_warn_and_moe_is_refused(text_only, tmp_path):
    _, folder = text_only
    folder = _copy(folder, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "future_knob": 3}))
    with pytest.warns(UserWarning, match="future_knob"):
        mmsdk.load(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "enable_moe_block": True, "num_experts": 4}))
    with pytest.raises(mmsdk.ModelLoadError, match="mixture-of-experts"):
        mmsdk.load(folder)


def test_released_config_keys_read_as_saved_ones(text_only, tmp_path):
    """The released configs state global layers by `global_head_dim` / `num_global_key_value_heads`
    (transformers writes `per_layer_config` back instead): both give the same model."""
    from mmsdk.decoder.gemma4_config import Gemma4TextConfig

    _, folder = text_only
    saved = json.loads((folder / "config.json").read_text())
    assert "per_layer_config" in saved and "global_head_dim" not in saved
    released = {k: v for k, v in saved.items() if k != "per_layer_config"}
    released.update(global_head_dim=E2B_LIKE["global_head_dim"],
                    num_global_key_value_heads=E2B_LIKE["num_global_key_value_heads"])
    assert Gemma4TextConfig.from_hf(saved) == Gemma4TextConfig.from_hf(released)
    assert Gemma4TextConfig.from_hf(released).kv_dims[3] == (1, 32)


def test_int8_with_mapped_table(text_only):
    """quantize="int8" takes Gemma 4's layers (a module swap: int8 linears, int8 tied head) with the
    per-layer table mapped from the checkpoint. On this tiny random model int8 moves the logits by
    0.14 of their norm (Gemma 3n's tiny model: 0.13); a wrong scale or layout would move them ~1."""
    from mmsdk.decoder.kv_cache import make_cache
    from mmsdk.decoder.quantize import Int8Embedding, Int8Linear

    _, folder = text_only
    base, quant = mmsdk.load(folder), mmsdk.load(folder, quantize="int8", offload="ple")
    assert isinstance(quant.model.ple, MappedPerLayerEmbedding) and isinstance(quant.model.embed, Int8Embedding)
    assert all(isinstance(m, Int8Linear) for m in (quant.model.layers[3].attn.k_proj, quant.model.layers[6].mlp.down_proj))
    ids = torch.tensor([[2, *range(10, 410, 10)]])
    with torch.no_grad():
        b, q = (a.model.logits(a.model(ids, make_cache(a.config), torch.arange(ids.shape[1]))) for a in (base, quant))
    assert (q - b).norm() / b.norm() < 0.3
