"""Gemma 3n images and audio fused into our Gemma 3n decoder vs transformers'
`Gemma3nForConditionalGeneration` on the same small random checkpoint: logits, the processor's
token sequence, and greedy decoding through `mmsdk.load(...).chat`, `describe_image`, `transcribe_audio`."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gemma3n_fixtures import AUDIO, TEXT, randomize
from mmsdk.decoder.kv_cache import make_cache
from mmsdk.encoders.audio_features import log_mel
from mmsdk.encoders.audio_gemma3n import num_audio_tokens
from mmsdk.encoders.gemma3n_fusion import (
    AUDIO_SOFT,
    BOA,
    BOI,
    EOA,
    EOI,
    IMAGE_SOFT,
    Gemma3nMediaConfig,
    expand_media_markers,
)
from mmsdk.encoders.image_preprocess import preprocess
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers
from vision_fixtures import SMALL_MNV5, noise_image

import mmsdk
from mmsdk import chat_format, media
from mmsdk.speech_gemma3n import seam_overlap
from mmsdk.types import Reply

# The real id layout at test size: text ids < 384 (the PLE table), vision vocabulary [384, 512),
# audio vocabulary [512, 640), as 262144 / +128 / +128 in the released checkpoints.
IDS = dict(boi_token_id=300, boa_token_id=301, eoi_token_id=384, image_token_id=385, eoa_token_id=512,
           audio_token_id=513)
SPECIAL = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 105, "<end_of_turn>": 106,
           BOI: 300, BOA: 301, EOI: 384, IMAGE_SOFT: 385, EOA: 512, AUDIO_SOFT: 513}
WORDS = ["user", "model", "Describe", "this", "image", ".", "Transcribe", "audio", "What", "do", "you", "hear",
         "and", "see", "?", "\n", "\n\n", " "]
VOCAB = 640
AUDIO_RATE = 16_000


def tokenizer() -> Tokenizer:
    vocab = dict(SPECIAL)
    free = (i for i in range(VOCAB) if i not in SPECIAL.values())
    vocab.update({w: next(free) for w in WORDS})
    vocab.update({f"t{i}": i for i in free})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n\n|\n| |\w+|[^\w\s]"), behavior="isolated")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    return tok


def reference():
    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration

    cfg = Gemma3nConfig(text_config={**TEXT, "vocab_size": VOCAB}, audio_config=AUDIO,
                        vision_config={**SMALL_MNV5, "vocab_offset": 384}, **IDS)
    torch.manual_seed(0)
    model = Gemma3nForConditionalGeneration(cfg).eval()
    randomize(model, seed=3)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The reference model and the folder it is saved in."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    ref = reference()
    folder = tmp_path_factory.mktemp("g3n_mm")
    ref.save_pretrained(folder)
    tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>"}))
    # 128 px keeps the channel-scaled MobileNet-V5 fast; its fusion adapter still outputs 16 x 16 = 256 tokens.
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "size": {"height": 128, "width": 128}, "do_normalize": False, "image_processor_type": "SiglipImageProcessorFast",
        "feature_size": AUDIO["input_feat_size"], "feature_extractor_type": "Gemma3nAudioFeatureExtractor"}))
    return ref, folder


@pytest.fixture(scope="module")
def pair(saved):
    ref, folder = saved
    return ref, mmsdk.load(folder, dtype="float32")


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def reference_inputs(asst, ids, images=(), audio=()):
    """What transformers' processor hands the model for the same prompt."""
    g = asst.encoders.gemma3n
    kw = {"input_ids": torch.tensor([ids])}
    if images:
        kw["pixel_values"] = preprocess(list(images), g.image_config, pan_and_scan=False).pixel_values
    if audio:
        feats = [log_mel(a, g.features) for a in audio]
        t = max(f.shape[0] for f, _ in feats)
        mel = torch.zeros(len(feats), t, feats[0][0].shape[1])
        mask = torch.zeros(len(feats), t, dtype=torch.bool)
        for i, (f, m) in enumerate(feats):
            mel[i, :len(f)], mask[i, :len(m)] = torch.from_numpy(f), torch.from_numpy(m)
        kw["input_features"], kw["input_features_mask"] = mel, mask
    return kw


