"""A prefix cache: copies of the KV caches after prompt prefixes already prefilled, so a prompt that
starts the same way as an earlier one (a system prompt, the same document) is prefilled only from
where they part (vLLM's automatic prefix caching, llama-server's `cache_prompt`, at coarse grain).

Prefixes are kept at multiples of `chunk` tokens, the last two of each prompt fed (a prompt's
shared part is usually most of it); least recently used ones go first once `max_bytes` is held.
A copy is taken on the way in and on the way out: the caches are written in place as decoding goes.
"""
from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    def __init__(self, max_bytes: int = 256 * 2**20, chunk: int = 128):
        self.max_bytes, self.chunk = max_bytes, chunk
        self.entries: OrderedDict[tuple[int, ...], tuple[list, int]] = OrderedDict()
        self.held = 0
        self.hits = self.hit_tokens = 0

    def lookup(self, ids: Sequence[int], limit: int) -> tuple[int, list | None]:
        """(n, copies of the caches after ids[:n]) for the longest kept prefix of at most `limit` tokens;
        (0, None) if none."""
        for n in range(limit - limit % self.chunk, 0, -self.chunk):
            key = tuple(ids[:n])
            if key in self.entries:
                self.entries.move_to_end(key)
                self.hits, self.hit_tokens = self.hits + 1, self.hit_tokens + n
                return n, [c.clone() for c in self.entries[key][0]]
        return 0, None

    def keeps(self, n: int, total: int) -> bool:
        """Whether the prefix of `n` tokens is kept when a prompt feeds `total` tokens in chunks."""
        return n % self.chunk == 0 and n >= total - total % self.chunk - self.chunk

    def add(self, ids: Sequence[int], caches: list) -> None:
        key = tuple(ids)
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        copy = [c.clone() for c in caches]
        size = sum(c.nbytes() for c in copy)
        if size > self.max_bytes:
            return
        self.entries[key] = (copy, size)
        self.held += size
        while self.held > self.max_bytes:
            _, (_, freed) = self.entries.popitem(last=False)
            self.held -= freed

    def stats(self) -> dict:
        return {"prefixes": len(self.entries), "bytes": self.held, "hits": self.hits, "hit_tokens": self.hit_tokens}
