"""Reranking: a second, costlier look at the best few fused candidates.

A reranker is any `Callable[[str, list[str]], Sequence[float]]`: it scores each passage for the
query, higher for more relevant (a cross-encoder, or a language model's likelihood of the query
given the passage, as mmsdk supplies). rag takes it the way it takes the embedder: passed in, so
rag runs with no model of its own.

The reranker's order is fused with the first stage's by reciprocal rank (Cormack et al. 2009), ties
going to the first stage: on the RAG eval (`tests/eval/eval_rag.py --rerank`) the bundled 270M's
query likelihood alone ranked the answer first less often than hybrid search (0.604 vs 0.625), the
fusion of both more often (0.729).
"""
from collections.abc import Callable, Sequence

Reranker = Callable[[str, list[str]], Sequence[float]]


def rerank(query: str, ranked: list[tuple[int, float]], texts: dict[int, str], reranker: Reranker, *,
           rrf_k: int = 60) -> list[tuple[int, float]]:
    """Reorder `ranked` ((id, first-stage score), best first) by 1 / (rrf_k + its rank) + 1 / (rrf_k +
    the rank of the reranker's score of `texts[id]`); each item's score becomes the reranker's."""
    if not ranked:
        return []
    scores = [float(s) for s in reranker(query, [texts[i] for i, _ in ranked])]
    if len(scores) != len(ranked):
        raise ValueError(f"the reranker gave {len(scores)} scores for {len(ranked)} passages")
    by_score = sorted(range(len(ranked)), key=lambda j: -scores[j])
    rerank_rank = {j: r for r, j in enumerate(by_score, start=1)}
    fused = sorted(range(len(ranked)), key=lambda j: (-(1 / (rrf_k + j + 1) + 1 / (rrf_k + rerank_rank[j])), j))
    return [(ranked[j][0], scores[j]) for j in fused]
