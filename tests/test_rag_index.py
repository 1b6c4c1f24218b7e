"""DocumentIndex on a real SQLite file with the real bundled embedder: search modes, re-adding,
replacing, removing, and a batch with a corrupt PDF through the CLI handler."""
import argparse
import sqlite3

import numpy as np
import pytest

from mmsdk.documents import DocumentIndex, Hit
from mmsdk.errors import InputError
from mmsdk.rag.search import fts_query, reciprocal_rank_fusion
from test_rag_loading import make_pdf

DOCS = {
    "kettle.md": "# Kettle manual\n\n## Descaling\n\nFill the kettle with equal parts white vinegar and water, "
                 "boil it, leave it for an hour, then rinse twice.\n\n## Warranty\n\nThe kettle is covered "
                 "for two years from the date of purchase.\n",
    "garden.txt": "Tomatoes\n========\n\nWater tomato plants deeply twice a week and stake them once they "
                  "reach thirty centimetres.\n\nRoses\n=====\n\nPrune roses in late winter, just above an "
                  "outward-facing bud.\n",
    "bike.html": "<html><body><h1>Bicycle care</h1><h2>Chain</h2><p>Clean and oil the chain every 300 km "
                 "with a light lubricant.</p><h2>Tyres</h2><p>Inflate road tyres to the pressure printed on "
                 "the sidewall, usually 80 to 100 psi.</p></body></html>",
}


def write_docs(folder):
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    return folder


def build_index(folder):
    idx = DocumentIndex(folder / "docs.db")
    for name in DOCS:
        idx.add(folder / name)
    return idx


