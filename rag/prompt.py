"""The grounded prompt: numbered sources, then the question, with the instruction to answer only
from them and cite them as [n]."""

NOT_FOUND = "I could not find the answer in the indexed documents."


def build_prompt(question: str, passages: list[tuple[str, str, str]]) -> str:
    """`passages` are (source, location, text); their order gives the numbers [1], [2], ..."""
    blocks = []
    for n, (source, location, text) in enumerate(passages, start=1):
        where = f"{source} ({location})" if location else source
        blocks.append(f"[{n}] {where}\n{text.strip()}")
    return (
        "Answer the question using only the numbered sources below. Cite the sources you use "
        "as [1], [2], ... If the sources do not contain the answer, reply exactly: "
        f'"{NOT_FOUND}"\n\n' + "\n\n".join(blocks) + f"\n\nQuestion: {question.strip()}\nAnswer:"
    )
