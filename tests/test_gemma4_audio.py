"""Gemma 4's audio encoder against transformers': log-mel features, the conformer tower with its
embedder, a clip through `chat` (prefill logits and greedy text), and a clip over 30 s through
`transcribe_audio`, window by window, on a tiny random checkpoint."""
import numpy as np
import pytest
import torch

from mmsdk import media
from mmsdk.chat_format_gemma4 import render_messages
from mmsdk.decoder.kv_cache import make_cache
from mmsdk.encoders.gemma4_audio import log_mel
from mmsdk.speech_gemma3n import seam_overlap, transcribe, transcription_prompt
from mmsdk.speech_windows import voiced_windows

pytestmark = pytest.mark.usefixtures("mmsdk_cache")
AUDIO_ID = 203


def _noise(seconds, seed):
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)



def _reference_inputs(samples):
    from transformers import Gemma4AudioFeatureExtractor

    return Gemma4AudioFeatureExtractor()([samples], return_tensors="pt")


@pytest.mark.parametrize("seconds", [2.02, 0.44])  # 51 and 11 tokens: chunks of 12 cut mid-way
def test_features_and_tower_match_transformers(gemma4_media, seconds):
    """Features within float32 rounding (the same numpy operations: 0.0 seen) and the same frame
    mask; soft tokens within 1e-5 (1.5e-6 seen), with linear layers whose clip ranges bite."""
    ref, asst = gemma4_media
    tower = asst.encoders.gemma4_audio
    samples = _noise(seconds, 0)
    want = _reference_inputs(samples)
    mel, valid = log_mel(samples)
    assert np.abs(mel - want["input_features"][0].numpy()).max() <= 1e-5
    assert valid.tolist() == want["input_features_mask"][0].tolist()
    with torch.no_grad():
        expected = ref.model.get_audio_features(want["input_features"], want["input_features_mask"])
        got, keep = tower(want["input_features"], want["input_features_mask"])
        assert keep.tolist() == expected.attention_mask.tolist()
        assert (got - expected.pooler_output)[keep].abs().max() <= 1e-5
        q = tower.layers[0].self_attn.q_proj
        q.clipped = False
        try:
            unclipped = tower(want["input_features"], want["input_features_mask"])[0]
            assert (unclipped - expected.pooler_output)[keep].abs().max() > 1e-3  # 100x the tolerance
        finally:
            q.clipped = True


def _reference_reply(ref, asst, ids, samples, n=8):
    f = _reference_inputs(samples)
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), input_features=f["input_features"],
                           input_features_mask=f["input_features_mask"], max_new_tokens=n, do_sample=False,
                           eos_token_id=None)[0, len(ids):].tolist()
    cut = next((i for i, t in enumerate(out) if t in asst.tokenizer.eos_ids), len(out))
    return asst.tokenizer.decode(out[:cut])


def test_audio_chat_matches_transformers(gemma4_media):
    """25 placeholders a second between <|audio> and <audio|>, as the processor writes them; prefill
    logits within 1e-4 (1.7e-5 seen) and the greedy reply equal to transformers' generate."""
    ref, asst = gemma4_media
    samples = _noise(3.0, 1)
    messages = [{"role": "user", "content": [{"type": "audio", "audio": (samples, 16000)},
                                             {"type": "text", "text": "w7"}]}]
    p = media.encode_prompt(asst.model, asst.tokenizer, asst.encoders, *render_messages(messages))
    start = p.ids.index(204)
    assert p.ids[start:start + 77] == [204, *[AUDIO_ID] * 75, 205]
    f = _reference_inputs(samples)
    ids = torch.tensor([p.ids])
    with torch.no_grad():
        want = ref(input_ids=ids, input_features=f["input_features"], input_features_mask=f["input_features_mask"]).logits
        got = asst.model.logits(asst.model(ids, make_cache(asst.config), torch.arange(ids.shape[1]), embeds=p.embeds))
    assert (got - want).abs().max() <= 1e-4
    assert asst.chat(messages, max_tokens=8).text == _reference_reply(ref, asst, p.ids, samples)


def test_long_audio_is_transcribed_window_by_window(gemma4_media):
    """A 41 s clip (over the 30 s one feature window holds): the model's transcription (what
    `transcribe_audio` runs, here with 6 tokens a window) cuts it at the quiet point into windows,
    each transcribed as transformers transcribes that window alone."""
    ref, asst = gemma4_media
    samples = np.concatenate([_noise(22, 2), np.zeros(16000, np.float32), _noise(18, 3)])
    windows = list(voiced_windows(samples))
    assert len(windows) == 2 and all(len(chunk) <= 30 * 16000 for _, chunk in windows)
    words = []
    for _, chunk in windows:
        messages = [{"role": "user", "content": [{"type": "audio", "audio": (chunk, 16000)},
                                                 {"type": "text", "text": transcription_prompt(None)}]}]
        ids = media.encode_prompt(asst.model, asst.tokenizer, asst.encoders, *render_messages(messages)).ids
        new = _reference_reply(ref, asst, ids, chunk, 6).split()
        words += new[seam_overlap(words, new):]
    transcript = transcribe(asst, (samples, 16000), max_tokens=6)
    assert transcript.text == " ".join(words) and transcript.segments[-1][1] == pytest.approx(41.0, abs=0.05)