@pytest.fixture
def docs(tmp_path):
    return write_docs(tmp_path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One index for the tests that only read it."""
    folder = write_docs(tmp_path_factory.mktemp("shared"))
    idx = build_index(folder)
    yield idx, folder
    idx.close()


@pytest.fixture
def index(shared):
    return shared[0]


def test_rrf_and_fts_query_are_pure():
    fused = reciprocal_rank_fusion([[(1, 0.9), (2, 0.8), (3, 0.1)], [(3, 7.0), (1, 5.0)]], k=60)
    assert [i for i, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert fts_query('How do I "descale" my kettle?') == '"descale" OR "kettle"'
    assert fts_query("what is it") == '"what" OR "is" OR "it"'


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
def test_each_mode_finds_the_passage_with_its_location(shared, mode):
    index, docs = shared
    hits = index.search("How do I get limescale out of my kettle?" if mode != "keyword" else "kettle vinegar",
                        k=3, mode=mode)
    assert isinstance(hits[0], Hit)
    assert "vinegar" in hits[0].text
    assert hits[0].source == str((docs / "kettle.md").resolve())
    assert hits[0].location == "Kettle manual > Descaling"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert (hits[0].similarity is None) == (mode == "keyword")


def test_tyre_pressure_comes_from_html_section(index):
    hit = index.search("what pressure should my bike tyres be?", k=1)[0]
    assert hit.location == "Bicycle care > Tyres" and "psi" in hit.text


def test_readding_unchanged_file_does_nothing(shared):
    index, docs = shared
    before = index._store.conn.execute("SELECT id FROM chunks ORDER BY id").fetchall()
    assert index.add(docs / "garden.txt") == 0
    assert index._store.conn.execute("SELECT id FROM chunks ORDER BY id").fetchall() == before


def test_changed_file_is_replaced_and_remove_deletes_all(docs):
    index = build_index(docs)
    (docs / "garden.txt").write_text("Cucumbers\n=========\n\nCucumbers climb a trellis and like warm soil.\n")
    assert index.add(docs / "garden.txt") == 1
    assert not any("Tomato" in h.text for h in index.search("tomato plants", k=10, mode="keyword"))
    assert "trellis" in index.search("growing cucumbers", k=1)[0].text
    assert len(index.sources()) == 3

    assert index.remove(docs / "kettle.md") is True and index.remove(docs / "kettle.md") is False
    assert not any("kettle" in h.source for h in index.search("kettle warranty", k=10))
    conn = index._store.conn
    assert conn.execute("SELECT count(*) FROM chunks").fetchone() == conn.execute("SELECT count(*) FROM chunks_fts").fetchone()
    index.close()


def test_add_text_persists_in_wal_file(tmp_path):
    db = tmp_path / "notes.db"
    with DocumentIndex(db) as idx:
        assert idx.add_text("# Meeting\n\nThe launch moved to March 14.", source="meeting-notes") == 1
        assert idx.add_text("# Meeting\n\nThe launch moved to March 14.", source="meeting-notes") == 0
    with DocumentIndex(db) as idx:  # reopened from disk
        assert idx.sources() == ["meeting-notes"]
        hit = idx.search("when is the launch?", k=1)[0]
        assert hit.source == "meeting-notes" and hit.location == "Meeting"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_another_embedder_can_be_passed_in(tmp_path):
    def embed(texts):  # a toy bag-of-letters embedder, normalized
        v = np.array([[t.lower().count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts], np.float32) + 1e-3
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    with DocumentIndex(tmp_path / "toy.db", embedder=embed) as idx:
        idx.add_text("zzz zebra zoo", source="z")
        idx.add_text("aaa banana", source="a")
        assert idx.search("zigzag", k=1, mode="vector")[0].source == "z"


def test_the_index_refuses_another_embedder(tmp_path):
    class Letters:  # a toy bag-of-letters embedder with a name, normalized
        def __init__(self, name, letters="abcdefghijklmnopqrstuvwxyz"):
            self.name, self.letters = name, letters

        def __call__(self, texts):
            v = np.array([[t.lower().count(c) for c in self.letters] for t in texts], np.float32) + 1e-3
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    with DocumentIndex(tmp_path / "toy.db", embedder=Letters("letters-26")) as idx:
        idx.add_text("zzz zebra zoo", source="z")
    with pytest.raises(InputError, match="built with the embedder 'letters-26', not 'other'"):
        DocumentIndex(tmp_path / "toy.db", embedder=Letters("other"))
    short = Letters("", "abc")  # no name: the dimension still tells
    short.name = None
    with DocumentIndex(tmp_path / "toy.db", embedder=short) as idx:
        match = r"26-dimensional vectors \(embedder letters-26\) but this embedder gives 3"
        with pytest.raises(InputError, match=match):
            idx.add_text("abc", source="a")
        assert idx.sources() == ["z"]


def test_bad_inputs_raise_input_error(index, tmp_path):
    with pytest.raises(InputError, match="mode must be one of"):
        index.search("x", mode="fuzzy")
    with pytest.raises(InputError, match="unsupported file type"):
        index.add(tmp_path / "slides.pptx")


def test_cli_batch_with_corrupt_pdf(docs, tmp_path, capsys):
    from mmsdk import _cmd_docs

    make_pdf(docs / "good.pdf", [("Oven", "Preheat the oven to 200 degrees before baking bread.")])
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage")
    parser = argparse.ArgumentParser()
    _cmd_docs.register(parser.add_subparsers(dest="command"))
    db = tmp_path / "batch.db"
    files = [docs / "kettle.md", docs / "broken.pdf", docs / "good.pdf", docs / "bike.html"]
    args = parser.parse_args(["index", "add", str(db), *map(str, files)])

    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "error" in line][0].startswith("error: cannot index")
    assert "broken.pdf" in err and "3 indexed, 0 unchanged, 1 failed" in err
    with DocumentIndex(db) as idx:
        assert sorted(idx.sources()) == sorted(str(f.resolve()) for f in files if f.name != "broken.pdf")
        assert idx.search("oven temperature for bread", k=1)[0].location == "Oven, page 1"
    with pytest.raises(InputError, match="broken.pdf"):
        DocumentIndex(db).add(docs / "broken.pdf")


def test_add_many_embeds_files_together_and_keeps_each_result(docs, tmp_path):
    """Chunks of several files embedded in one call store the vectors a file at a time gives: the
    same chunks, rows within int8 rounding of each other (padding to another batch's longest row
    moves the int8 embedder's rows by up to ~0.003 in cosine on the RAG eval; a wrong row is < 0.9)."""
    (docs / "empty.md").write_text("   \n")
    files = [docs / "kettle.md", docs / "missing.txt", docs / "garden.txt", docs / "empty.md", docs / "bike.html"]
    with DocumentIndex(tmp_path / "one.db") as one, DocumentIndex(tmp_path / "many.db") as many:
        for f in files[::2]:
            one.add(f)
        results = many.add_many(files)
        assert [type(r) for r in results] == [int, InputError, int, InputError, int]
        assert "missing.txt" in str(results[1]) and "empty.md" in str(results[3])
        assert results[0] + results[2] + results[4] == len(one._store.vectors()[0]) > 0
        assert many.add_many(files[::2]) == [0, 0, 0]  # unchanged
        rows = "SELECT s.path, c.ord, c.text, c.vector FROM chunks c JOIN sources s ON s.id = c.source_id ORDER BY 1, 2"
        a, b = (idx._store.conn.execute(rows).fetchall() for idx in (one, many))
        assert [r[:3] for r in a] == [r[:3] for r in b]
        va, vb = (np.stack([np.frombuffer(r[3], np.float32) for r in x]) for x in (a, b))
        assert (va * vb).sum(1).min() > 0.99
