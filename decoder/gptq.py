"""GPTQ for int4 weights (Frantar et al., "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", 2022).

Rounding each weight to its nearest 4-bit level ignores that a layer's inputs are correlated. GPTQ
rounds the columns of W one at a time and spreads each column's rounding error over the columns
not yet rounded, weighted by the inverse of H = X^T X, the Gram matrix of the layer's inputs over a
calibration text; so the layer's outputs on such inputs, not its weights, stay close. Groups of
`group_size` columns get their scale and zero from the weights before any correction, and columns
go in order of decreasing input energy (the reference implementation's `static_groups` and `act_order`).

On Gemma 3 270M (stored as Q5_0/Q6_K/Q4_K), every layer int4 group 32, scored on 2048 tokens:
perplexity +15.2% with rounding to nearest (best clip per group); GPTQ over 4096 calibration
tokens +5.8% in column order, +3.9% in input-energy order, +3.5% over 8192 tokens. Scored on 16384
tokens: +4.8%, and +2.4% with the loader's Q4_K_M mix (`quant_plan.int4_bits`).
"""
import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

from . import native
from .quantize import Int4Linear, quantize_int4

log = logging.getLogger(__name__)

# Modules whose docstrings make the calibration text: real English prose about code that every
# Python install carries, and not the CPython topics `mmsdk bench --quality` measures on.
_CALIBRATION_MODULES = ("json", "csv", "argparse", "logging", "pathlib", "collections", "itertools", "functools",
                        "re", "datetime", "subprocess", "threading", "asyncio", "unittest", "email", "http.client",
                        "urllib.request", "sqlite3", "zipfile", "tarfile")
DAMPING = 0.01  # added to H's diagonal, as a share of its mean: keeps the inverse well conditioned
BLOCK = 128  # columns whose error updates are applied together (the paper's lazy batch)


def calibration_text() -> str:
    """The docstrings (over 200 characters) of the classes and functions of common stdlib modules."""
    docs = []
    for name in _CALIBRATION_MODULES:
        mod = importlib.import_module(name)
        for _, obj in inspect.getmembers(mod, lambda o: inspect.isfunction(o) or inspect.isclass(o)):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 200:
                docs.append(doc)
    return "\n\n".join(docs)


@torch.inference_mode()
def input_grams(model: nn.Module, windows: Iterable[Callable[[], None]], names: set[str]) -> dict[str, torch.Tensor]:
    """X^T X of the inputs of the `nn.Linear` layers called `names`, summed over every forward pass
    that the calls in `windows` make."""
    grams: dict[str, torch.Tensor] = {}

    def hook(name):
        def add(_mod, inputs, _out):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
            grams[name] = grams[name].addmm_(x.t(), x) if name in grams else x.t() @ x
        return add

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n in names]
    try:
        for run in windows:
            run()
    finally:
        for h in handles:
            h.remove()
    return grams


