"""Indexing: load → chunk → embed → store, one source per transaction. Embedding runs before the
transaction opens, so the write lock is held only for the inserts."""
import hashlib
from pathlib import Path

from .chunking import chunk_sections
from .embedder import Embedder
from .errors import DocumentError
from .loaders import Section, load, loader_for, split_headings
from .store import Store


def _write(store: Store, source: str, digest: str, sections: list[Section], embed: Embedder, **chunking) -> int:
    chunks = chunk_sections(sections, **chunking)
    if not chunks:
        raise DocumentError(source, "no text to index")
    vectors = embed([c.embedding_text() for c in chunks])
    dim = store.get_meta("dim")
    if dim is not None and int(dim) != vectors.shape[1]:
        raise DocumentError(source, f"the index holds {dim}-dimensional vectors (embedder "
                                    f"{store.get_meta('embedder') or 'unnamed'}) but this embedder gives "
                                    f"{vectors.shape[1]}; open it with the embedder it was built with, "
                                    "or use a new file")
    store.replace_source(source, digest, chunks, vectors, getattr(embed, "name", None))
    return len(chunks)


def index_file(store: Store, path, embed: Embedder, **chunking) -> int:
    """Index a file under its absolute path; return the number of chunks written, 0 when unchanged."""
    path = Path(path).expanduser().resolve()
    loader_for(path)  # type and existence first, so the error says what is wrong
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise DocumentError(path, f"cannot read file ({e.strerror or e})") from e
    if store.source_hash(str(path)) == digest:
        return 0
    return _write(store, str(path), digest, load(path), embed, **chunking)


def index_text(store: Store, text: str, source: str, embed: Embedder, **chunking) -> int:
    """Index raw text under the name `source` (Markdown-style headings are honoured)."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if store.source_hash(source) == digest:
        return 0
    return _write(store, source, digest, split_headings(text, atx=True), embed, **chunking)
