"""Constrained decoding: a grammar (llguidance's Lark dialect, JSON schemas inline) turned into a
token mask over our tokenizer, applied as a logits processor before sampling.

llguidance was measured against xgrammar and outlines-core on Gemma's 262k vocabulary
(tests/eval/eval_tools.py --engines): it compiles a schema in ~1 ms where outlines-core takes
seconds, and Lark with inline `%json` expresses a Python-call tool block directly.
"""
import functools
import json
import logging
import time

import llguidance
import numpy as np
import torch

log = logging.getLogger(__name__)

# Bounds added to schemas that set none, so a looping small model still closes its output within
# the token budget; they only narrow what the grammar allows, never what validation accepts.
MAX_STRING_CHARS = 160
MAX_ARRAY_ITEMS = 16
MAX_MAGNITUDE = 10**15
NUMBER_STEP = 1e-6
# The last tokens of the budget prefer tokens that close what is open (a string, an array, an object,
# a call): bounds alone let a sampled list of long strings run past max_tokens, unparsed.
CLOSING_TOKENS = 24
_CLOSERS = frozenset(b'"]})')
# Python's json.dumps spacing: the spelling the model has seen most, and no runaway whitespace.
_JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


@functools.lru_cache(maxsize=4)
def closing_tokens(tokenizer) -> np.ndarray:
    """Which ids spell only closing brackets and quotes, with optional spaces around them."""
    return np.array([bool(t) and not t.startswith(b"\xff") and bool(set(t) & _CLOSERS)
                     and set(t) <= _CLOSERS | {32} for t in tokenizer.token_bytes()])


@functools.lru_cache(maxsize=4)
def llg_tokenizer(tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of a `GemmaTokenizer`: each token's bytes and our own encoder (built once
    per tokenizer)."""
    t0 = time.perf_counter()
    tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocabulary(tokenizer)), n_vocab=tokenizer.vocab_size,
                                 eos_token=list(tokenizer.eos_ids))
    log.info("grammar tokenizer built in %.1f s", time.perf_counter() - t0)
    return tok


class _Vocabulary:
    """What `llguidance.TokenizerWrapper` reads from a tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens = tokenizer, tokenizer.token_bytes()
        self.eos_token_id, self.bos_token_id = tokenizer.eos_ids[0], tokenizer.bos_id
        self.special_token_ids = sorted(tokenizer.special_ids)

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):  # tells the wrapper to hand us text, not bytes
            raise TypeError("text expected")
        return self.tokenizer.encode(text, add_bos=False)


def json_value_grammar(schema: dict, defs: dict | None = None) -> str:
    """A Lark fragment matching one JSON value of `schema` (`defs` are the `$defs` its refs use)."""
    schema = bounded(dict(schema))
    if defs:
        schema["$defs"] = bounded(defs)
    schema["x-guidance"] = _JSON_STYLE
    return "%json " + json.dumps(schema, ensure_ascii=False)


def json_grammar(schema: dict) -> str:
    """A whole-output grammar: one JSON value of `schema`."""
    return "start: value\nvalue: " + json_value_grammar(schema)


def bounded(node):
    """A copy of a JSON schema where strings, arrays and numbers without bounds get them, and
    objects with listed properties take no others."""
    if isinstance(node, list):
        return [bounded(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: (v if k in ("enum", "const", "default", "examples") else bounded(v)) for k, v in node.items()}
    kinds = out.get("type") if isinstance(out.get("type"), list) else [out.get("type")]
    if "string" in kinds and "maxLength" not in out and not ({"enum", "const", "pattern", "format"} & out.keys()):
        out["maxLength"] = max(MAX_STRING_CHARS, out.get("minLength", 0))
    if "array" in kinds and "maxItems" not in out:
        out["maxItems"] = max(MAX_ARRAY_ITEMS, out.get("minItems", 0))
    if {"integer", "number"} & set(kinds):  # caps the digits before the point: "1000000000..." loops
        if not {"minimum", "exclusiveMinimum"} & out.keys():
            out["minimum"] = -MAX_MAGNITUDE
        if not {"maximum", "exclusiveMaximum"} & out.keys():
            out["maximum"] = MAX_MAGNITUDE
    if "number" in kinds and "multipleOf" not in out:  # and after it: "1.000000000..." loops too
        out["multipleOf"] = NUMBER_STEP
    if "object" in kinds and "properties" not in out and "maxProperties" not in out:
        out["maxProperties"] = max(MAX_ARRAY_ITEMS, out.get("minProperties", 0))
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False  # pydantic ignores extra keys; a small model rambles in them
    return out


class GrammarConstraint:
    """A logits processor `(logits (V,), generated ids) -> logits` that lets through only tokens the
    grammar allows next (end-of-turn only once the output is complete). One per generation.
    With a `budget` (max_tokens), its last CLOSING_TOKENS tokens take only closing tokens where
    the grammar allows one, so the output completes before the budget runs out."""

    def __init__(self, tokenizer, grammar: str, budget: int | None = None):
        self.matcher = llguidance.LLMatcher(llg_tokenizer(tokenizer), grammar, log_level=0)
        if self.matcher.is_error():
            raise ValueError(f"invalid grammar: {self.matcher.get_error()}")
        self.vocab, self.budget = tokenizer.vocab_size, budget
        self.closers = closing_tokens(tokenizer) if budget is not None else None
        self.bitmask = np.full((self.vocab + 31) // 32, -1, dtype=np.int32)
        self.consumed = 0
        self.mask_seconds, self.mask_calls = 0.0, 0  # cost of computing and applying masks

    def __call__(self, logits: torch.Tensor, generated) -> torch.Tensor:
        t0 = time.perf_counter()
        for token in generated[self.consumed:]:
            if not self.matcher.consume_token(token):
                raise RuntimeError(f"grammar rejected token {token}: {self.matcher.get_error()}")
        self.consumed = len(generated)
        self.matcher.unsafe_compute_mask_ptr(self.bitmask.ctypes.data, self.bitmask.nbytes)
        allowed = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little").view(bool)[:self.vocab]
        if self.closers is not None and len(generated) >= self.budget - CLOSING_TOKENS:
            closing = allowed & self.closers
            if closing.any():
                allowed = closing
        # numpy, not torch: torch's thread pool makes this 262k-element select ~50x slower on a busy CPU
        values = logits.detach().float().cpu().numpy()
        n = min(len(values), self.vocab)
        out = np.full(len(values), -np.inf, dtype=np.float32)
        out[:n] = np.where(allowed[:n], values[:n], np.float32(-np.inf))
        self.mask_seconds += time.perf_counter() - t0
        self.mask_calls += 1
        return torch.from_numpy(out).to(logits.device)

    def is_complete(self) -> bool:
        return self.matcher.is_accepting() or self.matcher.is_stopped()