def our_logits(asst, prompt) -> torch.Tensor:
    model = asst.model
    with torch.no_grad():
        h = model(torch.tensor([prompt.ids]), make_cache(model.config), torch.arange(len(prompt.ids)),
                  embeds=prompt.embeds)
        return model.logits(h)


def test_a_quantized_load_swaps_the_audio_tower_when_it_is_built(saved, monkeypatch):
    """`quantize=` gives the lazily built conformer the encoders' int8 swap (`LazyTowers.then`): applied
    once, at the tower's first use, not at load; a float32 load leaves it alone."""
    from mmsdk.encoders import accelerate

    swapped = []
    monkeypatch.setattr(accelerate, "accelerate_gemma3n_audio_", lambda audio: swapped.append(audio) or audio)
    float_load = mmsdk.load(saved[1], dtype="float32")
    asst = mmsdk.load(saved[1], quantize="int8")
    assert not swapped
    for a in (asst, float_load):
        a.chat([{"role": "user", "content": [{"type": "audio", "audio": (clip(1.0), AUDIO_RATE)}]}], max_tokens=1)
    assert swapped == [asst.encoders.gemma3n.audio]


def render(content) -> tuple[str, list, list]:
    return chat_format.render_messages([{"role": "user", "content": content}])


def test_info_and_modalities_and_towers_built_on_first_use(saved):
    asst = mmsdk.load(saved[1], dtype="float32")
    assert asst.info.family == "gemma3n"
    assert asst.info.modalities == {"text", "image", "audio"}
    g = asst.encoders.gemma3n  # a text-only conversation never holds the towers (E2B's: ~4 GB in float32)
    asst.generate("Hello", max_tokens=2)
    assert not g.loaded("vision") and not g.loaded("audio")
    asst.describe_image(noise_image(64, 64), max_tokens=1, pan_and_scan=False)
    assert g.loaded("vision") and not g.loaded("audio")


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_logits_match_transformers(pair, kind):
    ref, asst = pair
    media_part = {"type": "image", "image": noise_image(200, 300, seed=1)} if kind == "image" else \
        {"type": "audio", "audio": (clip(2.5), AUDIO_RATE)}
    text, images, audio = render([{"type": "text", "text": "What do you hear and see ?"}, media_part])
    p = media.encode_prompt(asst.model, asst.tokenizer, asst.encoders, text, images, audio)
    audio_arrays = [a[0] for a in audio]
    with torch.no_grad():
        expected = ref(**reference_inputs(asst, p.ids, images, audio_arrays)).logits
    ours = our_logits(asst, p)
    diff = (ours - expected).abs().max().item()
    print(f"{kind}: prompt {len(p.ids)} tokens, max|logits diff| = {diff:.2e} (max|logit| {expected.abs().max():.2f})")
    assert ours.shape == expected.shape
    # The image path runs MobileNet-V5's channel norms through our kernel (`accelerate_mobilenet_`), each
    # as close to the exact norm as timm's (2.5e-7 relative) but rounded differently; this random tower
    # amplifies that to ~4e-4 here. One channel's gain 1% off in one norm moves the features 400x more.
    assert diff <= (2e-3 if kind == "image" else 1e-4)


