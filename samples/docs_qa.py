"""Document Q&A on-device: index a few files, search them, and ask a question with citations.

    HF_HUB_OFFLINE=1 python samples/docs_qa.py [FILE ...]

With no files it indexes three topics of the Python reference that ships with Python.
"""
import sys
import tempfile
from pathlib import Path

import mmsdk


def main(files: list[str], max_tokens: int = 256):
    with tempfile.TemporaryDirectory() as tmp:
        if not files:
            from pydoc_data.topics import topics

            for name in ("with", "try", "raise"):
                (Path(tmp) / f"{name}.txt").write_text(topics[name], encoding="utf-8")
                files.append(str(Path(tmp) / f"{name}.txt"))
        with mmsdk.DocumentIndex(Path(tmp) / "docs.db") as index:
            for f in files:
                print(f"indexed {f}: {index.add(f)} chunks")

            question = "How do I attach the original exception when raising a new one?"
            for hit in index.search(question, k=3):
                print(f"{hit.score:.4f}  {Path(hit.source).name} ({hit.location}): {hit.text[:70]!r}...")

            result = mmsdk.load().ask(question, index, k=3, max_tokens=max_tokens)
            print("\n" + result.text)
            for n, hit in enumerate(result.citations, start=1):
                print(f"[{n}] {Path(hit.source).name} ({hit.location})")


if __name__ == "__main__":
    main(sys.argv[1:])
