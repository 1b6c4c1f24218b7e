"""answer(): a grounded prompt with numbered sources, citations in the same order, and no model
call when nothing relevant is retrieved. The bundled model answers; a thin wrapper records what it
was asked."""
import pytest

from mmsdk.documents import MIN_SIMILARITY, Answer, DocumentIndex, answer
from mmsdk.rag.prompt import NOT_FOUND


class RecordingAssistant:
    """The real assistant, with each chat call's messages and sampling kept for inspection."""

    def __init__(self, asst):
        self.asst, self.calls = asst, []

    def chat(self, messages, **sampling):
        self.calls.append((messages, sampling))
        return self.asst.chat(messages, **sampling)


@pytest.fixture
def asst(bundled_asst):
    return RecordingAssistant(bundled_asst)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    idx = DocumentIndex(tmp_path_factory.mktemp("answer") / "a.db")
    idx.add_text("# Kettle\n\n## Warranty\n\nThe kettle is covered for two years from the date of purchase.",
                 source="kettle-manual")
    idx.add_text("# Kettle\n\n## Cleaning\n\nDescale the kettle monthly with white vinegar.", source="kettle-care")
    yield idx
    idx.close()


@pytest.mark.slow
def test_grounded_prompt_and_citations(index, asst):
    result = answer(asst, "How long is the kettle warranty?", index, k=2, max_tokens=24)
    assert isinstance(result, Answer) and result.text
    assert [h.source for h in result.citations][0] == "kettle-manual"
    (messages, sampling), = asst.calls
    assert sampling["temperature"] == 0 and sampling["max_tokens"] > 0
    prompt = messages[0]["content"]
    assert messages[0]["role"] == "user"
    assert "[1] kettle-manual (Kettle > Warranty)\nThe kettle is covered for two years" in prompt
    assert prompt.rstrip().endswith("Question: How long is the kettle warranty?\nAnswer:")
    assert all(h.similarity >= MIN_SIMILARITY for h in result.citations)


def test_nothing_relevant_means_no_model_call(index, asst):
    result = answer(asst, "Who won the football world cup in 2018?", index)
    assert result.text == NOT_FOUND and result.citations == [] and asst.calls == []


def test_empty_index_cannot_answer(tmp_path, asst):
    with DocumentIndex(tmp_path / "empty.db") as idx:
        assert answer(asst, "anything?", idx).text == NOT_FOUND
    assert asst.calls == []


@pytest.mark.slow
def test_public_ask_cites_the_manual(index, bundled_asst):
    result = bundled_asst.ask("How long is the kettle warranty?", index, k=2, max_tokens=24)
    assert result.text and result.citations[0].source == "kettle-manual"
