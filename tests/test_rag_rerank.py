"""The rerank hook: rag's fusion of a reranker's order with the first stage's, and mmsdk's query
likelihood reranker on the real bundled model over a real index."""
import math

import pytest
from mmsdk.rag.rerank import rerank

from mmsdk.documents import DocumentIndex
from mmsdk.errors import InputError
from mmsdk.rerank import QueryLikelihood

PASSAGES = {
    "warranty-excluded": "The warranty does not cover limescale damage, a dropped kettle, or a kettle boiled dry.",
    "warranty-length": "The kettle is covered for two years from the date of purchase.",
    "descaling": "Fill the kettle with equal parts white vinegar and water, boil it, leave it for an hour, then rinse.",
    "hard-water": "Limescale builds up faster in hard water areas; a filter jug slows it down.",
    "watering": "Water tomato plants deeply twice a week and stake them once they reach thirty centimetres.",
    "sunlight": "Tomato plants need six to eight hours of sun a day to set fruit.",
    "pressure": "Inflate road tyres to the pressure printed on the sidewall, usually 80 to 100 psi.",
    "worn-tyres": "Replace a tyre when the tread is worn or the sidewall is cracked.",
}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    with DocumentIndex(tmp_path_factory.mktemp("rerank") / "docs.db") as idx:
        for name, text in PASSAGES.items():
            idx.add_text(text, source=name)
        yield idx


def test_fusion_moves_a_passage_the_reranker_puts_first_and_ties_go_to_the_first_stage():
    ranked = [(10, 0.9), (11, 0.8), (12, 0.7), (13, 0.6)]
    texts = {10: "a", 11: "b", 12: "c", 13: "d"}
    prefers = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0}  # the reverse of the first stage
    out = rerank("q", ranked, texts, lambda q, ps: [prefers[p] for p in ps])
    # ranks (first, reranker): 10 (1, 4), 11 (2, 3), 12 (3, 2), 13 (4, 1): 10 and 13 tie at 1/61 + 1/64,
    # above 11 and 12 at 1/62 + 1/63; each tie keeps the first stage's order
    assert [i for i, _ in out] == [10, 13, 11, 12]
    assert dict(out) == {10: 0.0, 11: 1.0, 12: 2.0, 13: 3.0}  # the reranker's scores
    prefers["c"] = 9.0  # third in the first stage, first for the reranker: 1/63 + 1/61 > 1/61 + 1/64
    assert next(i for i, _ in rerank("q", ranked, texts, lambda q, ps: [prefers[p] for p in ps])) == 12
    with pytest.raises(ValueError, match="gave 1 scores for 4 passages"):
        rerank("q", ranked, texts, lambda q, ps: [0.0])


def test_query_likelihood_prefers_the_passage_that_answers(bundled_asst):
    ql = QueryLikelihood(bundled_asst)
    names = ["watering", "pressure", "sunlight"]
    scores = ql("How much sun do tomato plants need?", [PASSAGES[n] for n in names])
    assert names[max(range(3), key=scores.__getitem__)] == "sunlight"
    assert all(math.isfinite(s) and s < 0 for s in scores)  # mean log-probabilities
    names = ["warranty-excluded", "descaling", "warranty-length"]
    scores = ql("How many years is the kettle under warranty?", [PASSAGES[n] for n in names])
    assert names[max(range(3), key=scores.__getitem__)] == "warranty-length"


def test_the_rerank_hook_reorders_search_by_the_real_model(index, bundled_asst):
    ql = QueryLikelihood(bundled_asst)
    question = "Why does limescale build up quickly?"
    first = index.search(question, k=8)
    hits = index.search(question, k=8, reranker=ql, rerank_top=8)
    scores = dict(zip((h.chunk_id for h in first), ql(question, [h.text for h in first])))
    # the hook's order is the documented fusion of the first stage's order and the model's scores
    expected = rerank(question, [(h.chunk_id, h.score) for h in first], {h.chunk_id: h.text for h in first},
                      lambda q, ps: [scores[h.chunk_id] for h in first])
    assert [h.chunk_id for h in hits] == [i for i, _ in expected]
    assert [h.chunk_id for h in hits] != [h.chunk_id for h in first]  # it did reorder
    # the same passages through the same path: the scores agree to float rounding
    assert all(h.rerank_score == pytest.approx(scores[h.chunk_id], abs=1e-5) for h in hits)
    assert all(h.score == f.score for h in hits for f in first if f.chunk_id == h.chunk_id)
    # only the best `rerank_top` are reranked; the rest keep the first stage's order
    top3 = index.search(question, k=8, reranker=ql, rerank_top=3)
    assert [h.chunk_id for h in top3[3:]] == [h.chunk_id for h in first[3:]]
    assert all(h.rerank_score is None for h in top3[3:])


def test_bad_rerank_counts_are_input_errors(index, bundled_asst):
    with pytest.raises(InputError, match="rerank_top must be a positive int"):
        index.search("tyres", reranker=lambda q, ps: [0.0] * len(ps), rerank_top=0)
    with pytest.raises(InputError, match="rerank must be a number of passages"):
        bundled_asst.ask("tyres?", index, rerank=-1)
