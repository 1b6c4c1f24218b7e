"""Document question answering: `DocumentIndex` (a persistent, hybrid-searchable SQLite index) and
`answer()`, which grounds the assistant's reply in retrieved passages and cites them."""
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .rag.embedder import Embedder, default_embedder
from .rag.errors import DocumentError
from .rag.indexer import index_file, index_text
from .rag.prompt import NOT_FOUND, build_prompt
from .rag.search import MODES, Hit, search
from .rag.store import Store

__all__ = ["DocumentIndex", "Hit", "Answer", "answer", "MIN_SIMILARITY"]
log = logging.getLogger(__name__)

# Cosine floor below which a passage does not count as relevant: midway between the best hit of
# off-topic questions (max 0.244) and of answerable ones (min 0.297) in tests/eval/eval_rag.py.
MIN_SIMILARITY = 0.27


@dataclass(frozen=True)
class Answer:
    text: str
    citations: list[Hit] = field(default_factory=list)  # citations[n - 1] is source [n] in the text


class DocumentIndex:
    """One SQLite file of sources, chunks, vectors and a BM25 index.

    `embedder` is any `Callable[[list[str]], np.ndarray]` returning L2-normalized rows; by default
    the bundled all-MiniLM-L6-v2, loaded on first use. Chunking is `chunk_tokens` tokens (words and
    punctuation marks) with `overlap` tokens shared between neighbours.
    """

    def __init__(self, path, embedder: Embedder | None = None, *, chunk_tokens: int = 200, overlap: int = 40):
        self.path = Path(path)
        self.embedder = embedder or default_embedder()
        self._chunking = {"max_tokens": chunk_tokens, "overlap": overlap}
        try:
            self._store = Store(self.path)
        except Exception as e:  # sqlite3.DatabaseError and OSError alike: name the file
            raise InputError(f"cannot open document index {str(self.path)!r}: {e}") from e

    def add(self, path) -> int:
        """Index a .txt, .md, .html or .pdf file; return the chunks written (0 if it is unchanged)."""
        try:
            return index_file(self._store, path, self.embedder, **self._chunking)
        except DocumentError as e:
            raise InputError(f"cannot index {e.path!r}: {e.reason}") from e

    def add_text(self, text: str, *, source: str) -> int:
        """Index `text` under the name `source`; re-adding the same text does nothing."""
        try:
            return index_text(self._store, text, source, self.embedder, **self._chunking)
        except DocumentError as e:
            raise InputError(f"cannot index {e.path!r}: {e.reason}") from e

    def remove(self, source) -> bool:
        """Delete every chunk of a source (a path as added, or an `add_text` name)."""
        return any(self._store.remove_source(name) for name in self._names(source))

    def sources(self) -> list[str]:
        return self._store.sources()

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """Best `k` passages; `mode` is "hybrid" (vector + BM25 by reciprocal rank fusion), "vector"
        or "keyword"."""
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        return search(self._store, query, self.embedder, k=k, mode=mode)

    def close(self):
        self._store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"DocumentIndex({str(self.path)!r}, {len(self.sources())} sources)"

    def _names(self, source) -> list[str]:
        """Names a source may be stored under: as given, or as the absolute path `add` stores."""
        names = [str(source)]
        resolved = str(Path(source).expanduser().resolve())
        return names + [resolved] if resolved != names[0] else names


def answer(asst, question: str, index: DocumentIndex, k: int = 5, *, max_tokens: int = 256,
           min_similarity: float = MIN_SIMILARITY) -> Answer:
    """Answer `question` from the `k` best passages of `index`, citing them as [n].

    Passages less similar to the question than `min_similarity` are dropped; when none is left,
    the model is not called and the answer says it cannot be found."""
    hits = [h for h in index.search(question, k=k) if h.similarity is not None and h.similarity >= min_similarity]
    if not hits:
        log.info("no passage reaches similarity %.2f for %r", min_similarity, question)
        return Answer(NOT_FOUND, [])
    prompt = build_prompt(question, [(h.source, h.location, h.text) for h in hits])
    reply = asst.chat([{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0)
    return Answer(reply.text.strip(), hits)
