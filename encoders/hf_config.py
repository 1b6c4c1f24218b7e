"""Reading a Hugging Face checkpoint: a dataclass config from its config dict (unknown keys reported),
and modules built empty so that loading the checkpoint's tensors is the only initialization."""
from __future__ import annotations

import dataclasses
import warnings

import torch

from ..decoder.config import HF_GENERIC_KEYS  # one list for the decoder and the encoders


def hf_fields(cls, d: dict, ignored: frozenset = frozenset()) -> dict:
    """The entries of `d` that are fields of dataclass `cls` (None values dropped, so defaults apply).
    Keys that are neither fields, generic, nor in `ignored` are reported with a warning, never dropped silently."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names - HF_GENERIC_KEYS - ignored)
    if unknown:
        warnings.warn(f"{cls.__name__}: ignoring unknown config keys {unknown}", stacklevel=3)
    return {k: v for k, v in d.items() if k in names and v is not None}


def empty_module(module_cls, cfg) -> torch.nn.Module:
    """`module_cls(cfg)` with uninitialized CPU weights: built on the meta device, so no time goes into a
    random init the checkpoint overwrites anyway."""
    with torch.device("meta"):
        module = module_cls(cfg)
    return module.to_empty(device="cpu")
