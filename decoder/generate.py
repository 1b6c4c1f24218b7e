"""Generation in layers, as mlx-lm's: `prefill` runs a prompt through the caches in chunks,
`generate_step` yields token ids one at a time (`speculative.speculative_step` is its drafting
twin), `stream_generate` turns them into text and stops (end of turn, stop strings, max_tokens),
`generate` collects a whole reply. `Assistant`, sessions, the bench and the server all use it."""
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .prefill import prefill
from .sampling import LogitsProcessor
from .speculative import speculative_step
from .tokenizer import StreamDecoder

@torch.inference_mode()
def generate_step(model, prompt_ids: Sequence[int], caches: list, sampler: Callable, *, start: int = 0,
                  processors: Sequence[LogitsProcessor] = (), history: Sequence[int] = (),
                  embeds: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> Iterator[int]:
    """Yield sampled token ids forever (the caller stops). Each token is fed to the model only when
    the next one is asked for, so after the caller stops, the last yielded id is not in the cache."""
    h = prefill(model, prompt_ids, caches, start, embeds=embeds, groups=groups)
    pos = start + (len(prompt_ids) if embeds is None else embeds.shape[1])
    seen = [*history, *prompt_ids]
    generated: list[int] = []
    while True:
        logits = model.logits(h)[0, -1]
        for proc in processors:
            logits = proc(logits, generated)
        token = sampler(logits, seen)
        seen.append(token)
        generated.append(token)
        yield token
        h = model(torch.tensor([[token]]), caches, torch.tensor([pos]))
        pos += 1


@dataclass
class Step:
    """One generated token and the text it releases (often "" while a character or a possible stop
    string is held back); `finish_reason` ("stop" or "length") is set on the last step only."""
    token: int
    text: str
    finish_reason: str | None = None


def stream_generate(model, tokenizer, prompt_ids: Sequence[int], caches: list, sampler: Callable, *,
                    max_tokens: int, stop: Sequence[str] = (), start: int = 0, history: Sequence[int] = (),
                    processors: Sequence[LogitsProcessor] = (), drafter=None, embeds: torch.Tensor | None = None,
                    groups: torch.Tensor | None = None) -> Iterator[Step]:
    """A `Step` per generated token until an end-of-turn token (kept in the ids, not the text), a
    stop string (the text ends before it) or `max_tokens`. With a `drafter` and no processors the
    tokens come from `speculative_step` (the same ids for a greedy sampler). Once it ends or the
    caller closes it, the caches hold every yielded token but the last, as sessions count on."""
    if max_tokens <= 0:
        return
    if drafter is not None and not processors:
        steps = speculative_step(model, prompt_ids, caches, sampler, drafter, start=start, history=history,
                                 max_tokens=max_tokens, embeds=embeds, groups=groups)
    else:
        steps = generate_step(model, prompt_ids, caches, sampler, start=start, processors=processors,
                              history=history, embeds=embeds, groups=groups)
    detokenizer, stops = StreamDecoder(tokenizer), StopStrings(stop)
    try:
        for n, token in enumerate(steps, 1):
            if token in tokenizer.eos_ids:
                yield Step(token, stops.push(detokenizer.flush())[0] + stops.flush(), "stop")
                return
            text, hit = stops.push(detokenizer.push(token))
            if hit:
                yield Step(token, text, "stop")
                return
            if n >= max_tokens:
                text2, hit = stops.push(detokenizer.flush())
                yield Step(token, text + text2 + ("" if hit else stops.flush()), "stop" if hit else "length")
                return
            yield Step(token, text)
    finally:
        steps.close()


@dataclass
class Generation:
    text: str
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"


def generate(model, tokenizer, prompt_ids: Sequence[int], caches: list, sampler: Callable, **kw) -> Generation:
    """A whole reply: `stream_generate`'s steps collected."""
    out = Generation("")
    pieces = []
    for step in stream_generate(model, tokenizer, prompt_ids, caches, sampler, **kw):
        out.tokens.append(step.token)
        pieces.append(step.text)
        out.finish_reason = step.finish_reason or out.finish_reason
    out.text = "".join(pieces)
    return out


class StopStrings:
    """Cuts text at the first stop string, holding back a tail that could still grow into one (so
    the work per piece is bounded by the longest stop string, not the reply)."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in ((stops,) if isinstance(stops, str) else stops) if s)
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to release, whether a stop string was hit: the text then ends before it)."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        keep = self._partial(self.pending)
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _partial(self, text: str) -> int:
        """Length of the longest tail of `text` that is a start of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if s.startswith(text[-n:]):
                    best = n
                    break
        return best