def gptq_int4(w: torch.Tensor, gram: torch.Tensor, group_size: int) -> Int4Linear:
    """`w` (N, K) as an `Int4Linear`, rounded column by column with GPTQ's error feedback. Torch on one
    thread: the torch loop's steps are ops on N floats, where a second thread only adds waits (on a busy
    2-core machine, 10x slower); the C loop (`native.gptq_block`) takes rows on torch's threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _gptq_int4(w, gram, group_size, threads)
    finally:
        torch.set_num_threads(threads)


def _gptq_int4(w: torch.Tensor, gram: torch.Tensor, group_size: int, threads: int = 1) -> Int4Linear:
    original, w = w, w.float().clone()
    N, K = w.shape
    h = gram.clone()
    dead = torch.diag(h) == 0  # inputs never seen: their columns cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(DAMPING * h.diagonal().mean())
    # columns with the largest inputs first: their errors are then spread over the most columns
    order = torch.argsort(torch.diag(h), descending=True)
    h = h[order][:, order]
    chol, info = torch.linalg.cholesky_ex(h)
    if info or not torch.isfinite(h).all():  # non-finite activations, or H not positive definite
        log.warning("GPTQ: input Gram matrix of a %s layer is unusable; rounding to nearest", tuple(w.shape))
        return Int4Linear.from_float(original, group_size)
    # upper Cholesky factor of H^-1: row i holds how column i's error moves the columns after it
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)
    # each group's range from the weights as they are: one clip search for the whole matrix
    _, scales, zeros = quantize_int4(w, group_size)
    codes = torch.zeros(N, K, dtype=torch.uint8)
    w, group_of = w[:, order], order // group_size
    if native.available("gptq_block"):
        round_block = functools.partial(native.gptq_block, threads=threads)
    else:
        round_block = gptq_block_reference
    for b0 in range(0, K, BLOCK):
        b1 = min(b0 + BLOCK, K)
        groups = group_of[b0:b1]
        block_codes, errs = round_block(w[:, b0:b1].contiguous(), scales[:, groups].contiguous(),
                                        zeros[:, groups].contiguous(), hinv[b0:b1, b0:b1].contiguous())
        codes[:, order[b0:b1]] = block_codes
        w[:, b1:] -= errs @ hinv[b0:b1, b1:]
    return Int4Linear.from_codes(codes, scales, zeros, group_size)


def gptq_block_reference(block: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                         hinv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One block's columns rounded in order, each one's error moved onto the columns after it (in place):
    (codes (N, B), errors (N, B)). `native.gptq_block` is this in C, row by row."""
    codes, errs = torch.empty(block.shape, dtype=torch.uint8), torch.empty(block.shape)
    for i in range(block.shape[1]):
        q = torch.round((block[:, i] - zero[:, i]) / scale[:, i] + 8.0).clamp_(0, 15)
        codes[:, i] = q.to(torch.uint8)
        err = (block[:, i] - ((q - 8.0) * scale[:, i] + zero[:, i])) / hinv[i, i]
        block[:, i:] -= err[:, None] * hinv[i, i:][None, :]
        errs[:, i] = err
    return codes, errs


CALIBRATION_TOKENS = 8192  # 16 windows of 512; measured 4096 / 8192 / 16384: +3.9% / +3.5% / +4.5% perplexity
_WINDOW = 512
GRAM_BUDGET = 1 << 30  # bytes of Gram matrices held at once; more layers than fit take more passes


def gptq_quantize_(model: nn.Module, names: Iterable[str], tokenizer, group_size: int,
                   tokens: int = CALIBRATION_TOKENS) -> None:
    """Replace the float `nn.Linear` layers called `names` in `model` (a decoder called as
    `model(ids, caches, positions)`) by GPTQ-rounded `Int4Linear`s, calibrated on `calibration_text()`."""
    from tqdm import tqdm

    from .kv_cache import make_cache

    ids = tokenizer.encode(calibration_text(), add_bos=False)[:tokens]
    step = _WINDOW - 1

    def window(s):
        part = torch.tensor([[tokenizer.bos_id, *ids[s:s + step]]])
        return lambda: model(part, make_cache(model.config), torch.arange(part.shape[1]))

    windows = [window(s) for s in range(0, len(ids), step)]
    with tqdm(total=len(names), desc="int4 (GPTQ)", unit="layer", leave=False, disable=None) as bar:
        # in model order, as many layers per pass as the budget holds: a 4B model's down_proj alone
        # has a 420 MB Gram matrix; later passes see the earlier layers already rounded, as GPTQ does
        for part in _passes(model, names):
            grams = input_grams(model, windows, set(part))
            for name in part:
                parent, _, child = name.rpartition(".")
                owner = model.get_submodule(parent)
                setattr(owner, child, gptq_int4(getattr(owner, child).weight.detach(), grams.pop(name), group_size))
                bar.update()


def _passes(model: nn.Module, names: Iterable[str]) -> list[list[str]]:
    """`names` in model order, split so each part's Gram matrices (K^2 float32 each) fit GRAM_BUDGET."""
    wanted, parts, size = set(names), [[]], 0
    for name, mod in model.named_modules():
        if name in wanted:
            need = 4 * mod.weight.shape[1] ** 2
            if parts[-1] and size + need > GRAM_BUDGET:
                parts.append([])
                size = 0
            parts[-1].append(name)
            size += need
    return parts
