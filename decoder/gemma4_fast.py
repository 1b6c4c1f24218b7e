"""Gemma 4's decode-time module swap: `gemma4.py` stays the readable reference.

A decoded token through a layer is one C call (`gemma4_step.h`, `FastBlock`), as Gemma 3n's is
(`gemma3n_fast`, whose cache handling it shares): in Python the layer is ~40 small torch ops (eight
norms, RoPE on q and k, the per-layer-input gate, the output scale) around nine products, and on
a 2-core AMD EPYC Zen 3 their dispatch costs about what streaming the layer's 4-bit weights takes.
Prompts, batches, image tokens seeing each other both ways, and anything the call does not take
(not float32, a projection neither 4-bit nor int8, our kernels absent) run the reference `Block.forward`.
"""
import ctypes
import functools
import math
import weakref

import torch
from torch import nn

from . import native
from .fused import CLinear, c_linear, kernel_weights
from .gemma3n_fast import step_kv
from .gemma4 import Block
from .layers import step_mask

_ptr, _long, _float = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
_GAINS = ("attn_norm", "q_norm", "k_norm", "v_norm", "post_attn_norm", "mlp_norm", "post_mlp_norm", "ple_norm")
_PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down", "ple_gate", "ple_proj")


class _Gemma4Layer(ctypes.Structure):  # mirrors `G4Layer` in gemma4_step.h
    _fields_ = ([(n, _long) for n in ("hidden", "heads", "kv_heads", "head_dim", "inter", "ple_dim", "own_kv",
                                      "values_are_keys")]
                + [(n, _float) for n in ("eps", "head_eps", "layer_scalar")]
                + [(n, _ptr) for n in _GAINS]
                + [(n, CLinear) for n in _PROJECTIONS])


@functools.cache
def _check_mirror() -> None:
    """The C struct and its mirror must agree byte for byte, or the call reads its pointers from the
    wrong places: a mismatch is a bug here, raised before the first call."""
    size = native.library().sizeof_gemma4_layer()
    if ctypes.sizeof(_Gemma4Layer) != size:
        raise RuntimeError(f"_Gemma4Layer is {ctypes.sizeof(_Gemma4Layer)} bytes here and {size} in the kernels")


_PLANS = weakref.WeakKeyDictionary()  # block -> (key, its C description): beside it, so a block deep-copies


class FastBlock(Block):
    """`Block` with a decoded token's layer in one C call (see the module notes); the same parameters."""

    def _plan(self) -> _Gemma4Layer | None:
        """The C description of this layer, made again when a weight, gain or the output scale changes;
        None where the call does not take it."""
        attn, mlp = self.attn, self.mlp
        own = attn.kv_source == attn.idx
        ple = hasattr(self, "ple_gate")
        mods = (attn.q_proj, attn.k_proj if own else None, attn.v_proj if own else None, attn.o_proj,
                mlp.gate_proj, mlp.up_proj, mlp.down_proj, self.ple_gate if ple else None,
                self.ple_proj if ple else None)
        norms = [self.attn_norm, attn.q_norm, getattr(attn, "k_norm", None), getattr(attn, "v_norm", None),
                 self.post_attn_norm, self.mlp_norm, self.post_mlp_norm, self.ple_norm if ple else None]
        # cheap to check every token (the tensors' identities and versions), unlike `kernel_weights`; a plan
        # keeps its tensors, so their ids are not reused while it is held
        tensors = [t for m in mods if m is not None for t in (*m._parameters.values(), *m._buffers.values())]
        gains = [n._parameters.get("weight") for n in norms if n is not None and n._parameters.get("weight") is not None]
        key = (tuple(map(id, tensors)) + tuple((w.data_ptr(), w._version) for w in gains)
               + (self.layer_scalar.data_ptr(), self.layer_scalar._version))
        cached = _PLANS.get(self)
        if cached is not None and cached[0] == key:
            return cached[1]
        weights = [None if m is None else kernel_weights(m) for m in mods]
        E, D, I = self.attn_norm.dim, attn.head_dim, mlp.down_proj.in_features
        P = self.ple_proj.in_features if ple else 0
        if (any(w is None for w, m in zip(weights, mods) if m is not None)
                or any(n % 16 for n in (E, D, I, P)) or not native.available("gemma4_layer_step")):
            _PLANS[self] = (key, None)
            return None
        _check_mirror()
        gains = [n.gain() if n is not None else None for n in norms]
        gains = [torch.full((D,), g) if isinstance(g, float) else g for g in gains]  # v_norm: no scale
        proj = [CLinear() if m is None else c_linear(m, w) for m, w in zip(mods, weights)]
        layer = _Gemma4Layer(E, attn.n_heads, attn.n_kv, D, I, P, int(own), int(own and attn.v_proj is None),
                             math.sqrt(E * self.attn_norm.eps), math.sqrt(D * attn.q_norm.eps),
                             float(self.layer_scalar), *[None if g is None else g.data_ptr() for g in gains], *proj)
        layer.keep = (gains, weights, tensors)  # what the pointers (and `key`'s ids) point into
        _PLANS[self] = (key, layer)
        return layer

    def forward(self, x, rope, cache, positions, per_layer_input, shared):
        B, T, _ = x.shape
        if (B != 1 or T != 1 or x.dtype != torch.float32 or "groups" in shared
                or (per_layer_input is not None and per_layer_input.dtype != torch.float32)):
            return super().forward(x, rope, cache, positions, per_layer_input, shared)
        layer = self._plan()
        step = None if layer is None else step_kv(self.attn, cache, positions, shared)
        if step is None:
            return super().forward(x, rope, cache, positions, per_layer_input, shared)
        k, v, k_pos, slot = step
        bias = step_mask(shared, positions, k_pos, self.attn.window)
        out = x.contiguous().clone()  # the call updates it in place
        ple = None if per_layer_input is None else per_layer_input.contiguous()
        cos, sin = (t.contiguous() for t in rope)
        native.library().gemma4_layer_step(ctypes.byref(layer), out.data_ptr(), None if ple is None else ple.data_ptr(),
                                           cos.data_ptr(), sin.data_ptr(), k.data_ptr(), v.data_ptr(), k.stride(1),
                                           slot, k.shape[2], bias.data_ptr())
        return out


def accelerate_(model: nn.Module) -> nn.Module:
    """Swap every Gemma 4 `Block` for `FastBlock` (the same parameters, in place), which falls back to the
    reference where its one C call does not fit."""
    for mod in model.modules():
        if type(mod) is Block:
            mod.__class__ = FastBlock
    return model
