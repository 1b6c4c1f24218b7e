"""Document question answering: `DocumentIndex` (a persistent, hybrid-searchable SQLite index) and
`answer()`, which grounds the assistant's reply in retrieved passages and cites them."""
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .embedder import default_embedder
from .rag.embedder import Embedder
from .rag.errors import DocumentError
from .rag.rerank import Reranker
from .rag.indexer import index_file, index_files, index_text
from .rag.prompt import INSTRUCTION, NOT_FOUND, build_completion_prompt, build_prompt, cited, echoes
from .rag.search import MODES, Hit, search
from .rerank import QueryLikelihood
from .rag.store import Store

__all__ = ["DocumentIndex", "Hit", "Answer", "answer", "MIN_SIMILARITY", "MIN_SUPPORT"]
log = logging.getLogger(__name__)

# Cosine floor below which a passage does not count as relevant: midway between the best hit of
# off-topic questions (max 0.244) and of answerable ones (min 0.297) in tests/eval/eval_rag.py.
MIN_SIMILARITY = 0.27
# Cosine floor for the best sentence (or sentence pair) of the kept passages. 0 leaves declining to
# MIN_SIMILARITY; `tests/eval/eval_rag.py --answers` prints the calibrated value (answerable declined <= 10%).
MIN_SUPPORT = 0.0


@dataclass(frozen=True)
class Answer:
    text: str
    citations: list[Hit] = field(default_factory=list)  # citations[n - 1] is source [n] in the text
    mode: str = "model"  # "model" (its reply), "extractive" (quoted passages) or "declined"


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
        built_with, name = self._store.get_meta("embedder"), getattr(self.embedder, "name", None)
        if built_with and name and built_with != name:
            self._store.close()
            raise InputError(f"document index {str(self.path)!r} was built with the embedder {built_with!r}, not "
                             f"{name!r}: vectors of two embedders do not compare; open it with {built_with!r} "
                             "or index into a new file")

    def add(self, path) -> int:
        """Index a .txt, .md, .html or .pdf file; return the chunks written (0 if it is unchanged)."""
        try:
            return index_file(self._store, path, self.embedder, **self._chunking)
        except DocumentError as e:
            raise InputError(f"cannot index {e.path!r}: {e.reason}") from e

    def add_many(self, paths) -> list[int | InputError]:
        """Index several files as `add` does, their chunks embedded together (fuller batches, less
        padding: faster than a file at a time). One result per path: the chunks written, or the
        `InputError` that file gave; one bad file does not stop the others."""
        return [InputError(f"cannot index {r.path!r}: {r.reason}") if isinstance(r, DocumentError) else r
                for r in index_files(self._store, list(paths), self.embedder, **self._chunking)]

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

    def search(self, query: str, k: int = 5, mode: str = "hybrid", *, reranker: Reranker | None = None,
               rerank_top: int = 10) -> list[Hit]:
        """Best `k` passages; `mode` is "hybrid" (vector + BM25 by reciprocal rank fusion), "vector"
        or "keyword". A `reranker` (`fn(query, passages) -> scores`, e.g. `mmsdk.rerank.QueryLikelihood(asst)`)
        reorders the best `rerank_top` first; `Hit.rerank_score` is its score."""
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if isinstance(rerank_top, bool) or not isinstance(rerank_top, int) or rerank_top < 1:
            raise InputError(f"rerank_top must be a positive int, got {rerank_top!r}")
        return search(self._store, query, self.embedder, k=k, mode=mode, reranker=reranker, rerank_top=rerank_top)

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
           min_similarity: float = MIN_SIMILARITY, min_support: float = MIN_SUPPORT, rerank: int = 0) -> Answer:
    """Answer `question` from the `k` best passages of `index`, citing them as [n].

    Passages less similar to the question than `min_similarity` are dropped; when none is left, or
    no sentence of them reaches `min_support`, the model is not called and the answer says it
    cannot be found. An instruction-tuned model answers in a chat turn; a base model completes an
    "Answer:" line, followed by the quoted window of its cited passage that best supports it. A reply that
    echoes the prompt or cites no source is replaced by the three best-supported windows of the passages,
    quoted with their citations. `rerank=N` reorders the best N passages by
    the model's own likelihood of the question (`mmsdk.rerank.QueryLikelihood`) before the `k` are taken."""
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
        raise InputError(f"rerank must be a number of passages (0 for none), got {rerank!r}")
    # Greedy replies drafted from the passages' n-grams (same text, fewer passes: answers quote them)
    draft = getattr(asst, "draft", None) or "lookup"
    tuned = getattr(asst, "instruction_tuned", False)
    reranker = QueryLikelihood(asst) if rerank else None
    hits = [h for h in index.search(question, k=k, reranker=reranker, rerank_top=rerank or 10)
            if h.similarity is not None and h.similarity >= min_similarity]
    support = supporting_sentences(question, hits, index.embedder)
    if not support or support[0].score < min_support:
        log.info("no passage supports %r (similarity floor %.2f, support floor %.2f)", question, min_similarity,
                 min_support)
        return Answer(NOT_FOUND, [], "declined")
    passages = [(h.source, h.location, h.text) for h in hits]
    if tuned:
        reply = asst.chat([{"role": "user", "content": build_prompt(question, passages)}], max_tokens=max_tokens,
                          temperature=0, draft=draft)
        text, told = reply.text.strip(), f"{INSTRUCTION}\nQuestion: {question}"
    else:  # a base model continues text: one line after "Answer:", sources never parsed as control tokens
        text = asst.generate(build_completion_prompt(question, passages), max_tokens=min(max_tokens, 64),
                             stop=["\n"], temperature=0, parse_special=False, draft=draft).strip()
        text, told = _cite_supported(text, hits), f"Question: {question}"
    if text == NOT_FOUND:
        return Answer(NOT_FOUND, [], "declined")
    if not text or echoes(text, told) or not cited(text, len(hits)):
        log.info("model reply %r echoes the prompt or cites nothing; quoting the passages instead", text[:80])
        return Answer(quote(support), hits, "extractive")
    if not tuned:
        text = _with_evidence(text, support, cited(text, len(hits)))
    return Answer(text, hits, "model")


