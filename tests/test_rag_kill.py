"""SIGKILL an indexing process in the middle of writing a source: the database must open, pass
`PRAGMA integrity_check`, and hold only whole sources."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from mmsdk.rag.chunking import chunk_sections
from mmsdk.rag.loaders import load

# The child indexes files for real; the third source pauses inside its write transaction (after
# half of its rows) and says so, so the kill lands mid-transaction every time.
CHILD = textwrap.dedent("""
    import sys, time
    from mmsdk.documents import DocumentIndex
    from mmsdk.rag import chunking, loaders

    files, calls = sys.argv[2:], [0]
    real = chunking.Chunk.embedding_text
    def slow_embedding_text(self):
        # called once per chunk to embed (before the transaction), then once per chunk to insert
        calls[0] += 1
        if calls[0] > n_chunks + n_chunks // 2:
            print("MID", flush=True)
            time.sleep(60)
        return real(self)

    index = DocumentIndex(sys.argv[1])
    index.embedder(["load the model before starting"])
    for i, f in enumerate(files):
        if i == 2:
            n_chunks = len(chunking.chunk_sections(loaders.load(f)))
            chunking.Chunk.embedding_text = slow_embedding_text
        index.add(f)
        print("DONE", f, flush=True)
""")


@pytest.mark.slow
def test_kill_mid_indexing_leaves_whole_sources(tmp_path):
    files = []
    for n in range(5):
        f = tmp_path / f"doc{n}.txt"
        f.write_text("\n\n".join(f"Document {n} paragraph {p}: " + "lorem ipsum dolor sit amet " * 12
                                 for p in range(12)))
        files.append(str(f))
    db = tmp_path / "kill.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db), *files], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        lines = []
        for line in child.stdout:
            lines.append(line.strip())
            if line.startswith("MID"):
                break
        assert lines[-1] == "MID", lines
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert (tmp_path / "kill.db-wal").exists()  # left behind by the kill; opening must recover from it

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")
    stored = dict(conn.execute("SELECT path, n_chunks FROM sources"))
    assert sorted(stored) == sorted(files[:2])  # the two committed ones, not the interrupted third
    for path, n in stored.items():
        assert n == len(chunk_sections(load(path)))  # every chunk of the source is there
        got = conn.execute("SELECT count(*) FROM chunks c JOIN sources s ON s.id = c.source_id WHERE s.path = ?",
                           (path,)).fetchone()[0]
        assert got == n
    assert conn.execute("SELECT count(*) FROM chunks").fetchone() == conn.execute("SELECT count(*) FROM chunks_fts").fetchone()
    conn.close()

    from mmsdk.documents import DocumentIndex

    with DocumentIndex(db) as index:  # indexing resumes where it stopped
        assert [index.add(f) > 0 for f in files] == [False, False, True, True, True]
