"""One SQLite file (WAL) holding sources with content hashes, chunks, float32 vectors as blobs,
and an FTS5 table for BM25. Each source is written in one transaction, so a crash or a kill
leaves whole sources only."""
import sqlite3
import time
from pathlib import Path

import numpy as np

from .chunking import Chunk

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, hash TEXT NOT NULL,
    n_chunks INTEGER NOT NULL, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, source_id INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL, text TEXT NOT NULL, heading TEXT NOT NULL, location TEXT NOT NULL,
    vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(body, tokenize='porter unicode61');
"""


class Store:
    def __init__(self, path):
        self.path = Path(path)
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE below.
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a kill never corrupts
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(_SCHEMA)
        self._writes = 0
        self._matrix_key, self._matrix = None, (np.zeros(0, np.int64), np.zeros((0, 0), np.float32))

    def close(self):
        self.conn.close()

    def _transaction(self):
        return _Transaction(self)

    # ---- metadata -------------------------------------------------------------------------
    def get_meta(self, key: str):
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # ---- sources --------------------------------------------------------------------------
    def source_hash(self, source: str):
        row = self.conn.execute("SELECT hash FROM sources WHERE path = ?", (source,)).fetchone()
        return row[0] if row else None

    def sources(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT path FROM sources ORDER BY path")]

    def replace_source(self, source: str, content_hash: str, chunks: list[Chunk], vectors: np.ndarray,
                       embedder: str | None = None):
        """Write a source's chunks, replacing any older version, all in one transaction; the first
        write records the vectors' dimension and the embedder's name."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        assert len(chunks) == len(vectors), "one vector per chunk"
        with self._transaction() as conn:
            dim = conn.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
            if embedder:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('embedder', ?)", (embedder,))
            if dim is None:
                conn.execute("INSERT INTO meta VALUES ('dim', ?)", (str(vectors.shape[1]),))
            elif int(dim[0]) != vectors.shape[1]:
                raise ValueError(f"this index holds {dim[0]}-dimensional vectors but the embedder gives "
                                 f"{vectors.shape[1]}; use the embedder the index was built with or a new file")
            self._delete(conn, source)
            cur = conn.execute("INSERT INTO sources (path, hash, n_chunks, added_at) VALUES (?, ?, ?, ?)",
                               (source, content_hash, len(chunks), time.time()))
            source_id = cur.lastrowid
            for ord_, (chunk, vec) in enumerate(zip(chunks, vectors)):
                cur = conn.execute(
                    "INSERT INTO chunks (source_id, ord, text, heading, location, vector) VALUES (?, ?, ?, ?, ?, ?)",
                    (source_id, ord_, chunk.text, chunk.heading, chunk.location, vec.tobytes()))
                conn.execute("INSERT INTO chunks_fts (rowid, body) VALUES (?, ?)", (cur.lastrowid, chunk.embedding_text()))

    def remove_source(self, source: str) -> bool:
        with self._transaction() as conn:
            return self._delete(conn, source)

    @staticmethod
    def _delete(conn, source: str) -> bool:
        row = conn.execute("SELECT id FROM sources WHERE path = ?", (source,)).fetchone()
        if row is None:
            return False
        conn.execute("DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE source_id = ?)", row)
        conn.execute("DELETE FROM chunks WHERE source_id = ?", row)
        conn.execute("DELETE FROM sources WHERE id = ?", row)
        return True

    # ---- reads for search -----------------------------------------------------------------
    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, matrix of their vectors), cached until this or another connection writes."""
        key = (self._writes, self.conn.execute("PRAGMA data_version").fetchone()[0])
        if key != self._matrix_key:
            rows = self.conn.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
            ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            dim = int(self.get_meta("dim") or 0)
            matrix = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), dim)
            self._matrix_key, self._matrix = key, (ids, matrix)
        return self._matrix

    def match(self, fts_query: str, *, limit: int) -> list[tuple[int, float]]:
        """FTS5 BM25 ranking as (chunk id, score), higher is better."""
        rows = self.conn.execute(
            "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
            "ORDER BY bm25(chunks_fts) LIMIT ?", (fts_query, limit)).fetchall()
        return [(int(r[0]), -float(r[1])) for r in rows]

    def chunks(self, ids) -> dict[int, dict]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        rows = self.conn.execute(
            "SELECT c.id, c.text, c.heading, c.location, s.path FROM chunks c JOIN sources s ON s.id = c.source_id "
            f"WHERE c.id IN ({','.join('?' * len(ids))})", ids)
        return {r[0]: {"text": r[1], "heading": r[2], "location": r[3], "source": r[4]} for r in rows}


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (a kill rolls back by itself in WAL)."""

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self):
        self.store.conn.execute("BEGIN IMMEDIATE")
        return self.store.conn

    def __exit__(self, exc_type, exc, tb):
        self.store.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        self.store._writes += 1
        return False