def test_token_sequence_and_audio_token_count_match_the_reference(pair):
    ref, asst = pair
    cfg = ref.config
    n = int(2.5 * AUDIO_RATE)
    text, images, audio = render([{"type": "audio", "audio": (clip(2.5), AUDIO_RATE)},
                                  {"type": "image", "image": noise_image(64, 64)}, {"type": "text", "text": "Describe"}])
    p = media.encode_prompt(asst.model, asst.tokenizer, asst.encoders, text, images, audio)
    ids = torch.tensor(p.ids)
    # As Gemma3nProcessor expands them: 188 audio and 256 image soft tokens, between their boundary tokens.
    assert int((ids == cfg.audio_token_id).sum()) == cfg.audio_soft_tokens_per_image == 188
    assert int((ids == cfg.image_token_id).sum()) == cfg.vision_soft_tokens_per_image == 256
    assert expand_media_markers(f"a{BOA}b", 0, 1, Gemma3nMediaConfig(audio_soft_tokens_per_image=2)) == \
        f"a\n\n{BOA}{AUDIO_SOFT * 2}{EOA}\n\nb"
    # The tower emits as many tokens as the reference's, the rest of the 188 is padding.
    g = asst.encoders.gemma3n
    mel, mask = log_mel(clip(2.5), g.features)
    with torch.no_grad():
        out = ref.model.get_audio_features(torch.from_numpy(mel)[None], ~torch.from_numpy(mask)[None])
    assert num_audio_tokens(n, g.audio.config) == (out.pooler_output.shape[1], int((~out.audio_mel_mask).sum()))


def reference_greedy(ref, asst, message, n: int) -> str:
    text, images, audio = chat_format.render_messages([message])
    p = media.encode_prompt(asst.model, asst.tokenizer, asst.encoders, text, images, audio)
    kw = reference_inputs(asst, p.ids, images, [a[0] for a in audio])
    with torch.no_grad():
        out = ref.generate(**kw, max_new_tokens=n, do_sample=False, eos_token_id=None)[0, len(p.ids):].tolist()
    stop = next((i for i, t in enumerate(out) if t in asst.tokenizer.eos_ids), len(out))
    return asst.tokenizer.decode(out[:stop])


def test_chat_with_image_and_audio_matches_transformers_generate(pair):
    ref, asst = pair
    message = {"role": "user", "content": [{"type": "image", "image": noise_image(150, 220, seed=7)},
                                           {"type": "audio", "audio": (clip(1.5, seed=2), AUDIO_RATE)},
                                           {"type": "text", "text": "What do you hear and see ?"}]}
    reply = asst.chat([message], max_tokens=8)
    assert reply.usage.prompt_tokens > 188 + 256
    assert reply.text == reference_greedy(ref, asst, message, 8)


def test_decoded_multimodal_ids_use_their_embedders(pair):
    ref, asst = pair
    ids = torch.tensor([[2, 384, 400, 512, 600, 7]])  # <end_of_image>, a vision id, <end_of_audio>, an audio id
    with torch.no_grad():
        expected = ref.get_input_embeddings()(ids)
        expected = torch.where(((ids >= 384) & (ids < 512))[..., None], ref.model.embed_vision(input_ids=ids.clamp(384, 511)), expected)
        expected = torch.where((ids >= 512)[..., None], ref.model.embed_audio(input_ids=ids.clamp(512, 639)), expected)
        assert (asst.model.embed_tokens(ids) - expected).abs().max().item() <= 1e-5


def test_describe_image_and_session_run(pair):
    ref, asst = pair
    image = noise_image(120, 160, seed=3)
    out = asst.describe_image(image, max_tokens=4, pan_and_scan=False)
    message = {"role": "user", "content": [{"type": "image", "image": image},
                                           {"type": "text", "text": "Describe this image."}]}
    assert out == reference_greedy(ref, asst, message, 4)  # the same tokens as transformers, not just a str
    s = asst.session()
    r = s.send("Describe", audio=[(clip(1.0), AUDIO_RATE)], max_tokens=3)
    assert r.usage.prompt_tokens > 188
    r2 = s.send("this", max_tokens=2)
    assert r2.usage.prompt_tokens < 20  # the audio is not fed again


