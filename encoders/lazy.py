"""Encoder towers built on first use. A checkpoint's vision and audio towers are large in float32
(Gemma 3n E2B's ~1B parameters, ~4 GB) and a text-only conversation never runs them, so a load
keeps, for each tower, a function that builds it from the checkpoint's memory-mapped tensors."""
import logging
import threading
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)


class LazyTowers:
    """Towers by kind ("vision", "audio"): each given as a module or a function building it; a kind
    given None is a tower the checkpoint does not have."""

    def __init__(self, **towers: nn.Module | Callable[[], nn.Module] | None):
        self._towers = {kind: t for kind, t in towers.items() if t is not None}
        self._lock = threading.Lock()

    def has(self, kind: str) -> bool:
        return kind in self._towers

    def loaded(self, kind: str) -> bool:
        return isinstance(self._towers.get(kind), nn.Module)

    def then(self, kind: str, change: Callable[[nn.Module], nn.Module]) -> None:
        """Apply `change` (a load's module swap) to the tower when it is built, or now if it is."""
        with self._lock:
            tower = self._towers.get(kind)
            if isinstance(tower, nn.Module):
                self._towers[kind] = change(tower)
            elif tower is not None:
                self._towers[kind] = lambda: change(tower())

    def get(self, kind: str) -> nn.Module | None:
        """The tower, built now if this is its first use; None where the checkpoint has none."""
        with self._lock:  # two threads asking at once build it once
            t = self._towers.get(kind)
            if t is not None and not isinstance(t, nn.Module):
                log.info("building the %s tower", kind)
                with torch.inference_mode(False):  # first use may be inside a generate: still normal tensors
                    t = self._towers[kind] = t()
            return t


def read_tensors(tensors: dict, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The tensors whose names `keep` takes, read now: a load hands the towers' tensors over unread
    (`LazyTensor`s of the checkpoint), and a tower reads its own when it is built."""
    return {k: v.read() if hasattr(v, "read") else v for k, v in tensors.items() if keep(k)}
