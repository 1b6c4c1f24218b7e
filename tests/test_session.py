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
    assert len(full) >= 4, full  # the tiny model's greedy reply runs to max_tokens: there is text to cut
    stop = full[2:4]
    cut = asst.generate("abc", max_tokens=20, stop=[stop])
    assert cut == full[:full.find(stop)] and len(cut) < len(full)
    messages = [{"role": "user", "content": "abc"}]
    reply = asst.chat(messages, max_tokens=20)
    assert len(reply.text) >= 4 and reply.finish_reason == "length", reply
    stopped = asst.chat(messages, max_tokens=20, stop=[reply.text[2:4]])
    assert stopped.finish_reason == "stop" and stopped.text == reply.text[:reply.text.find(reply.text[2:4])]


@pytest.mark.parametrize("bad", [{"max_tokens": 0}, {"top_p": 2.0}, {"top_p": 0}, {"temperature": -1},
                                 {"top_k": -1}, {"min_p": 1.5}, {"repetition_penalty": 0}, {"seed": 1.5},
                                 {"topp": 0.5}])
def test_bad_sampling_options_name_the_value_and_what_is_allowed(asst, bad):
    options = {"max_tokens": 4, **bad}
    name, value = next(iter(bad.items()))
    with pytest.raises(mmsdk.InputError, match=f"{name}.*({value!r}|known)") as e:
        asst.generate("abc", **options)
    assert isinstance(e.value, ValueError)


def test_bad_tool_choice_names_the_tools(asst):
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    with pytest.raises(mmsdk.InputError, match="tool_choice.*'mul'.*tools offered: add"):
        asst.chat([{"role": "user", "content": "2+2"}], tools=[add], tool_choice="mul")
    with pytest.raises(mmsdk.InputError, match="tool_choice.*'required'.*no tools"):
        asst.chat([{"role": "user", "content": "2+2"}], tool_choice="required")


@pytest.mark.parametrize("bad", [{"dtype": "float16"}, {"quantize": "int3"}, {"offload": "gpu"}, {"threads": 0}])
def test_bad_load_options_name_the_value_and_what_is_allowed(bad):
    name, value = next(iter(bad.items()))
    with pytest.raises(mmsdk.InputError, match=f"{name} must be .*got {value!r}"):
        mmsdk.load("/nonexistent-is-not-reached", **bad)  # options are checked before the path


def test_count_tokens(asst):
    assert asst.count_tokens("") == 0
