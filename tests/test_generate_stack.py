"""The one generation stack (`decoder/generate.py`): the incremental detokenizer costs time linear in
the reply and gives exactly the text a whole decode gives; stop strings are cut in one place; the
streamed text of the bundled model is the decode of the ids it generated."""
from pydoc_data.topics import topics

import pytest
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from mmsdk.decoder.generate import StopStrings, generate, stream_generate
from mmsdk.decoder.kv_cache import make_cache
from mmsdk.decoder.prefix_cache import PrefixCache
from mmsdk.decoder.sampling import make_sampler
from mmsdk.decoder.tokenizer import JsonTokenizer, StreamDecoder

# Prose plus characters Gemma's vocabulary spells in byte-fallback tokens (Egyptian hieroglyphs, rare CJK)
MULTIBYTE = "naïve café — 日本語のテキスト 😀 \U00013000\U00013001 \U0002a6d6 end"


class CountingTokenizer:
    """The real tokenizer, counting the ids each decode call is given (the detokenizer's work)."""

    def __init__(self, tok):
        self.tok, self.decoded = tok, 0
        self.eos_ids = tok.eos_ids

    def decode(self, ids, skip_special=True):
        self.decoded += len(ids)
        return self.tok.decode(ids, skip_special)


def stream_text(tok, ids) -> tuple[str, list[str]]:
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    return "".join(pieces), pieces


@pytest.fixture(scope="module")
def tok(bundled_asst):
    return bundled_asst.tokenizer


def test_detokenizer_work_is_linear_and_exact(tok):
    text = "\n\n".join(topics[k] for k in sorted(topics)[:40]) + MULTIBYTE
    ids = tok.encode(text, add_bos=False)
    assert len(ids) >= 4000
    work = {}
    for n in (1000, 2000, 4000):
        counting = CountingTokenizer(tok)
        streamed, _ = stream_text(counting, ids[:n])
        assert streamed == tok.decode(ids[:n])  # the same text as one decode of every id
        work[n] = counting.decoded
    # Each push decodes a window of a few ids: about 3 per token, so doubling the reply doubles the
    # work. Re-decoding the whole reply per token (the old way) is n^2 / 2: 2,000,000 ids for 2,000.
    assert work[2000] <= 4 * 2000, work
    assert 1.8 <= work[4000] / work[2000] <= 2.2 and 1.8 <= work[2000] / work[1000] <= 2.2, work


def test_detokenizer_holds_back_split_characters(tok):
    ids = tok.encode(MULTIBYTE, add_bos=False)
    byte_tokens = [i for i in ids if tok.piece(i).startswith("<0x")]
    assert len(byte_tokens) >= 4, "the text must exercise byte-fallback tokens"
    streamed, pieces = stream_text(tok, ids)
    assert streamed == MULTIBYTE
    assert not any("\ufffd" in p for p in pieces)  # no half character was let out
    # A reply cut in the middle of a character ends as a whole decode does
    cut = ids[:ids.index(byte_tokens[0]) + 1]
    assert stream_text(tok, cut)[0] == tok.decode(cut)


@pytest.mark.parametrize("kind", ["sentencepiece", "tokenizers"])
def test_detokenizer_keeps_the_space_after_a_skipped_control_token(tok, kind):
    """A control token decodes to nothing; the word after it still gets the space a whole decode gives
    it (the context is the last token that made text, not the control token). A word-level
    `tokenizers` vocabulary, which puts the spaces between words when decoding, shows it."""
    if kind == "tokenizers":
        words = Tokenizer(models.WordLevel({"<unk>": 0, "one": 1, "two": 2, "three": 3}, unk_token="<unk>"))
        words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        words.add_special_tokens([AddedToken("<end_of_turn>", special=True)])
        tok = JsonTokenizer(words, bos_id=0, eos_ids=(4,))
    text = tok.encode("one two three", add_bos=False)
    ids = [text[0], tok.token_id("<end_of_turn>"), *text[1:]]
    assert stream_text(tok, ids)[0] == tok.decode(ids) == "one two three"


def test_stop_strings_across_pieces():
    s = StopStrings(["o w", "xyz"])
    assert s.push("he") == ("he", False)
    assert s.push("llo") == ("ll", False)  # "o" may begin "o w": held back
    assert s.push(" wor") == ("", True)  # the stop string is cut with what follows it
    s = StopStrings("END")
    assert s.push("a E") == ("a ", False) and s.push("x") == ("Ex", False) and s.flush() == ""
    assert StopStrings(()).push("anything") == ("anything", False)


def test_streamed_text_is_the_decode_of_the_generated_ids(bundled_asst):
    a = bundled_asst
    ids = a.tokenizer.encode("The history of the printing press")
    out = generate(a.model, a.tokenizer, ids, make_cache(a.config), make_sampler(), max_tokens=24)
    assert len(out.tokens) == 24 and out.finish_reason == "length"
    assert out.text == a.tokenizer.decode(out.tokens)
    assert "".join(a.stream("The history of the printing press", max_tokens=24)) == out.text  # the Assistant's path
    # A stop string taken from the reply cuts it there, in the stack itself
    stop = out.text[10:16]
    steps = list(stream_generate(a.model, a.tokenizer, ids, make_cache(a.config), make_sampler(), max_tokens=24,
                                 stop=[stop]))
    assert steps[-1].finish_reason == "stop" and "".join(s.text for s in steps) == out.text[:out.text.find(stop)]


def test_prefill_ahead_gives_the_same_reply(bundled_asst):
    """The server feeds a long prompt a chunk per scheduler turn; the reply is the one of a whole prefill."""
    prompt = " ".join(topics["assert"].split() * 4)[:3000]
    whole = bundled_asst._prompt_run(prompt, 6, (), {})
    text = "".join(whole)
    ahead = bundled_asst._prompt_run(prompt, 6, (), {})
    chunks = sum(1 for _ in ahead.prefill_ahead())
    assert whole.prompt_tokens > 512 and chunks == (whole.prompt_tokens - 1) // 256
    assert "".join(ahead) == text and ahead.generated == whole.generated  # the same chunks: the same ids
    assert ahead.prompt_tokens == whole.prompt_tokens


def test_prefix_cache_reuses_a_shared_prefix(bundled_asst):
    """A prompt sharing a long prefix with an earlier one is fed only from where they part, and gives
    the reply a cold prefill in the same chunks gives (the same computation, so the same ids)."""
    a = bundled_asst
    doc = " ".join(topics["assert"].split() * 4)[:1600]
    cache = PrefixCache(chunk=128)
    first = a._prompt_run(doc + "\nQuestion: what is assert for?", 4, (), {})
    assert sum(1 for _ in first.prefill_ahead(prefix_cache=cache)) >= 2
    "".join(first)
    assert cache.stats()["prefixes"] == 2
    warm = a._prompt_run(doc + "\nQuestion: when is it skipped?", 4, (), {})
    fed_warm = sum(1 for _ in warm.prefill_ahead(prefix_cache=cache))
    cold = a._prompt_run(doc + "\nQuestion: when is it skipped?", 4, (), {})
    fed_cold = sum(1 for _ in cold.prefill_ahead(chunk=128))
    assert cache.hits == 1 and cache.hit_tokens >= len(a.tokenizer.encode(doc)) - 128
    assert fed_warm == 0 < fed_cold
    assert "".join(warm) == "".join(cold) and warm.generated == cold.generated