def test_transcribe_audio_uses_the_models_encoder(pair, monkeypatch):
    _, asst = pair
    import mmsdk.speech as whisper

    monkeypatch.setattr(whisper, "transcribe", lambda *a, **k: pytest.fail("used the bundled Whisper"))
    prompts = []
    chat = asst.chat
    # Random weights never say <end_of_turn>: a few tokens per window show the path as well as 448 would.
    replies = []

    def short_chat(messages, **kw):
        prompts.append(messages)
        replies.append(chat(messages, **{**kw, "max_tokens": 3}).text.split())
        return Reply(" ".join(replies[-1]))

    monkeypatch.setattr(asst, "chat", short_chat)
    samples = np.concatenate([clip(20.0), np.zeros(AUDIO_RATE, np.float32), clip(20.0, seed=1)])  # 41 s: 2 windows
    t = asst.transcribe_audio((samples, AUDIO_RATE), language="en")
    assert len(prompts) == 2
    assert "Transcribe" in prompts[0][0]["content"][1]["text"]
    assert replies[0]  # the model's words, each window's after what the seam repeats
    assert t.text.split() == replies[0] + replies[1][seam_overlap(replies[0], replies[1]):]
    assert [s[0] for s in t.segments] == sorted(s[0] for s in t.segments)
    assert asst.transcribe_audio((np.zeros(AUDIO_RATE, np.float32), AUDIO_RATE)).text == ""


def test_marker_count_mismatch_names_both_counts(pair):
    _, asst = pair
    with pytest.raises(mmsdk.InputError, match=r"2 audio marker\(s\).* but 1 audio clip"):
        media.encode_prompt(asst.model, asst.tokenizer, asst.encoders, f"{BOA} {BOA}", [], [(clip(1.0), AUDIO_RATE)])
    with pytest.raises(mmsdk.InputError, match=r"1 image marker\(s\).* but 0 image"):
        media.encode_prompt(asst.model, asst.tokenizer, asst.encoders, f"look {BOI}")  # a raw prompt's marker
    asst.chat([{"role": "user", "content": f"look {BOI}"}], max_tokens=1)  # in a message it is text (issue 20)
    assert EOI in tokenizer().get_vocab()


def test_bench_media_times_the_audio_encoder_beside_transformers(saved):
    """`mmsdk bench --audio`'s workers, in this process, on the model and transformers' feature extractor
    from the same folder (3 s of audio): each timed, the ratio taken from the medians, the table names both.
    (The image workers cost ~25 s here, the MobileNet's first calls: run by `tests/eval/bench_encoders.py`.)"""
    from mmsdk._bench_media import media_table, ratios, work_mmsdk, work_transformers

    _, folder = saved
    spec = {"model": str(folder), "threads": 2, "repeats": 1, "precision": "float", "seconds": 3.0}
    ours, hf = work_mmsdk({**spec, "kind": "audio"}), work_transformers({**spec, "kind": "audio"})
    key = "audio_30s_s"
    assert len(ours[key]) == len(ours["ttft_s"]) == len(hf[key]) == 1 and ours[key][0] > 0 and hf[key][0] > 0
    assert ours["peak_rss_mb"] > 100 and hf["peak_rss_mb"] > 100
    res = {"mmsdk:float": ours, "transformers:float": hf}
    r = ratios("audio", res)
    assert r["vs_transformers_best"] == pytest.approx(ours[key][0] / hf[key][0])
    table = media_table({"kind": "audio", "model": str(folder), "cpu": "cpu", "cpu_flags": "avx2", "threads": 2,
                         "repeats": 1, "results": res, "ratios": r})
    assert "mmsdk:float" in table and "transformers:float" in table and "transformers' best" in table


def test_bench_audio_command_runs_each_engine_in_its_own_process(saved):
    _, folder = saved
    proc = subprocess.run([sys.executable, "-m", "mmsdk.cli", "bench", "--audio", "--model", str(folder),
                           "--precisions", "float", "--repeats", "1", "--json", "-"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    run = res["results"]["mmsdk:float"]
    assert list(res["results"]) == ["mmsdk:float"] and len(run["audio_30s_s"]) == 1
    assert res["ratios"]["real_time_factor"] == pytest.approx(30.0 / run["audio_30s_s"][0])
