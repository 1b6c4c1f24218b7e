"""Speculative decoding gives the ids plain greedy decoding gives, and rewinds its caches exactly.

Token ids are compared exactly (they are integers). Caches built by two paths are compared with a
tolerance: a pass of a different number of rows may sum in another order (~1e-6), while a slot
rewound wrongly holds another position's key, off by O(1).
"""
import pydoc_data.topics
import pytest
import torch

import mmsdk
from _tiny import write_tiny_gemma3
from mmsdk import chat_format
from mmsdk.decoder import native
from mmsdk.decoder.generate import generate_step, prefill
from mmsdk.decoder.kv_cache import FullCache, RingCache, make_cache
from mmsdk.decoder.speculative import PromptLookup, make_drafter, speculative_step
from mmsdk.decoder.sampling import make_sampler

REPEATS = "the cat sat on the mat. the cat sat on the hat. the dog sat on the"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-spec")
    write_tiny_gemma3(folder, seed=1)  # sliding window 8: every test below wraps the ring many times
    return mmsdk.load(folder)


@pytest.fixture(scope="module")
def tiny_draft(tmp_path_factory, tiny):
    """The tiny model with its weights nudged: it agrees with the model on most tokens, not all."""
    folder = tmp_path_factory.mktemp("tiny-spec")
    write_tiny_gemma3(folder, seed=1)
    draft = mmsdk.load(folder)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in draft.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3 * p.std())
    return draft


def plain_ids(model, ids, n, caches=None):
    steps = generate_step(model, ids, make_cache(model.config) if caches is None else caches, make_sampler())
    out = [next(steps) for _ in range(n)]
    steps.close()
    return out


def spec_ids(model, ids, n, draft, caches=None):
    stats = {}
    steps = speculative_step(model, ids, make_cache(model.config) if caches is None else caches, make_sampler(),
                             make_drafter(draft, model), max_tokens=n, stats=stats)
    out = [next(steps) for _ in range(n)]
    steps.close()
    return out, stats


def test_lookup_matches_plain_greedy_on_tiny_model_past_the_window(tiny):
    ids = tiny.tokenizer.encode(REPEATS)
    want = plain_ids(tiny.model, ids, 80)
    got, stats = spec_ids(tiny.model, ids, 80, "lookup")
    assert got == want
    assert 0 < stats["accepted"] < stats["drafted"], stats  # drafts were kept and rejected, so rewound


@pytest.mark.parametrize("which", ["nudged", "itself"])
def test_draft_model_matches_plain_greedy(tiny, tiny_draft, which):
    ids = tiny.tokenizer.encode(REPEATS)
    draft = tiny_draft if which == "nudged" else tiny
    got, stats = spec_ids(tiny.model, ids, 48, draft)
    assert got == plain_ids(tiny.model, ids, 48)
    if which == "itself":  # the same model agrees with every draft
        assert stats["accepted"] == stats["drafted"] > 0
    else:
        assert 0 < stats["accepted"] < stats["drafted"], stats


