"""Gemma 3n's decode-time module swaps: `gemma3n.py` stays the readable reference.

A decoded token through a layer is one C call (`gemma3n_step.h`, `FastBlock`): in Python it is ~80
small torch ops a layer (AltUp, LAuReL, ten norms, the sparsity gate, the per-layer-input gate),
~100 ms of a token on a 2-core AMD EPYC Zen 3, about what streaming the layers' 4-bit weights takes.
Prompts, batches and anything the call does not take (not float32, a projection neither 4-bit nor
int8, our kernels absent) run the reference `Block.forward`.

AltUp's products are 4 wide: a (1, 2048) x (2048, 4) router, 4 x 4 and 16 x 4 coefficient maps,
and the (2048, 4) x (4, 4) stream mix. As BLAS calls they cost more than their arithmetic: torch
hands them to its 2-thread BLAS, whose threads wait on each other when the cores are busy (the
stream mix alone: 6-12 ms a call on a loaded 2-core AMD EPYC Zen 3, 0.4 ms as the broadcast
sums here, `tests/eval/bench_gemma3n.py --profile`). For a few rows (decoding, a speculative
check) `AltUpRows` computes them as broadcast multiply-and-sums, which torch runs on the calling
thread at these sizes; prompts keep the reference's matmuls.
"""
import ctypes
import functools
import math
import weakref

import torch
from torch import nn

from . import native
from .fused import CLinear, c_linear, kernel_weights
from .gemma3n import AltUp, Block
from .kv_cache import FullCache, RingCache
from .layers import step_mask
from .quantize import Int8Linear, dequantize_int8

_FEW_ROWS = 16  # rows up to which the broadcast sums run; beyond, their temporaries outgrow a matmul


def _small_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """x W^T for a float `linear` with few outputs, as one broadcast product and a sum."""
    return (x[..., None, :] * linear.weight.to(x.dtype)).sum(-1)


