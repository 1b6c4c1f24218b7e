"""Decode steps of several sequences in one pass (continuous batching, as vLLM and llama-server do).

Decoding is memory-bound: a step streams every weight for one row. `batched_step` runs one token
of each of B sequences through the layers together (`fused.rows`: each weight read once for all
rows), each row with the one-row step's arithmetic, so every sequence gets the tokens it would get
alone. The LM head, the largest single matrix of a small Gemma, is read once for all rows too.

`StepBatcher` gathers those steps from generations that each run on a thread of their own (the
server's streams): a generation's one-token forward waits until every other generation of the
round has either asked for its own step or finished its turn, then one pass serves them all. The
threads take turns under one lock, so only one runs Python at a time; the generation code itself
(`generate.generate_step`) does not change, it is handed `StepBatcher.view()` as its model. Every
forward pass (batched or not) runs on one thread of the batcher's own: OpenMP keeps a team of workers
per calling thread, and passes hopping between the streams' threads left the last team spinning on
the cores the next one needed.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from . import fused
from .config import SLIDING
from .gemma3 import Gemma3Text
from .kv_cache import FullCache, RingCache


def batchable(model, caches: list) -> bool:
    """Whether `batched_step` takes one token of a sequence with these caches: a Gemma 3 whose every
    layer runs our C calls on caches of one float32 sequence. Asked every step: the layers' answer is
    kept on the model (`batched_step` checks again and falls back to steps alone)."""
    if not isinstance(model, Gemma3Text) or not all(
            isinstance(c, (RingCache, FullCache)) and c.k.dtype == torch.float32 and c.k.shape[0] == 1 for c in caches):
        return False
    if getattr(model, "_batchable", None) is None:
        x = torch.empty(1, 1, model.config.hidden_size)
        model._batchable = all(fused.plan(block, x, cache) is not None for block, cache in zip(model.layers, caches))
    return model._batchable


@torch.inference_mode()
def batched_step(model: Gemma3Text, tokens: list[int], caches: list[list], positions: list[int]) -> list[torch.Tensor]:
    """Logits (vocab,) of one token of each of B sequences (`caches[b]` its caches, at `positions[b]`),
    written to their caches as B one-token steps would write them."""
    # The final norm row by row: torch's reductions vectorize one row and several differently (~1e-7
    # apart), which would make a near-tie pick differ from the sequence decoded alone. The embedding is
    # lookups and elementwise products, each row as alone (`Int8Embedding` rotates a few rows one by one)
    x = model.embed_tokens(torch.tensor([tokens]))
    pos = torch.tensor(positions)
    ropes = {SLIDING: model.rope_local(pos, x.dtype), "full_attention": model.rope_global(pos, x.dtype)}
    layers = [fused.plan(block, x, caches[0][i]) for i, block in enumerate(model.layers)]
    if any(layer is None for layer in layers):  # the weights changed since `batchable` said yes: steps alone
        model._batchable = None
        return [model.logits(model(torch.tensor([[t]]), c, torch.tensor([p])))[0, -1]
                for t, c, p in zip(tokens, caches, positions)]
    x = fused.stack_rows(layers, x, [ropes[block.layer_type] for block in model.layers],
                         [block.attn.window for block in model.layers], caches, pos)
    return _logit_rows(model, torch.cat([model.norm(x[:, b:b + 1]) for b in range(x.shape[1])], 1))


_head_out = threading.local()  # the LM head's (rows, vocab) output, kept from step to step on each thread


def _logit_rows(model, h: torch.Tensor) -> list[torch.Tensor]:
    """model.logits(h)[0] for the rows h (1, B, hidden), one copied-out tensor a row. Several rows go
    through a buffer kept from step to step (`Gemma3Text.logits(out=)`): the loader serves blocks of 4 MB
    and more from fresh mappings (memory.map_large_allocations), and 4 rows of Gemma 3's 262144 logits
    are 4 MB, ~1,000 pages faulted in anew each step (1-6 ms, AMD Zen 3 under load); a row (1 MB) comes
    from the heap and is reused."""
    B, vocab = h.shape[1], model.embed.num_embeddings
    if B == 1:
        return list(model.logits(h)[0])
    out = getattr(_head_out, "buf", None)
    if out is None or out.shape != (B, vocab):
        out = _head_out.buf = torch.empty(B, vocab)
    return [row.clone() for row in model.logits(h, out=out)[0]]


class StepBatcher:
    """One model shared by generations on several threads; their one-token steps run batched.

    The caller announces a round of n threads (`round(n)`), then each does its work inside `turn()`,
    holding the lock except while waiting for its step. The batch runs when every thread of the round
    still inside is waiting for one."""

    def __init__(self, model):
        self.model = model
        self._cond = threading.Condition()
        self._inside = 0
        self._pending: list[dict] = []
        self.passes = self.rows = 0  # batched passes run, and the steps they served
        self._pass_thread = ThreadPoolExecutor(1, thread_name_prefix="mmsdk-batch")

    def on_pass_thread(self, fn, *args, **kw):
        """fn(*args, **kw) run on the thread every pass runs on (see the module notes), in inference
        mode as generation runs (the mode is per thread)."""
        return self._pass_thread.submit(_inference, fn, args, kw).result()

    def view(self) -> "_BatchedModel":
        return _BatchedModel(self.model, self)

    def round(self, n: int) -> None:
        """n threads are about to take a turn each (before any starts): a step waits for all of them."""
        with self._cond:
            self._inside += n

    def turn(self) -> "_Turn":
        """One thread's turn of a `round`."""
        return _Turn(self)

    def step(self, token: int, caches: list, position: int) -> torch.Tensor:
        """Logits (vocab,) of one sequence's token, computed in the next batched pass (call inside a turn)."""
        entry = {"token": token, "caches": caches, "position": position}
        self._pending.append(entry)
        self._run_if_ready()
        while "logits" not in entry and "error" not in entry:
            self._cond.wait()
        if "error" in entry:
            raise entry["error"]
        return entry["logits"]

    def _run_if_ready(self) -> None:
        """Run the pending steps once no thread inside can add one (lock held)."""
        if not self._pending or len(self._pending) < self._inside:
            return
        batch, self._pending = self._pending, []
        try:
            logits = self.on_pass_thread(batched_step, self.model, [e["token"] for e in batch],
                                         [e["caches"] for e in batch], [e["position"] for e in batch])
            for e, row in zip(batch, logits):
                e["logits"] = row
        except Exception as exc:  # noqa: BLE001 - each waiting generation raises it as its own
            for e in batch:
                e["error"] = exc
        self.passes += 1
        self.rows += len(batch)
        self._cond.notify_all()


