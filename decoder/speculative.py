"""Speculative decoding, greedy (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding"): a cheap drafter proposes the next k tokens, the model checks them all in
one forward pass of k + 1 rows, and the longest prefix it agrees with is kept plus the model's own
next token. Decoding is memory-bound, so a pass of a few rows costs about one token's pass, and
every accepted draft is a token for free. The tokens are the ones plain greedy decoding picks.

Drafters:
- `PromptLookup`: the continuation of the last n-gram's latest earlier occurrence in the context
  (Saxena 2023, "Prompt Lookup Decoding"; transformers' `prompt_lookup_num_tokens`, llama.cpp's
  lookup decoding). Free to run; it pays off when the reply copies its context (quotes, summaries,
  code edits).
- `ModelDrafter`: a smaller model of the same tokenizer decoding greedily on its own caches
  (Gemma 3 270M drafting for 1B/4B).

Rejected drafts are rolled back in the caches (`kv_cache` `checkpoint`/`rewind`): a sliding-window
ring gets back the keys the drafts overwrote, which later tokens still attend.
"""
from collections.abc import Callable, Iterator, Sequence

import torch

from .errors import InputError
from .prefill import prefill
from .kv_cache import make_cache


class PromptLookup:
    """Drafts by n-gram lookup in the tokens so far. An index maps each n-gram (n in `ngrams`) to
    where its latest occurrence continues, kept up to date as tokens arrive: O(1) a token.

    After a pass that accepts nothing, drafting pauses for as many steps as passes have missed in a
    row (at most `max_pause`): text that does not quote its context costs plain steps. The pause
    ends early when the draft it held back would have been right."""

    def __init__(self, ngrams: Sequence[int] = (3, 2), max_draft: int = 12, max_pause: int = 8):
        self.ngrams, self.max_draft, self.max_pause = tuple(sorted(ngrams, reverse=True)), max_draft, max_pause
        self.begin([])

    def begin(self, context: Sequence[int]) -> None:
        """The tokens before the first one `propose` continues (prompt and history)."""
        self.ids, self.index = [], {}
        self.k, self.misses, self.pause, self.held = self.max_draft, 0, 0, None
        self.extend(context)

    def extend(self, tokens: Sequence[int]) -> None:
        if self.held is not None and tokens:  # the token a held-back draft guessed has come
            self.pause = 0 if tokens[0] == self.held else self.pause
            self.held = None
        for t in tokens:
            self.ids.append(t)
            end = len(self.ids) - 1  # the n-grams ending before t continue with t
            for n in self.ngrams:
                if end >= n:
                    self.index[tuple(self.ids[end - n:end])] = end

    def propose(self, limit: int) -> list[int]:
        """Up to min(k, limit) tokens to follow the context, longest n-gram match first; [] if none."""
        drafts = self.lookup(min(self.k, limit))
        if self.pause and drafts:
            self.held = drafts[0]
            return []
        return drafts

    def lookup(self, k: int) -> list[int]:
        for n in self.ngrams:
            if k > 0 and len(self.ids) >= n:
                at = self.index.get(tuple(self.ids[-n:]))
                if at is not None:
                    return self.ids[at:at + k]
        return []

    def feedback(self, proposed: int, accepted: int) -> None:
        """Adapt k (transformers' heuristic schedule): grow after a full match, else shrink to what
        was accepted plus one, so a pass that accepts nothing costs few rows."""
        if not proposed:
            self.pause = max(0, self.pause - 1)
            return
        self.misses = self.misses + 1 if accepted == 0 else 0
        self.pause = min(self.misses, self.max_pause)
        self.k = min(self.max_draft, self.k + 2) if accepted == proposed else max(1, accepted + 1)


class ModelDrafter:
    """Drafts with a smaller model of the same tokenizer, greedy, on its own caches; after each
    check its caches are rewound to the accepted tokens, and the next round feeds what it lacks."""

    def __init__(self, model, max_draft: int = 8):
        self.model, self.max_draft, self.k = model, max_draft, 4
        self.window = model.config.sliding_window or max_draft + 1

    def begin(self, context: Sequence[int]) -> None:
        self.caches = make_cache(self.model.config)
        self.ids = list(context)
        self.fed = len(self.ids)  # tokens in its caches, filled as the model's are: the same keys
        if self.fed:
            prefill(self.model, self.ids, self.caches, 0)

    def extend(self, tokens: Sequence[int]) -> None:
        self.ids.extend(tokens)

    def propose(self, limit: int) -> list[int]:
        k = min(self.k, limit, self.window - 1, self.model.config.max_position_embeddings - len(self.ids))
        if k <= 0:
            return []
        todo = self.ids[self.fed:]  # the accepted tokens it has not seen: one, or two after a full match
        self.saved = [c.checkpoint(len(todo) + k - 1) for c in self.caches]
        self.start = self.fed
        drafts: list[int] = []
        for _ in range(k):
            h = self.model(torch.tensor([todo]), self.caches, torch.arange(self.fed, self.fed + len(todo)))
            self.fed += len(todo)
            drafts.append(int(self.model.logits(h[:, -1:])[0, -1].argmax()))
            todo = drafts[-1:]
        return drafts

    def feedback(self, proposed: int, accepted: int) -> None:
        """Rewind to the accepted drafts (the last draft was never fed), and adapt k as `PromptLookup`."""
        keep = min(self.fed, len(self.ids))  # `extend` has added the accepted drafts
        if proposed:
            for c, s in zip(self.caches, self.saved):
                c.rewind(s, keep)
            self.fed = keep
        self.k = min(self.max_draft, self.k + 2) if accepted == proposed else max(1, accepted + 1)


