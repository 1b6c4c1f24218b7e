"""The bundled real Gemma 3 270M GGUF: parity with transformers, generation, the CLI."""
import subprocess
import sys

import pytest
import torch

import mmsdk
from mmsdk.decoder.kv_cache import make_cache

pytestmark = pytest.mark.slow


def english(n_tokens, tok):
    import pydoc_data.topics as topics

    text = " ".join(topics.topics[k] for k in sorted(topics.topics))
    return tok.encode(text)[:n_tokens]


@pytest.fixture(scope="module")
def float_asst():
    return mmsdk.load(dtype="float32", quantize=None)


@pytest.fixture(scope="module")
def reference(bundled_path):
    from transformers import Gemma3ForCausalLM

    return Gemma3ForCausalLM.from_pretrained(bundled_path.parent, gguf_file=bundled_path.name,
                                             dtype=torch.float32).eval()


@pytest.mark.parametrize("n", [64, 700])  # 700 is past the 512-token window of the local layers
def test_logits_match_transformers(float_asst, reference, n):
    ids = english(n, float_asst.tokenizer)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
        model = float_asst.model
        got = model.logits(model(torch.tensor([ids]), make_cache(model.config), torch.arange(n)))[0]
    assert (got - expected).abs().max().item() <= 1e-3


def test_tokenizer_matches_transformers(float_asst, bundled_path):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(bundled_path.parent, gguf_file=bundled_path.name)
    import pydoc_data.topics as topics

    for text in ["The capital of France is", "  two  spaces\n\nand\ttabs", "émoji 🤖 中文 ünïcödé",
                 topics.topics["for"][:3000], "<start_of_turn>user\nhi<end_of_turn>\n"]:
        assert float_asst.tokenizer.encode(text) == ref(text).input_ids


def test_tokenizer_matches_transformers_on_a_corpus(float_asst, bundled_path):
    """The GGUF's vocabulary as a SentencePiece model (the tokenizer Gemma was trained with) against
    transformers' BPE conversion of it, over the CPython docs: the same ids wherever a text has no
    run of more than 31 spaces. Past the longest space piece the two split a run differently (33
    spaces: SentencePiece and llama.cpp 31 + 2, transformers 16 + 17)."""
    import pydoc_data.topics as topics
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(bundled_path.parent, gguf_file=bundled_path.name)
    texts = [t for t in topics.topics.values() if " " * 32 not in t]
    assert len(texts) > 70
    for text in texts:
        assert float_asst.tokenizer.encode(text, add_bos=False) == ref(text, add_special_tokens=False).input_ids
    tok = float_asst.tokenizer
    assert tok.encode(" " * 33, add_bos=False) == [tok.token_id("\u2581" * 31), tok.token_id("\u2581" * 2)]


def test_tokenizers_copy_keeps_the_ids(float_asst):
    """`as_tokenizers()`, the copy grammar engines take: every piece at its id, control tokens special,
    and the same ids as ours on the docs (runs of 32+ spaces aside, split as transformers does)."""
    import pydoc_data.topics as topics

    tok = float_asst.tokenizer
    hf = tok.as_tokenizers()
    assert hf.get_vocab_size() == tok.vocab_size
    assert all(hf.id_to_token(i) == tok.piece(i) for i in range(0, tok.vocab_size, 97))
    texts = [t for t in topics.topics.values() if " " * 32 not in t][:30] + ["<start_of_turn>user\nhi<end_of_turn>\n"]
    for text in texts:
        assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text, add_bos=False)


def test_generates_paris(float_asst):
    out = float_asst.generate("The capital of France is the city of", max_tokens=8)
    assert "Paris" in out


def test_cli_generate_prints_paris():
    r = subprocess.run([sys.executable, "-m", "mmsdk.cli", "generate", "The capital of France is the city of",
                        "--max-tokens", "8"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_cli_bad_model_is_one_line_error(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("hello")
    r = subprocess.run([sys.executable, "-m", "mmsdk.cli", "generate", "hi", "--model", str(bad)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "x.gguf" in r.stderr and "Traceback" not in r.stderr


def test_count_tokens(float_asst):
    assert float_asst.count_tokens("The capital of France is") == 5  # BOS is not counted


def test_info(float_asst):
    info = float_asst.info
    assert info.family == "gemma3" and "text" in info.modalities
    assert 250e6 < info.parameters < 300e6 and info.context_length == 32768


def test_text_only_model_refuses_images(float_asst):
    with pytest.raises(mmsdk.UnsupportedModalityError, match="Gemma 3 4B"):
        float_asst.describe_image(b"\x89PNG")