def test_rewind_restores_ring_slots_the_drafts_overwrote(tiny):
    """Keep 1 of 6 drafts: the cache equals one built from the kept rows alone, and the next step's
    logits agree. The 5 rejected positions overwrote ring slots holding keys positions pos+1.. still
    attend, so a rewind that only moved the length back fails here."""
    model = tiny.model
    ids = tiny.tokenizer.encode(REPEATS)
    pos = len(ids)
    rows = [ids[-1], 40, 41, 42, 43, 44, 45]
    spec, ref = make_cache(model.config), make_cache(model.config)
    with torch.inference_mode():
        for caches in (spec, ref):
            prefill(model, ids[:-1], caches, 0)
        saved = [c.checkpoint(len(rows)) for c in spec]
        model(torch.tensor([rows]), spec, torch.arange(pos - 1, pos - 1 + len(rows)))
        for c, s in zip(spec, saved):
            c.rewind(s, pos + 1)
        model(torch.tensor([rows[:2]]), ref, torch.arange(pos - 1, pos + 1))
        assert any(isinstance(c, RingCache) for c in spec) and any(isinstance(c, FullCache) for c in spec)
        for a, b in zip(spec, ref):
            assert a.offset == b.offset == pos + 1
            n = a.k.shape[2] if isinstance(a, RingCache) else a.offset
            if isinstance(a, RingCache):
                assert torch.equal(a.pos, b.pos)  # integer positions: exact
            torch.testing.assert_close(a.k[:, :, :n], b.k[:, :, :n], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(a.v[:, :, :n], b.v[:, :, :n], rtol=1e-4, atol=1e-5)
        step = torch.tensor([[50]]), torch.tensor([pos + 1])
        torch.testing.assert_close(model.logits(model(step[0], spec, step[1])),
                                   model.logits(model(step[0], ref, step[1])), rtol=1e-4, atol=1e-4)


def test_stopping_mid_drafts_leaves_the_caches_of_plain_decoding(tiny):
    """As with plain decoding, a closed generator leaves every yielded token but the last cached."""
    ids = tiny.tokenizer.encode(REPEATS)
    for n in (5, 9, 14):
        spec, plain = make_cache(tiny.config), make_cache(tiny.config)
        got, stats = spec_ids(tiny.model, ids, n, tiny, caches=spec)  # self-drafting: stops inside accepted drafts
        assert got == plain_ids(tiny.model, ids, n, caches=plain)
        for a, b in zip(spec, plain):
            assert a.offset == b.offset == len(ids) + n - 1
            if isinstance(a, RingCache):
                assert torch.equal(a.pos, b.pos)
                torch.testing.assert_close(a.k, b.k, rtol=1e-4, atol=1e-5)


def test_public_api_sessions_and_sampling_fallback(tiny, tiny_draft):
    prompt = REPEATS
    assert tiny.generate(prompt, max_tokens=40, draft="lookup") == tiny.generate(prompt, max_tokens=40)
    assert "".join(tiny.stream(prompt, max_tokens=30, draft=tiny_draft)) == tiny.generate(prompt, max_tokens=30)
    # sampling decodes plainly: the same draws as without a drafter
    assert (tiny.generate(prompt, max_tokens=20, temperature=0.9, seed=3, draft="lookup")
            == tiny.generate(prompt, max_tokens=20, temperature=0.9, seed=3))
    plain, spec = tiny.session(system="be brief"), tiny.session(system="be brief")
    for turn in ("the cat sat on the mat", "the dog sat on the hat"):  # the second turn reuses the caches
        assert spec.send(turn, max_tokens=12, draft="lookup").text == plain.send(turn, max_tokens=12).text
    assert spec.ids == plain.ids and spec.n_cached == plain.n_cached


def test_bad_drafts_are_refused(tiny, bundled_asst):
    with pytest.raises(mmsdk.InputError, match="draft must be"):
        tiny.generate("a", max_tokens=2, draft="ngram")
    with pytest.raises(mmsdk.InputError, match="vocabulary"):
        tiny.generate("a", max_tokens=2, draft=bundled_asst)


def test_prompt_lookup_proposes_the_latest_continuation():
    d = PromptLookup(ngrams=(2, 1), max_draft=3)
    d.begin([5, 6, 7, 8, 5, 6, 9, 1, 5, 6])
    assert d.propose(10) == [9, 1, 5]  # the latest "5 6" continues with 9; capped at max_draft
    assert d.propose(2) == [9, 1]
    d.feedback(proposed=3, accepted=0)  # a miss: k shrinks, drafting pauses a step
    assert d.k == 1 and d.propose(10) == []
    d.extend([9])  # the held-back draft was right: the pause ends
    assert d.propose(10) == [1]  # "6 9" continues with 1
    d.extend([4])
    assert d.propose(10) == []  # "9 4" and "4" never occurred


def _quote_prompt(asst, text: str, ask: str) -> list[int]:
    prompt, _, _ = chat_format.render_messages([{"role": "user", "content": f"{ask}\n\n{text}"}])
    return chat_format.encode(asst.tokenizer, prompt)


@pytest.mark.parametrize("ask", ["Repeat the following text exactly, word for word:",
                                 "Write a short poem about the sea. Ignore this text:"])
def test_bundled_model_lookup_matches_plain_past_the_window(bundled_asst, ask):
    """Real weights, a prompt that quotes and one that does not; prompt plus reply pass the 512-token
    sliding window, so drafts are checked and rewound in a wrapped ring."""
    tok, window = bundled_asst.tokenizer, bundled_asst.config.sliding_window
    text = tok.decode(tok.encode(pydoc_data.topics.topics["import"], add_bos=False)[:window - 40])
    ids = _quote_prompt(bundled_asst, text, ask)
    assert len(ids) < window < len(ids) + 40
    got, stats = spec_ids(bundled_asst.model, ids, 40, "lookup")
    assert got == plain_ids(bundled_asst.model, ids, 40)
    assert stats["drafted"] > 0


@pytest.mark.skipif(not native.available(), reason="needs our C kernels (AVX-512 VNNI): torch's fallback "
                    "rounds a pass's rows to 8 bits on one shared range, so a near-tie can flip between a "
                    "pass of several rows and a one-row step")
def test_bundled_model_drafting_for_itself(bundled_asst):
    ids = bundled_asst.tokenizer.encode("The capital of France is")
    got, stats = spec_ids(bundled_asst.model, ids, 16, bundled_asst)
    assert got == plain_ids(bundled_asst.model, ids, 16)
    assert stats["accepted"] == stats["drafted"] > 0


def test_gemma3n_lookup_matches_plain_greedy(tmp_path, monkeypatch):
    """Gemma 3n's KV-shared layers attend keys the verify pass wrote: a 4-token window, rewound too."""
    from gemma3n_fixtures import hf_text_model, save

    monkeypatch.setenv("MMSDK_CACHE", str(tmp_path / "cache"))
    asst = mmsdk.load(save(hf_text_model(seed=5), tmp_path / "g3n"), dtype="float32")
    ids = asst.tokenizer.encode("w5 w17 w99 w3 w5 w17 w99 w3 w5 w17 w42 w7 w5 w17")
    got, stats = spec_ids(asst.model, ids, 40, "lookup")
    assert got == plain_ids(asst.model, ids, 40)
    assert stats["drafted"] > 0
