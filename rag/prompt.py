"""The grounded prompts. An instruction-tuned model gets a chat turn: numbered sources, the
question, the instruction to answer only from them and cite them as [n]. A base model cannot follow
instructions, only continue text: it gets the sources and "Question: ... Answer:" to complete on one line."""
import re

NOT_FOUND = "I could not find the answer in the indexed documents."
INSTRUCTION = ("Answer the question using only the numbered sources below. Cite the sources you use "
               "as [1], [2], ... If the sources do not contain the answer, reply exactly: "
               f'"{NOT_FOUND}"')
_CITATION = re.compile(r"\[(\d+)\]")


def _sources(passages: list[tuple[str, str, str]]) -> str:
    blocks = []
    for n, (source, location, text) in enumerate(passages, start=1):
        where = f"{source} ({location})" if location else source
        blocks.append(f"[{n}] {where}\n{text.strip()}")
    return "\n\n".join(blocks)


def build_prompt(question: str, passages: list[tuple[str, str, str]]) -> str:
    """The chat prompt; `passages` are (source, location, text), their order gives the numbers [1], [2], ..."""
    return f"{INSTRUCTION}\n\n{_sources(passages)}\n\nQuestion: {question.strip()}\nAnswer:"


def build_completion_prompt(question: str, passages: list[tuple[str, str, str]]) -> str:
    """The base-model prompt: the sources, then a line to complete."""
    return f"{_sources(passages)}\n\nQuestion: {' '.join(question.split())}\nAnswer:"


def cited(text: str, n_sources: int) -> list[int]:
    """The source numbers `text` cites that exist, in order of first citation."""
    return list(dict.fromkeys(int(m) for m in _CITATION.findall(text) if 1 <= int(m) <= n_sources))


def echoes(answer: str, prompt_text: str, n: int = 5) -> bool:
    """Whether `answer` repeats `n` words in a row of `prompt_text` (the instruction or the question):
    a small model that did not answer copies what it was told."""
    words = re.findall(r"\w+", answer.lower())
    said = " " + " ".join(re.findall(r"\w+", prompt_text.lower())) + " "
    if 0 < len(words) < n:
        return f" {' '.join(words)} " in said
    return any(f" {' '.join(words[i:i + n])} " in said for i in range(len(words) - n + 1))
