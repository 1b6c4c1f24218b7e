"""Search as composable functions: `vector_search`, `keyword_search` (BM25 over FTS5) and
`reciprocal_rank_fusion`; `search` ties them together and returns `Hit`s."""
import re
from dataclasses import dataclass, replace

import numpy as np

from .embedder import Embedder
from .rerank import Reranker, rerank
from .store import Store

MODES = ("hybrid", "vector", "keyword")

# Question words carry no topic; dropping them keeps BM25 from matching every chunk.
_STOPWORDS = frozenset("""a an and are as at be by can do does did for from how i if in into is it its
me my of on or so that the their then there these this to was what when where which who whom whose why
will with would you your should could may might must shall we they them he she his her about than
use used using""".split())


@dataclass(frozen=True)
class Hit:
    text: str
    source: str
    score: float              # the mode's score: cosine, BM25, or fused reciprocal rank; higher is better
    location: str = ""        # heading path and/or page the passage came from
    similarity: float | None = None  # cosine between query and passage (None in keyword mode)
    chunk_id: int = -1
    rerank_score: float | None = None  # the reranker's score when one reordered the candidates


def vector_search(store: Store, query_vector: np.ndarray, *, k: int = 5) -> list[tuple[int, float]]:
    """Exact cosine search over all stored vectors (rows are normalized, so a dot product)."""
    ids, matrix = store.vectors()
    if not len(ids):
        return []
    sims = matrix @ np.asarray(query_vector, np.float32).reshape(-1)
    top = np.argpartition(-sims, min(k, len(sims) - 1))[:k] if len(sims) > k else np.arange(len(sims))
    top = top[np.argsort(-sims[top], kind="stable")]
    return [(int(ids[i]), float(sims[i])) for i in top]


def fts_query(text: str) -> str:
    """A safe FTS5 query: the text's words, quoted, OR-ed, question words dropped."""
    words = list(dict.fromkeys(re.findall(r"\w+", text.lower())))
    content = [w for w in words if w not in _STOPWORDS] or words
    return " OR ".join(f'"{w}"' for w in content)


def keyword_search(store: Store, query: str, *, k: int = 5) -> list[tuple[int, float]]:
    """BM25 ranking from SQLite FTS5 (Porter-stemmed)."""
    q = fts_query(query)
    return store.match(q, limit=k) if q else []


def reciprocal_rank_fusion(rankings: list[list[tuple[int, float]]], *, k: int = 60) -> list[tuple[int, float]]:
    """Fuse rankings by sum of 1 / (k + rank), rank from 1 (Cormack et al. 2009); best first."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (item, _) in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


def drop_near_duplicates(store: Store, ranked: list[tuple[int, float]], *, k: int,
                         threshold: float = 0.95) -> list[tuple[int, float]]:
    """Keep the first `k` items that are not near copies (cosine >= `threshold`) of a better one:
    the same passage stored twice, in two files or two formats, should take one slot, not two."""
    ids, matrix = store.vectors()
    kept, kept_vecs = [], []
    for item, score in ranked:
        vec = matrix[np.searchsorted(ids, item)]
        if not kept_vecs or float(np.max(np.stack(kept_vecs) @ vec)) < threshold:
            kept.append((item, score))
            kept_vecs.append(vec)
            if len(kept) == k:
                break
    return kept


def search(store: Store, query: str, embed: Embedder, *, k: int = 5, mode: str = "hybrid",
           candidates: int = 40, rrf_k: int = 60, near_duplicate: float = 0.95,
           reranker: Reranker | None = None, rerank_top: int = 10) -> list[Hit]:
    """Top `k` distinct passages for `query`. Hybrid fuses the top `candidates` of vector and BM25
    search; near copies of a better hit (see `drop_near_duplicates`) are skipped in every mode.
    With a `reranker` (see `rerank.rerank`) the best `rerank_top` are reordered by it, the rest follow."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if k <= 0 or not query.strip():
        return []
    qvec = None if mode == "keyword" else embed([query])[0]
    n = max(candidates, k)
    if mode == "vector":
        ranked = vector_search(store, qvec, k=n)
    elif mode == "keyword":
        ranked = keyword_search(store, query, k=n)
    else:
        ranked = reciprocal_rank_fusion([vector_search(store, qvec, k=n), keyword_search(store, query, k=n)],
                                        k=rrf_k)
    if reranker is None:
        return _hits(store, drop_near_duplicates(store, ranked, k=k, threshold=near_duplicate), qvec)
    hits = _hits(store, drop_near_duplicates(store, ranked, k=max(k, rerank_top), threshold=near_duplicate), qvec)
    top = {h.chunk_id: h for h in hits[:rerank_top]}
    reranked = rerank(query, [(i, h.score) for i, h in top.items()], {i: h.text for i, h in top.items()}, reranker)
    return ([replace(top[i], rerank_score=score) for i, score in reranked] + hits[rerank_top:])[:k]


def _hits(store: Store, ranked: list[tuple[int, float]], qvec) -> list[Hit]:
    rows = store.chunks(i for i, _ in ranked)
    sims = {}
    if qvec is not None and ranked:
        ids, matrix = store.vectors()
        pos = np.searchsorted(ids, [i for i, _ in ranked])
        sims = dict(zip((i for i, _ in ranked), (matrix[pos] @ qvec).tolist()))
    return [Hit(rows[i]["text"], rows[i]["source"], float(score), rows[i]["location"], sims.get(i), i)
            for i, score in ranked if i in rows]
