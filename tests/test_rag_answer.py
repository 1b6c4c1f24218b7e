"""answer(): a grounded prompt with numbered sources that fits the model (a chat turn for an
instruction-tuned model, a line to complete for a base one), citations in the same order, quoting
the passages when the reply echoes the prompt or cites nothing, and no model call when nothing
relevant is retrieved. The bundled model answers; a thin wrapper records what it was asked."""
import pytest

from mmsdk.documents import MIN_SIMILARITY, Answer, DocumentIndex, Sentence, _with_evidence, answer, quote, sentences
from mmsdk.rag.prompt import NOT_FOUND, cited, echoes


class RecordingAssistant:
    """The real assistant, with each chat / generate call's input and sampling kept for inspection;
    `instruction_tuned` may be set to drive the chat path with the bundled base model."""

    def __init__(self, asst, instruction_tuned=None):
        self.asst, self.calls = asst, []
        self.instruction_tuned = asst.instruction_tuned if instruction_tuned is None else instruction_tuned

    def chat(self, messages, **sampling):
        self.calls.append((messages, sampling))
        return self.asst.chat(messages, **sampling)

    def generate(self, prompt, **sampling):
        self.calls.append((prompt, sampling))
        return self.asst.generate(prompt, **sampling)


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


def test_base_model_completes_an_answer_line(index, asst):
    assert not asst.instruction_tuned  # the bundled 270M is a base model
    result = answer(asst, "How long is the kettle warranty?", index, k=2, max_tokens=24)
    assert isinstance(result, Answer) and result.text
    assert [h.source for h in result.citations][0] == "kettle-manual"
    (prompt, sampling), = asst.calls
    assert sampling["temperature"] == 0 and sampling["stop"] == ["\n"] and sampling["parse_special"] is False
    assert prompt.startswith("[1] kettle-manual (Kettle > Warranty)\nThe kettle is covered for two years")
    assert prompt.endswith("\n\nQuestion: How long is the kettle warranty?\nAnswer:")
    assert "Cite the sources" not in prompt  # no instruction a base model would only repeat
    assert all(h.similarity >= MIN_SIMILARITY for h in result.citations)
    assert not echoes(result.text, prompt.rsplit("\n\n", 1)[-1]) and cited(result.text, 2)
    # the model's own line, then the cited passage's words that support it; or the passages quoted
    assert "covered for two years" in result.text


@pytest.mark.slow
def test_instruction_tuned_model_gets_the_grounded_chat_turn(index, bundled_asst):
    asst = RecordingAssistant(bundled_asst, instruction_tuned=True)
    result = answer(asst, "How long is the kettle warranty?", index, k=2, max_tokens=24)
    (messages, sampling), = asst.calls
    prompt = messages[0]["content"]
    assert messages[0]["role"] == "user" and sampling["temperature"] == 0
    assert prompt.startswith("Answer the question using only the numbered sources below.")
    assert "[1] kettle-manual (Kettle > Warranty)\nThe kettle is covered for two years" in prompt
    assert prompt.rstrip().endswith("Question: How long is the kettle warranty?\nAnswer:")
    # The base model behind it cannot follow the instruction: whatever it wrote, the answer cites.
    assert cited(result.text, 2) and not echoes(result.text, prompt.split("\n\n")[0])
    if result.mode == "extractive":
        assert result.text.startswith('"The kettle is covered for two years from the date of purchase." [1]')


def test_echo_and_citation_checks():
    instruction = "Answer the question using only the numbered sources below. Cite the sources you use"
    assert echoes("Answer the question using only the numbered sources", instruction)
    assert not echoes("The kettle is covered for two years [1]", instruction)
    assert cited("two years [2], see [1] and [9]", 2) == [2, 1]
    assert sentences("The first one is here.\nIt wraps around. Second one\nhere!\n\nok\n\nimport pdb") == \
        ["The first one is here.", "It wraps around.", "Second one here!", "import pdb"]


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


def test_quotes_windows_that_share_no_sentence():
    support = [Sentence(0.9, 1, "A b. C d.", 0, 1), Sentence(0.8, 1, "C d.", 1, 1), Sentence(0.7, 2, "E f.", 0, 0),
               Sentence(0.6, 1, "G h.", 2, 2)]
    assert quote(support, n=2) == '"A b. C d." [1] "E f." [2]'
    assert quote(support, n=1) == '"A b. C d." [1]'
    assert quote(support) == '"A b. C d." [1] "E f." [2] "G h." [1]'  # three by default
    # the evidence comes from a passage the line cites, and is not repeated when the line holds it
    assert _with_evidence("Two years. [2]", support, [2]) == 'Two years. [2]\n\n"E f." [2]'
    assert _with_evidence('It says "E f." [2]', support, [2]) == 'It says "E f." [2]'
    assert _with_evidence("Two years. [3]", support, [3]) == "Two years. [3]"
