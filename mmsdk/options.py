"""Checks of the options a caller passes: each bad value is an `InputError` (a `ValueError`) naming
the option, the value and what is allowed, raised before any work starts."""
from .errors import InputError

DTYPES = (None, "float32", "bfloat16")
QUANTIZE = (None, "int8", "int4")
OFFLOAD = (None, "ple", "layers")
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")


def check_load_options(*, dtype=None, quantize=None, offload=None, threads=None, max_memory=None) -> None:
    _one_of("dtype", dtype, DTYPES)
    _one_of("quantize", quantize, QUANTIZE)
    _one_of("offload", offload, OFFLOAD)
    if threads is not None and not (_is_int(threads) and threads >= 1):
        raise InputError(f"threads must be a whole number >= 1 (or None for the default), got {threads!r}")
    if max_memory is not None and not (_is_int(max_memory) and max_memory > 0):
        raise InputError(f"max_memory must be a number of bytes > 0 (or None), got {max_memory!r}")


def check_sampling(sampling: dict, max_tokens) -> None:
    """`sampling`: the keyword arguments of generate/stream/chat/send beyond the named ones."""
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise InputError(f"unknown sampling option(s) {', '.join(unknown)}; known: {', '.join(SAMPLING_KEYS)}")
    if not (_is_int(max_tokens) and max_tokens >= 1):
        raise InputError(f"max_tokens must be a whole number >= 1, got {max_tokens!r}")
    rules = {  # name: (holds for the value, what is allowed)
        "temperature": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0 is greedy)"),
        "top_k": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0 (0 keeps every token)"),
        "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
        "min_p": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
        "repetition_penalty": (lambda v: _is_number(v) and v > 0, "a number > 0 (1 is no penalty)"),
        "seed": (_is_int, "a whole number"),
    }
    for name, value in sampling.items():
        holds, allowed = rules[name]
        if value is not None and not holds(value):
            raise InputError(f"{name} must be {allowed}, got {value!r}")


def check_stop(stop) -> None:
    if isinstance(stop, str):
        return
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise InputError(f"stop must be a str or a list of str, got {stop!r}")


def check_tool_choice(tool_choice, tool_names) -> None:
    """`tool_names`: the tools offered to this call (a forced call needs at least one)."""
    if tool_choice in ("auto", "none") or tool_choice in tool_names:
        return
    if tool_choice == "required" and tool_names:
        return
    names = f"; tools offered: {', '.join(sorted(tool_names))}" if tool_names else "; no tools were offered"
    raise InputError(f"tool_choice must be 'auto', 'required', 'none' or a tool's name, got {tool_choice!r}{names}")


def _one_of(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # NaN is no number here
