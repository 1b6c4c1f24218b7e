"""Per-layer KV caches, laid out (B, H_kv, T, D) so attention reads them without a transpose.

Global layers keep every position (`FullCache`, grown in steps); sliding-window layers keep a ring
of `window` slots (`RingCache`), so their memory stays flat however long the context grows.
Both return the keys to attend plus each key's position, from which the mask is built.

Speculative decoding writes drafted positions it may reject: `checkpoint(n)` before writing n more
positions, `rewind(saved, length)` to drop every position from `length` on, as if never written.
Positions are 0.. in order (a cache's length is its next position).
"""
import torch

from .config import SLIDING


class FullCache:
    step = 256  # grow the buffer in blocks, not per token

    def __init__(self, batch: int, n_kv: int, head_dim: int, dtype: torch.dtype):
        self.k = torch.zeros(batch, n_kv, 0, head_dim, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.offset = 0

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        T = k.shape[2]
        end = self.offset + T
        self._hold(end)
        self.k[:, :, self.offset:end] = k
        self.v[:, :, self.offset:end] = v
        self.offset = end
        return self.k[:, :, :end], self.v[:, :, :end], torch.arange(end)

    def reserve(self, position: int) -> tuple[int, int]:
        """Room for one decoded token's key and value, which the caller writes: (their slot, how
        many slots attention reads). Keys are positions 0.. in order."""
        slot = self.offset
        self._hold(slot + 1)
        self.offset = slot + 1
        return slot, slot + 1

    def key_positions(self) -> torch.Tensor:
        return torch.arange(self.offset)

    def checkpoint(self, n: int) -> None:
        return None  # keys past the length are never read, so dropping them is moving the length back

    def rewind(self, saved: None, length: int) -> None:
        assert 0 <= length <= self.offset, (length, self.offset)
        self.offset = length

    def _hold(self, end: int) -> None:
        if end > self.k.shape[2]:
            grow = ((end - self.k.shape[2] + self.step - 1) // self.step) * self.step
            pad = self.k.new_zeros(*self.k.shape[:2], grow, self.k.shape[3])
            self.k, self.v = torch.cat([self.k, pad], 2), torch.cat([self.v, pad], 2)

    def clone(self) -> "FullCache":
        c = object.__new__(FullCache)
        c.k, c.v, c.offset = self.k.clone(), self.v.clone(), self.offset
        return c

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class RingCache:
    """Slot `p % window` holds position p. New keys are attended together with the ring as it was
    before they overwrite it, so a chunk longer than one token still sees its whole window."""

    def __init__(self, batch: int, n_kv: int, head_dim: int, dtype: torch.dtype, window: int):
        self.window = window
        self.k = torch.zeros(batch, n_kv, window, head_dim, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((window,), -1, dtype=torch.long)
        self.offset = 0

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        if k.shape[2] == 1:  # decoding: the slot it overwrites is a window back, masked anyway; no copy
            slot = positions % self.window
            self.k.index_copy_(2, slot, k)
            self.v.index_copy_(2, slot, v)
            self.pos.index_copy_(0, slot, positions)
            self.offset += 1
            return self.k, self.v, self.pos
        if self.offset == 0:  # an empty ring adds nothing to attend: half the keys of a first chunk
            k_all, v_all, pos_all = k, v, positions
        else:
            k_all, v_all, pos_all = torch.cat([self.k, k], 2), torch.cat([self.v, v], 2), torch.cat([self.pos, positions])
        keep = min(k.shape[2], self.window)  # only the newest `window` tokens survive
        slots = positions[-keep:] % self.window
        self.k[:, :, slots] = k[:, :, -keep:]
        self.v[:, :, slots] = v[:, :, -keep:]
        self.pos[slots] = positions[-keep:]
        self.offset += k.shape[2]
        return k_all, v_all, pos_all

    def reserve(self, position: int) -> tuple[int, int]:
        """As `FullCache.reserve`: the slot of `position`, and the whole ring to read (masked by
        `key_positions`)."""
        slot = position % self.window
        # through a numpy view of `pos`: a tensor's item assignment took ~6 us, and a step of 4 streams
        # reserves 60 slots (Gemma 3 270M's 15 rings)
        view = self.__dict__.get("_pos_numpy")
        if view is None or view[0] is not self.pos:
            view = self._pos_numpy = (self.pos, self.pos.numpy())
        view[1][slot] = position
        self.offset += 1
        return slot, self.window

    def key_positions(self) -> torch.Tensor:
        return self.pos

    def checkpoint(self, n: int) -> tuple:
        """What the next n positions (n <= window) will overwrite: the keys, values and positions a
        window back, which later tokens still attend when those positions are rewound."""
        assert n <= self.window, (n, self.window)
        slots = torch.arange(self.offset, self.offset + n) % self.window
        return self.offset, slots, self.k[:, :, slots], self.v[:, :, slots], self.pos[slots]  # copies

    def rewind(self, saved: tuple, length: int) -> None:
        """Drop positions `length`.. (all written since `saved` was taken): their slots get back what
        they held before, so the ring is what it would be had they never been written."""
        start, slots, k, v, pos = saved
        assert start <= length <= self.offset, (start, length, self.offset)
        drop = slice(length - start, None)
        self.k[:, :, slots[drop]] = k[:, :, drop]
        self.v[:, :, slots[drop]] = v[:, :, drop]
        self.pos[slots[drop]] = pos[drop]
        self.offset = length

    def clone(self) -> "RingCache":
        c = object.__new__(RingCache)
        c.window, c.offset = self.window, self.offset
        c.k, c.v, c.pos = self.k.clone(), self.v.clone(), self.pos.clone()
        return c

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class SharedCache:
    """Placeholder for a layer that attends another layer's keys/values (Gemma 3n's KV-shared
    tail): it stores nothing; the model hands it what layer `source` computed this step."""

    def __init__(self, source: int):
        self.source = source

    def clone(self) -> "SharedCache":
        return self  # stateless

    def checkpoint(self, n: int) -> None:
        return None

    def rewind(self, saved: None, length: int) -> None:
        pass

    def nbytes(self) -> int:
        return 0


def make_cache(config, batch: int = 1, dtype: torch.dtype = torch.float32) -> list:
    """One cache per layer: a ring for sliding-window layers, a full cache for global ones, and a
    `SharedCache` for layers whose config names another layer in `kv_sources`."""
    n = len(config.layer_types)
    sources = getattr(config, "kv_sources", None) or range(n)
    # (kv heads, head width) per layer: Gemma 4's global layers are wider than its sliding ones
    dims = getattr(config, "kv_dims", None) or [(config.num_key_value_heads, config.head_dim)] * n
    return [SharedCache(src) if src != i
            else RingCache(batch, *dims[i], dtype, config.sliding_window) if t == SLIDING
            else FullCache(batch, *dims[i], dtype) for i, (t, src) in enumerate(zip(config.layer_types, sources))]