class AltUpRows(AltUp):
    """`AltUp` with its 4-wide products as broadcast sums for a few rows (the same sums in another
    order: within float rounding of the reference)."""

    def route(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] > _FEW_ROWS:
            return super().route(x)
        routed = _small_linear(self.modality_router, self.router_norm(x) * self.router_scale)
        return torch.tanh(routed.float()).type_as(x)

    def predict(self, streams: torch.Tensor) -> torch.Tensor:
        K, B, T, H = streams.shape
        if T > _FEW_ROWS:
            return super().predict(streams)
        coefs = _small_linear(self.prediction_coefs, self.route(streams[self.active])).reshape(B, T, K, K)
        out = streams.clone()
        for i in range(K):  # stream j += coefs[j, i] * stream i
            out += coefs[..., i].permute(2, 0, 1)[..., None] * streams[i]
        return out

    def correct(self, predictions: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
        if activated.shape[-2] > _FEW_ROWS:
            return super().correct(predictions, activated)
        coefs = _small_linear(self.correction_coefs, self.route(activated)) + 1.0  # (B, T, K)
        innovation = activated - predictions[self.active]
        return innovation[None] * coefs.permute(2, 0, 1)[..., None] + predictions


_SMALL = ("modality_router", "prediction_coefs", "correction_coefs")


def _as_float(linear: nn.Module) -> nn.Linear | None:
    """A float `nn.Linear` of one of AltUp's maps: itself, or an unrotated int8 one dequantized (a
    weight cache written before they were kept float); None for anything else."""
    if type(linear) is nn.Linear:
        return linear
    if isinstance(linear, Int8Linear) and not linear.rotation:
        out = nn.Linear(linear.in_features, linear.out_features, bias=False)
        out.weight = nn.Parameter(dequantize_int8(linear.weight, linear.scales), requires_grad=False)
        return out
    return None


_ptr, _long, _float = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
_GAINS = ("router_norm", "attn_norm", "q_norm", "k_norm", "v_norm", "laurel_norm", "post_attn_norm", "mlp_norm",
          "post_mlp_norm", "ple_norm", "correct_scale")
_PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down", "laurel_left", "laurel_right", "ple_gate", "ple_proj")


class _Gemma3nLayer(ctypes.Structure):  # mirrors `G3nLayer` in gemma3n_step.h
    _fields_ = ([(n, _long) for n in ("hidden", "heads", "kv_heads", "head_dim", "inter", "ple_dim", "streams", "own_kv")]
                + [(n, _float) for n in ("eps", "head_eps", "router_scale", "std_multiplier")]
                + [(n, _ptr) for n in (*_GAINS, "router", "prediction", "correction")]
                + [(n, CLinear) for n in _PROJECTIONS])


@functools.cache
def _check_mirror() -> None:
    """The C struct and its mirror must agree byte for byte, or the call reads its pointers from the
    wrong places: a mismatch is a bug here, raised before the first call."""
    size = native.library().sizeof_gemma3n_layer()
    if ctypes.sizeof(_Gemma3nLayer) != size:
        raise RuntimeError(f"_Gemma3nLayer is {ctypes.sizeof(_Gemma3nLayer)} bytes here and {size} in the kernels")


def _float_rows(t: torch.Tensor) -> torch.Tensor | None:
    return t if t.dtype == torch.float32 and t.is_contiguous() else None


def step_kv(attn, cache, positions, shared: dict):
    """(keys, values, their positions, the cache slot of this row) for one decoded row's fused layer call:
    a layer with its own keys reserves its slot (and hands the cache to the layers sharing it); a KV-shared
    layer reads its source's. None (nothing reserved) where the call does not take the cache."""
    if attn.kv_source == attn.idx:
        if not isinstance(cache, (RingCache, FullCache)) or cache.k.dtype != torch.float32 or cache.k.shape[0] != 1:
            return None
        slot, keys = cache.reserve(int(positions[0]))
        k, v, k_pos = cache.k[:, :, :keys], cache.v[:, :, :keys], cache.key_positions()[:keys]
        if attn.is_kv_source:  # what `cache.update` returns, for the layers that share it
            shared[attn.idx] = k, v, k_pos
        return k, v, k_pos, slot
    k, v, k_pos = shared[attn.kv_source]
    if k.dtype != torch.float32 or k.stride()[1:] != (k.stride(1), k.shape[3], 1) or v.stride() != k.stride():
        k, v = k.float().contiguous(), v.float().contiguous()
    return k, v, k_pos, 0


_PLANS = weakref.WeakKeyDictionary()  # block -> (key, its C description): beside it, so a block deep-copies


class FastBlock(Block):
    """`Block` with a decoded token's layer in one C call (see the module notes); the same parameters."""

    def _plan(self) -> _Gemma3nLayer | None:
        """The C description of this layer, made again when a weight or gain changes; None where the call
        does not take it."""
        attn, mlp, altup = self.attn, self.mlp, self.altup
        own = attn.kv_source == attn.idx
        mods = (attn.q_proj, attn.k_proj if own else None, attn.v_proj if own else None, attn.o_proj,
                mlp.gate_proj, mlp.up_proj, mlp.down_proj, self.laurel.linear_left, self.laurel.linear_right,
                self.ple_gate, self.ple_proj)
        smalls = [getattr(altup, n) for n in ("modality_router", "prediction_coefs", "correction_coefs")]
        norms = [altup.router_norm, self.attn_norm, attn.q_norm, getattr(attn, "k_norm", None),
                 getattr(attn, "v_norm", None), self.laurel.norm, self.post_attn_norm, self.mlp_norm,
                 self.post_mlp_norm, self.ple_norm]
        # cheap to check every token (the tensors' identities and versions), unlike `kernel_weights`; a plan
        # keeps its tensors, so their ids are not reused while it is held
        tensors = [t for m in (*mods, *smalls) if m is not None for t in (*m._parameters.values(), *m._buffers.values())]
        gains = [n._parameters.get("weight") for n in norms if n is not None and n._parameters.get("weight") is not None]
        key = (tuple(map(id, tensors)) + tuple((w.data_ptr(), w._version) for w in gains)
               + (altup.correct_output_scale.data_ptr(), altup.correct_output_scale._version))
        cached = _PLANS.get(self)
        if cached is not None and cached[0] == key:
            return cached[1]
        weights = [None if m is None else kernel_weights(m) for m in mods]
        small = [_float_rows(m.weight) if type(m) is nn.Linear else None for m in smalls]
        E, D, I, P = self.attn_norm.dim, attn.head_dim, mlp.down_proj.in_features, self.ple_proj.in_features
        if (any(w is None for w, m in zip(weights, mods) if m is not None) or any(t is None for t in small)
                or (own and attn.v_proj is None)  # Gemma 4's values-are-keys layers: not what the call computes
                or altup.correction_coefs.weight.shape[0] > 8
                or any(n % 16 for n in (E, D, I, P)) or not native.available("gemma3n_layer_step")):
            _PLANS[self] = (key, None)
            return None
        _check_mirror()
        gains = [n.gain() if n is not None else None for n in norms]
        gains = [torch.full((D,), g) if isinstance(g, float) else g for g in gains]  # v_norm: no scale
        scale = altup.correct_output_scale.detach().float().contiguous() if self.correct_scale else None
        gains.append(scale)
        proj = [CLinear() if m is None else c_linear(m, w) for m, w in zip(mods, weights)]
        layer = _Gemma3nLayer(E, attn.n_heads, attn.n_kv, D, I, P, altup.correction_coefs.weight.shape[0], int(own),
                              math.sqrt(E * self.attn_norm.eps), math.sqrt(D * attn.q_norm.eps), altup.router_scale,
                              mlp.std_multiplier or 0.0,
                              *[None if g is None else g.data_ptr() for g in gains],
                              *[t.data_ptr() for t in small], *proj)
        layer.keep = (gains, weights, small, tensors)  # what the pointers (and `key`'s ids) point into
        _PLANS[self] = (key, layer)
        return layer

    def forward(self, streams, rope, cache, positions, per_layer_input, shared):
        K, B, T, E = streams.shape
        if B != 1 or T != 1 or streams.dtype != torch.float32 or per_layer_input.dtype != torch.float32:
            return super().forward(streams, rope, cache, positions, per_layer_input, shared)
        layer = self._plan()
        attn = self.attn
        step = None if layer is None else step_kv(attn, cache, positions, shared)
        if step is None:
            return super().forward(streams, rope, cache, positions, per_layer_input, shared)
        k, v, k_pos, slot = step
        bias = step_mask(shared, positions, k_pos, attn.window)
        out = streams.contiguous().clone()  # the call updates it in place
        ple = per_layer_input.contiguous()
        cos, sin = (t.contiguous() for t in rope)
        native.library().gemma3n_layer_step(ctypes.byref(layer), out.data_ptr(), ple.data_ptr(), cos.data_ptr(),
                                            sin.data_ptr(), k.data_ptr(), v.data_ptr(), k.stride(1), slot,
                                            k.shape[2], bias.data_ptr())
        return out


def accelerate_(model: nn.Module) -> nn.Module:
    """Swap every `AltUp` of a Gemma 3n model for `AltUpRows` (the same parameters, in place) where
    its small maps are, or can be made, float `nn.Linear`s, and every `Block` for `FastBlock` (which
    falls back to the reference where its one C call does not fit)."""
    for mod in model.modules():
        if type(mod) is AltUp:
            small = [_as_float(getattr(mod, name)) for name in _SMALL]
            if all(m is not None for m in small):
                for name, m in zip(_SMALL, small):
                    setattr(mod, name, m)
                mod.__class__ = AltUpRows
        if type(mod) is Block:
            mod.__class__ = FastBlock
    return model
