"""Log-probabilities: of every token of a given text (`Assistant.score`), and of each generated token
with its most likely alternatives (`logprobs=True` on generation).

Both are the model's own distribution: the log-softmax of its logits (after the final soft-cap),
before temperature, top-k/top-p and grammar masks.
"""
from collections.abc import Iterator, Sequence

import torch

from .decoder.prefill import PREFILL_CHUNK
from .decoder.kv_cache import make_cache
from .errors import InputError
from .types import Piece, Score, TokenLogprob

HEAD_ROWS = 64  # positions per LM-head product: 64 x 262k float32 logits is 67 MB


def score_text(model, tokenizer, text, window: int | None) -> Score:
    """`Assistant.score`: `text` a str (tokenized without BOS) or its token ids; `window` None for
    the context length. Bad input is an `InputError` naming it."""
    vocab, ctx = model.config.vocab_size, model.config.max_position_embeddings
    if isinstance(text, str):
        ids = tokenizer.encode(text, add_bos=False)
    elif isinstance(text, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in text):
        ids = list(text)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise InputError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    else:
        raise InputError(f"text must be a str or a list of token ids, got {type(text).__name__}")
    if not ids:
        raise InputError("text has no tokens to score")
    window = ctx if window is None else window
    if isinstance(window, bool) or not isinstance(window, int) or not 2 <= window <= ctx:
        raise InputError(f"window must be an int from 2 to the context length {ctx}, got {window!r}")
    return score_ids(model, tokenizer.bos_id, ids, window)


def score_ids(model, bos: int, ids: Sequence[int], window: int) -> Score:
    """Log-probability of each of `ids` (a text's tokens, no BOS) given BOS and the tokens before it.

    A text of `window` tokens or more (BOS included) is read in windows of `window` tokens, each
    starting with BOS, that advance by `window // 2`: each window scores only the tokens the one
    before did not, so every token after the first window sees at least `window // 2 - 1` tokens
    of context (transformers' strided perplexity; llama-perplexity instead scores the second half
    of non-overlapping windows)."""
    ids = [int(i) for i in ids]
    logprobs: list[float] = []
    predicted: list[int] = []
    start, done = 0, 0  # the window's first text token; how many tokens are scored so far
    while done < len(ids):
        part = [bos, *ids[start:start + window - 1]]
        # the window's positions whose next token is not scored yet: text index done.. is part index done-start+1
        lp, top = window_logprobs(model, part, first=done - start + 1)
        logprobs += lp
        predicted += top
        done = start + len(part) - 1
        start += window // 2
    return Score(tokens=ids, logprobs=logprobs, predicted=predicted)


@torch.inference_mode()
def window_logprobs(model, ids: list[int], first: int) -> tuple[list[float], list[int]]:
    """log p(ids[t] | ids[:t]) and the argmax prediction for t = first .. len(ids) - 1, in one pass
    through fresh caches; the LM head runs only on the positions that predict those tokens."""
    caches = make_cache(model.config)
    inputs, targets = torch.tensor([ids[:-1]]), torch.tensor(ids[1:])
    logprobs, predicted = [], []
    for s in range(0, inputs.shape[1], PREFILL_CHUNK):
        h = model(inputs[:, s:s + PREFILL_CHUNK], caches, torch.arange(s, min(s + PREFILL_CHUNK, inputs.shape[1])))
        for r in range(max(first - 1 - s, 0), h.shape[1], HEAD_ROWS):  # row r predicts ids[s + r + 1]
            logits = model.logits(h[:, r:r + HEAD_ROWS])[0].float()
            want = targets[s + r:s + r + logits.shape[0]]
            lp = logits.gather(1, want[:, None])[:, 0] - torch.logsumexp(logits, -1)
            logprobs += lp.tolist()
            predicted += logits.argmax(-1).tolist()
    return logprobs, predicted


class LogprobRecorder:
    """A logits processor that changes nothing: placed first, it sees each step's logits before any
    mask, keeps their log-softmax, and once the next step shows which token was sampled (or `finish`
    is called) turns it into that token's `TokenLogprob` with the `k` most likely alternatives."""

    def __init__(self, tokenizer, k: int):
        self.tokenizer, self.k = tokenizer, k
        self.row: torch.Tensor | None = None
        self.out: list[TokenLogprob] = []

    def __call__(self, logits: torch.Tensor, generated: list[int]) -> torch.Tensor:
        self.finish(generated)
        self.row = torch.log_softmax(logits.float(), -1)
        return logits

    def finish(self, generated: list[int]) -> list[TokenLogprob]:
        """The entries of the tokens in `generated`: the one sampled from the row held is added now."""
        if self.row is not None and len(self.out) < len(generated):
            self._take(generated[len(self.out)])
        return self.out

    def _take(self, token: int) -> None:
        row, self.row = self.row, None
        top = []
        if self.k:
            values, ids = row.topk(self.k)
            top = [self._entry(int(i), float(v)) for i, v in zip(ids, values)]
        self.out.append(self._entry(token, float(row[token]), top))

    def _entry(self, token: int, logprob: float, top=None) -> TokenLogprob:
        return TokenLogprob(token, self.tokenizer.decode([token], skip_special=False), logprob, top or [])


def pieces_with_logprobs(run, recorder: LogprobRecorder) -> Iterator[Piece]:
    """A generation's text pieces, each carrying the entries of the tokens generated since the one
    before; the last (often empty) piece carries the rest, the end-of-turn token's included."""
    given = 0
    for text in run:
        entries = recorder.finish(run.generated)[given:]
        given += len(entries)
        yield Piece(text, entries)
    rest = recorder.finish(run.generated)[given:]
    if rest:
        yield Piece("", rest)


def check_top_logprobs(top_logprobs, vocab_size: int) -> int:
    if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= vocab_size:
        raise InputError(f"top_logprobs must be an int from 0 to {vocab_size}, got {top_logprobs!r}")
    return top_logprobs