def _inference(fn, args, kw):
    with torch.inference_mode():
        return fn(*args, **kw)


class _Turn:
    def __init__(self, batcher: StepBatcher):
        self.b = batcher

    def __enter__(self):
        self.b._cond.acquire()

    def __exit__(self, *exc):
        self.b._inside -= 1
        self.b._run_if_ready()  # the others may have been waiting for this thread alone
        self.b._cond.release()


class _BatchedModel:
    """The model as a generation sees it, its one-token steps sent to the batcher: `model(ids, caches,
    positions)` returns a stand-in hidden state that `logits` turns into the batch's row. Everything
    else (prompts, speculative checks, attributes) is the model's own."""

    def __init__(self, model, batcher: StepBatcher):
        self._model, self._batcher = model, batcher

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, ids, caches, positions, **kw):
        if ids is None or ids.shape != (1, 1) or kw.get("embeds") is not None or not batchable(self._model, caches):
            return self._batcher.on_pass_thread(self._model, ids, caches, positions, **kw)
        logits = self._batcher.step(int(ids[0, 0]), caches, int(positions[0]))
        return _Hidden(logits)

    def logits(self, h):
        return h.logits.view(1, 1, -1) if isinstance(h, _Hidden) else self._batcher.on_pass_thread(self._model.logits, h)


class _Hidden:
    """What a batched step hands back in place of the hidden state (1, 1, hidden): its logits, already
    computed. Its last position is itself (`prefill` takes h[:, -1:])."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __getitem__(self, index):
        return self
