"""Encoder outputs kept by content, so a picture or clip asked about again costs only the text.

Keys hash what the encoder actually sees: the preprocessed pixels of an image's views (so its size,
pan-and-scan and normalization are in the key) or the decoded 16 kHz samples of a clip plus the
feature settings. A small LRU bounds memory: one Gemma 3 view's embeddings are 256 x 2560 floats (2.6 MB).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch


def content_key(*parts) -> str:
    """A hash of arrays (their dtype, shape and bytes) and other values (their repr)."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        if isinstance(p, torch.Tensor):
            p = p.detach().cpu().contiguous().numpy()
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).data)
        else:
            h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()


class EncodeCache:
    """LRU of encoder outputs by content key, at most `size` entries."""

    def __init__(self, size: int = 4):
        self.size = size
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> torch.Tensor | None:
        out = self._items.get(key)
        if out is not None:
            self._items.move_to_end(key)
        return out

    def put(self, key: str, value: torch.Tensor) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def encode(self, keys: list[str], inputs: list[torch.Tensor],
               encoder: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """Outputs for each of `inputs` (a batch along dim 0 each), encoding in one batch only those
        whose key is not cached."""
        found = {k: self.get(k) for k in keys}
        todo = {k: i for i, k in enumerate(keys) if found[k] is None}  # the same content once
        if todo:
            encoded = encoder(torch.cat([inputs[i] for i in todo.values()]))
            for (k, i), piece in zip(todo.items(), encoded.split([len(inputs[i]) for i in todo.values()])):
                found[k] = piece
                self.put(k, piece)
        return [found[k] for k in keys]
