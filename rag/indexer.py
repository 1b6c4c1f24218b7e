"""Indexing: load → chunk → embed → store, one source per transaction. Embedding runs before the
transaction opens, so the write lock is held only for the inserts.

`index_files` embeds the chunks of several files in one call: the embedder sorts them by length
into full batches, where a file at a time pads each of its few chunks to its longest (on the RAG
eval's 822 chunks, 182k word pieces through MiniLM per file against 155k together)."""
import hashlib
from pathlib import Path

import numpy as np

from .chunking import Chunk, chunk_sections
from .embedder import Embedder
from .errors import DocumentError
from .loaders import Section, load, loader_for, split_headings
from .store import Store


def _chunks(source: str, sections: list[Section], **chunking) -> list[Chunk]:
    chunks = chunk_sections(sections, **chunking)
    if not chunks:
        raise DocumentError(source, "no text to index")
    return chunks


def _write(store: Store, source: str, digest: str, chunks: list[Chunk], vectors: np.ndarray, embed: Embedder) -> int:
    dim = store.get_meta("dim")
    if dim is not None and int(dim) != vectors.shape[1]:
        raise DocumentError(source, f"the index holds {dim}-dimensional vectors (embedder "
                                    f"{store.get_meta('embedder') or 'unnamed'}) but this embedder gives "
                                    f"{vectors.shape[1]}; open it with the embedder it was built with, "
                                    "or use a new file")
    store.replace_source(source, digest, chunks, vectors, getattr(embed, "name", None))
    return len(chunks)


def _read(store: Store, path, **chunking) -> tuple[str, str, list[Chunk]] | None:
    """(source, digest, chunks) of a file under its absolute path, None when it is unchanged."""
    path = Path(path).expanduser().resolve()
    loader_for(path)  # type and existence first, so the error says what is wrong
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise DocumentError(path, f"cannot read file ({e.strerror or e})") from e
    if store.source_hash(str(path)) == digest:
        return None
    return str(path), digest, _chunks(str(path), load(path), **chunking)


def index_files(store: Store, paths, embed: Embedder, *, batch_chunks: int = 512,
                **chunking) -> list[int | DocumentError]:
    """Index files under their absolute paths, embedding up to `batch_chunks` chunks of several files
    per call. One result per path: the chunks written (0 when unchanged), or the `DocumentError`
    that file raised; the other files are indexed all the same."""
    results: list[int | DocumentError] = []
    pending: list[tuple[int, str, str, list[Chunk]]] = []  # (result slot, source, digest, chunks)

    def flush():
        vectors = embed([c.embedding_text() for *_, chunks in pending for c in chunks])
        start = 0
        for slot, source, digest, chunks in pending:
            try:
                results[slot] = _write(store, source, digest, chunks, vectors[start:start + len(chunks)], embed)
            except DocumentError as e:
                results[slot] = e
            start += len(chunks)
        pending.clear()

    for path in paths:
        results.append(0)
        try:
            read = _read(store, path, **chunking)
        except DocumentError as e:
            results[-1] = e
            continue
        if read is not None:
            pending.append((len(results) - 1, *read))
            if sum(len(p[3]) for p in pending) >= batch_chunks:
                flush()
    if pending:
        flush()
    return results


def index_file(store: Store, path, embed: Embedder, **chunking) -> int:
    """Index a file under its absolute path; return the number of chunks written, 0 when unchanged."""
    result = index_files(store, [path], embed, **chunking)[0]
    if isinstance(result, DocumentError):
        raise result
    return result


def index_text(store: Store, text: str, source: str, embed: Embedder, **chunking) -> int:
    """Index raw text under the name `source` (Markdown-style headings are honoured)."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if store.source_hash(source) == digest:
        return 0
    chunks = _chunks(source, split_headings(text, atx=True), **chunking)
    return _write(store, source, digest, chunks, embed([c.embedding_text() for c in chunks]), embed)
