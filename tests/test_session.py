"""Sessions keep the KV cache between turns and give the same tokens as a fresh prefill."""
import pytest

import mmsdk
from _tiny import write_tiny_gemma3
from mmsdk.chat_format import START, render_turn
from mmsdk.decoder.generate import generate_step
from mmsdk.decoder.kv_cache import make_cache
from mmsdk.decoder.sampling import make_sampler


@pytest.fixture(scope="module")
def asst(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-session")
    write_tiny_gemma3(folder, seed=3)
    return mmsdk.load(folder)


def fresh_greedy(asst, ids, n):
    steps = generate_step(asst.model, ids, make_cache(asst.config), make_sampler())
    return [next(steps) for _ in range(n)]


def test_first_turn_equals_chat(asst):
    r = asst.session().send("abc", max_tokens=8)
    c = asst.chat([{"role": "user", "content": "abc"}], max_tokens=8)
    assert r.text == c.text and r.usage.completion_tokens == c.usage.completion_tokens


def test_second_turn_reuses_cache_and_matches_full_recompute(asst):
    s = asst.session(system="be brief")
    s.send("the cat", max_tokens=4)
    before, cached = len(s.ids), s.n_cached
    turn = asst.tokenizer.encode(render_turn("user", "then a dog") + f"{START}model\n", add_bos=False)
    r = s.send("then a dog", max_tokens=7)
    assert r.usage.prompt_tokens == before - cached + len(turn)  # only the new tokens were fed
    prompt = s.ids[:before] + turn
    n = r.usage.completion_tokens
    assert s.ids[len(prompt):len(prompt) + n] == fresh_greedy(asst, prompt, n)


def test_clone_forks_independently(asst):
    s = asst.session()
    s.send("abc", max_tokens=4)
    fork = s.clone()
    assert s.send("def", max_tokens=6).text == fork.send("def", max_tokens=6).text
    fork.send("xyz", max_tokens=3)
    assert fork.ids != s.ids
    assert s.caches[0].k.data_ptr() != fork.caches[0].k.data_ptr()


def test_stop_strings_and_streaming(asst):
    full = asst.generate("abc", max_tokens=20)
    pieces = list(asst.stream("abc", max_tokens=20))
    assert "".join(pieces) == full
    if len(full) > 4:
        stop = full[2:4]
        cut = asst.generate("abc", max_tokens=20, stop=[stop])
        assert cut == full[:full.find(stop)]


def test_max_tokens_zero_and_count_tokens(asst):
    assert asst.generate("abc", max_tokens=0) == ""
    assert asst.count_tokens("") == 0
