"""Log-probabilities: `asst.score` against transformers' log-softmax on a small random model (whole
text and strided windows), against the bundled model's own forward, and `logprobs=True` on
generation (greedy tokens are the most likely ones, and agree with `score` of the same text)."""
import math

import pytest
import torch

import mmsdk
from _tiny import write_tiny_gemma3
from mmsdk import InputError

TEXT = "the cat and the hat. a bat, the rat! in an inn, he sat on the mat. then she ran to the sea, the end."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_score")
    ref = write_tiny_gemma3(folder)  # sliding window 8: windows longer than 8 cross both layer kinds
    return ref, mmsdk.load(folder, dtype="float32")


def reference_logprobs(ref, ids: list[int]) -> torch.Tensor:
    """transformers' log p(ids[t] | ids[:t]) for t >= 1."""
    with torch.inference_mode():
        logp = ref(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_score_is_transformers_log_softmax(tiny):
    ref, asst = tiny
    ids = asst.tokenizer.encode(TEXT, add_bos=False)
    s = asst.score(TEXT)
    assert s.tokens == ids and len(s.logprobs) == len(ids) > 40
    want = reference_logprobs(ref, [asst.tokenizer.bos_id, *ids])
    # float32 through 7 layers: ~1e-6; a wrong position, mask or target id moves these by >1e-2
    torch.testing.assert_close(torch.tensor(s.logprobs), want, atol=1e-4, rtol=1e-4)
    assert s.perplexity == pytest.approx(math.exp(-want.mean().item()), rel=1e-4)
    assert asst.score(ids).logprobs == s.logprobs  # ids in, same path: the same numbers


def test_score_windows_follow_the_documented_stride(tiny):
    """window=16: the first window scores tokens 0..14, then windows start every 8 text tokens with
    BOS and score only what the one before did not; each score is transformers' on that window."""
    ref, asst = tiny
    ids = asst.tokenizer.encode(TEXT, add_bos=False)
    s = asst.score(ids, window=16)
    assert len(s.logprobs) == len(ids)
    bos = asst.tokenizer.bos_id
    whole = reference_logprobs(ref, [bos, *ids])
    torch.testing.assert_close(torch.tensor(s.logprobs[:15]), whole[:15], atol=1e-4, rtol=1e-4)
    for t in (15, 20, 22, 23, len(ids) - 1):  # later windows start at 8, 16, ...; the one scoring t:
        start = 8 * ((t - 15) // 8) + 8
        want = reference_logprobs(ref, [bos, *ids[start:t + 1]])[-1]
        assert s.logprobs[t] == pytest.approx(want.item(), abs=1e-4), t
    assert abs(s.logprobs[20] - whole[20].item()) > 1e-3  # the shorter context is really used


def test_score_on_the_bundled_model_is_its_own_forward(bundled_asst):
    """The bundled GGUF as loaded by default (quantized layouts): score equals the log-softmax of one
    forward of the same model over BOS + text."""
    from mmsdk.decoder.kv_cache import make_cache

    asst = bundled_asst
    text = "The Python language reference describes the syntax and core semantics of the language."
    s = asst.score(text)
    ids = [asst.tokenizer.bos_id, *s.tokens]
    with torch.inference_mode():
        h = asst.model(torch.tensor([ids]), make_cache(asst.config), torch.arange(len(ids)))
        logp = asst.model.logits(h)[0].float().log_softmax(-1)
    want = logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(s.logprobs), want, atol=1e-3, rtol=1e-3)
    assert s.predicted == logp[:-1].argmax(-1).tolist()
    assert 1 < s.perplexity < 200  # real English under a real model


def test_greedy_logprobs_are_the_maximum_and_agree_with_score(bundled_asst):
    asst = bundled_asst
    prompt = "The capital of France is"
    r = asst.generate(prompt, max_tokens=8, logprobs=True, top_logprobs=4)
    assert isinstance(r, mmsdk.Reply) and len(r.logprobs) == r.usage.completion_tokens == 8
    for e in r.logprobs:
        assert e.token_id == e.top[0].token_id and e.logprob == e.top[0].logprob
        assert [t.logprob for t in e.top] == sorted((t.logprob for t in e.top), reverse=True)
        assert e.logprob <= 0
    assert "".join(e.text for e in r.logprobs) == r.text
    # the same tokens scored in one pass: decode-step and prompt kernels agree to quantized rounding
    # (8-bit activations rounded in another order: up to 0.085 nats seen with the AVX2 kernels on the
    # stored Q4_K_M mix); an off-by-one or a wrong token's logprob moves them by nats
    prompt_ids = asst.tokenizer.encode(prompt, add_bos=False)
    s = asst.score(prompt_ids + [e.token_id for e in r.logprobs])
    got = torch.tensor([e.logprob for e in r.logprobs])
    torch.testing.assert_close(torch.tensor(s.logprobs[len(prompt_ids):]), got, atol=0.15, rtol=0)


def test_stream_and_chat_carry_logprobs(bundled_asst):
    asst = bundled_asst
    pieces = list(asst.stream("Once upon a time", max_tokens=4, logprobs=True))
    assert all(isinstance(p, mmsdk.Piece) for p in pieces)
    entries = [e for p in pieces for e in p.logprobs]
    assert len(entries) == 4 and all(e.top == [] for e in entries)
    assert "".join(pieces) == asst.generate("Once upon a time", max_tokens=4)
    reply = asst.chat([{"role": "user", "content": "Say hello."}], max_tokens=3, logprobs=True, top_logprobs=2)
    assert len(reply.logprobs) == reply.usage.completion_tokens and all(len(e.top) == 2 for e in reply.logprobs)
    assert asst.chat([{"role": "user", "content": "Hi"}], max_tokens=1).logprobs is None


def test_bad_arguments(bundled_asst):
    asst = bundled_asst
    with pytest.raises(InputError, match="no tokens"):
        asst.score("")
    with pytest.raises(InputError, match="window"):
        asst.score("some text", window=1)
    with pytest.raises(InputError, match="outside the vocabulary"):
        asst.score([5, 10**9])
    with pytest.raises(InputError, match="top_logprobs"):
        asst.generate("x", max_tokens=1, top_logprobs=-1)