@dataclass(frozen=True)
class Sentence:
    score: float  # cosine to the question
    source: int   # which passage, from 1 as cited
    text: str
    first: int = 0  # the passage's sentences it spans, first..last
    last: int = 0


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def sentences(text: str) -> list[str]:
    """A passage's sentences (two words or more): paragraphs split at sentence ends, wrapped lines joined."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        out += [s for s in _SENTENCE_END.split(" ".join(para.split())) if len(s.split()) >= 2]
    return out


def supporting_sentences(question: str, hits: list[Hit], embed: Embedder) -> list[Sentence]:
    """Every sentence (and pair of neighbouring sentences) of the passages, ranked by the embedder's
    cosine to the question, best first."""
    found = []
    for n, hit in enumerate(hits, start=1):
        sents = sentences(hit.text)
        found += [(n, s, i, i) for i, s in enumerate(sents)]
        found += [(n, f"{a} {b}", i, i + 1) for i, (a, b) in enumerate(zip(sents, sents[1:]))]
    if not found:
        return []
    vectors = embed([question] + [s for _, s, *_ in found])
    scores = vectors[1:] @ vectors[0]
    ranked = sorted(zip(scores.tolist(), found), key=lambda x: -x[0])
    return [Sentence(score, n, s, first, last) for score, (n, s, first, last) in ranked]


def quote(support: list[Sentence], n: int = 3) -> str:
    """The `n` best-supported windows that share no sentence, each quoted with its citation, best first.
    Three: on the RAG eval the answering phrase is in the best window for 40% of the questions, in one of
    the best two for 50%, of the best three for 58% (~90 words, against ~150 for quoting the top passage
    whole, which holds it for 62%; `tests/eval/eval_rag.py --answers`)."""
    chosen: list[Sentence] = []
    for s in support:
        if not any(c.source == s.source and s.first <= c.last and c.first <= s.last for c in chosen):
            chosen.append(s)
            if len(chosen) == n:
                break
    return " ".join(f'"{c.text}" [{c.source}]' for c in chosen)


def _with_evidence(text: str, support: list[Sentence], sources: list[int]) -> str:
    """A base model's line followed by the best-supported window of the passages it cites, quoted: its
    own words are often right but loose, and the quote lets the reader check them (unless the line
    already holds it)."""
    best = next((s for s in support if s.source in sources), None)
    if best is None or " ".join(best.text.split()).lower() in " ".join(text.split()).lower():
        return text
    return f'{text}\n\n"{best.text}" [{best.source}]'


def _cite_supported(text: str, hits: list[Hit]) -> str:
    """A base model's line with the citation it cannot write: [n] when passage n holds its words."""
    words = set(re.findall(r"\w+", text.lower()))
    if not words or cited(text, len(hits)):
        return text
    for n, hit in enumerate(hits, start=1):
        held = words & set(re.findall(r"\w+", hit.text.lower()))
        if len(held) >= 0.9 * len(words) and len(words) >= 4:
            return f"{text} [{n}]"
    return text