def make_drafter(draft, model=None):
    """A fresh drafter for `draft`: "lookup", a model of `model`'s vocabulary, or anything holding
    one as `.model` (an `Assistant`); None for None."""
    if draft is None or isinstance(draft, (PromptLookup, ModelDrafter)):
        return draft
    if draft == "lookup":
        return PromptLookup()
    drafter = getattr(draft, "model", draft)
    if not isinstance(drafter, torch.nn.Module) or not hasattr(drafter, "logits"):
        raise InputError(f"draft must be None, 'lookup' or a model (an Assistant) to draft with, got {draft!r}")
    if model is not None and drafter.config.vocab_size != model.config.vocab_size:
        raise InputError(f"draft model's vocabulary ({drafter.config.vocab_size} tokens) is not the model's "
                         f"({model.config.vocab_size}): a draft model must share the tokenizer")
    return ModelDrafter(drafter)


@torch.inference_mode()
def speculative_step(model, prompt_ids: Sequence[int], caches: list, sampler: Callable, drafter, *, start: int = 0,
                     history: Sequence[int] = (), max_tokens: int | None = None, embeds: torch.Tensor | None = None,
                     groups: torch.Tensor | None = None, stats: dict | None = None) -> Iterator[int]:
    """`generate.generate_step` with drafts: the same ids for a deterministic (greedy) `sampler`,
    which is called once per checked row with the ids before it. `max_tokens` bounds the drafts to
    what the caller will take. As with `generate_step`, once the caller stops (closes the generator)
    the caches hold every yielded token but the last. `stats`, if given, counts passes, drafts
    and accepted drafts."""
    h = prefill(model, prompt_ids, caches, start, embeds=embeds, groups=groups)
    pos = start + (len(prompt_ids) if embeds is None else embeds.shape[1])  # next position to write
    seen = [*history, *prompt_ids]
    limit = model.config.max_position_embeddings - pos - 1
    if max_tokens is not None:
        limit = min(limit, max_tokens - 1)
    window = min((c.window for c in caches if hasattr(c, "window")), default=None)
    stats = stats if stats is not None else {}
    for key in ("passes", "drafted", "accepted"):
        stats.setdefault(key, 0)
    drafter.begin(seen)
    token = sampler(model.logits(h)[0, -1], seen)
    saved, end = None, pos  # caches hold positions < end; `saved` undoes the last check's writes
    try:
        while True:
            seen.append(token)
            drafter.extend([token])
            yield token  # at position pos, not yet in the caches
            drafts = drafter.propose(min(limit, window - 1) if window else limit)
            if drafts:  # else a plain step: nothing to undo
                saved = [c.checkpoint(len(drafts) + 1) for c in caches]
            rows = torch.tensor([[token, *drafts]])
            logits = model.logits(model(rows, caches, torch.arange(pos, pos + rows.shape[1])))[0]
            end = pos + rows.shape[1]
            picked = []  # the model's own token after each row, up to its first disagreement with the drafts
            for i in range(len(drafts) + 1):
                picked.append(sampler(logits[i], seen + picked))
                if i == len(drafts) or picked[-1] != drafts[i]:
                    break
            accepted = len(picked) - 1
            end = pos + 1 + accepted  # the token and the accepted drafts stay
            if accepted < len(drafts):
                for c, s in zip(caches, saved):
                    c.rewind(s, end)
            stats["passes"] += 1
            stats["drafted"] += len(drafts)
            stats["accepted"] += accepted
            drafter.extend(picked[:-1])  # the last is the next `token`
            drafter.feedback(len(drafts), accepted)
            limit -= accepted + 1
            for t in picked[:-1]:
                seen.append(t)
                pos += 1
                yield t  # at position pos; the caches hold it already, which a stop here undoes
            pos += 1
            token = picked[-1]
    finally:  # stopped while yielding accepted drafts: drop the last yielded one from the caches
        if saved is not None and end > pos:
            for c, s in zip(caches, saved):
                c.rewind(s, pos)
