"""The embedder mmsdk indexes and searches with: rag's bundled all-MiniLM-L6-v2 with its linears
swapped for int8 ones (`encoders.accelerate.accelerate_text_embedder_`). rag stays free of the
runtime; its plain float32 `rag.embedder.default_embedder` is the fallback and gives vectors
this one's compare with (cosine >= 0.99 per chunk on the RAG eval), so both share one name and
an index built with either opens with the other."""
import functools

import numpy as np

from .decoder.memory import heap_allocations
from .rag.embedder import SentenceTransformerEmbedder


def _accelerate(model) -> None:
    from .encoders.accelerate import accelerate_text_embedder_

    accelerate_text_embedder_(model[0].auto_model.encoder)


class _Int8Embedder(SentenceTransformerEmbedder):
    def __call__(self, texts: list[str]) -> np.ndarray:
        # Activations from the heap, reused batch to batch: a process that loaded a model maps every 4 MB+
        # allocation fresh (`map_large_allocations`), and faulting those pages in made embedding ~1.5x slower
        # (206 eval chunks, 1 thread, Zen 3: 18.7 s of CPU against 12.3 s).
        with heap_allocations():
            return super().__call__(texts)


@functools.lru_cache(maxsize=1)
def default_embedder() -> SentenceTransformerEmbedder:
    """The bundled embedder through our int8 kernels, one per process."""
    # 16 chunks a batch, not 32: at 32 x 256 word pieces the FFN's 1536-wide activations (25-50 MB) exceed
    # glibc's largest mmap threshold, so each is fresh pages again; 16 faults ~15x fewer pages and is ~20% faster.
    return _Int8Embedder(prepare=_accelerate, batch_size=16)
