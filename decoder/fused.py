"""A Gemma 3 layer in calls of our C kernels (`int8_vnni.c`, `kernels_avx2.c`): a decoded token in one call
(`gemma3_layer_step`), a prompt's rows in two around the KV cache's update (`gemma3_prompt_qkv`,
`gemma3_prompt_rest`). The same computation as `gemma3.Block`, where every projection is a product
of ours (int8, or 4-bit read in torch's own layout). In Python a decoded token is ~55 small torch
ops a layer, each ~2-4 us of dispatch around very little arithmetic, and a prompt ~15 calls; the
C calls do them back to back.

`Block.forward` takes this path where `plan` gives a description of the block (one sequence,
float32, int8 or 4-bit projections); the Python layers stay the reference (tests/test_native_kernels.py
compares the two).
"""
import ctypes
import functools
import math

import torch

from . import native
from .kv_cache import FullCache, RingCache
from .layers import attention_bias, step_mask
from .quantize import Int4Linear, Int8Linear

_ptr, _long = ctypes.c_void_p, ctypes.c_long


class CLinear(ctypes.Structure):  # mirrors `Linear` in int8_vnni.c and kernels_avx2.c
    _fields_ = [("weight", _ptr), ("scales", _ptr), ("comp", _ptr), ("group_scales", _ptr), ("super_scales", _ptr),
                ("rotation", _long), ("inputs", _long), ("outputs", _long), ("group", _long), ("layout", _long)]


class _Layer(ctypes.Structure):  # mirrors `Layer` in int8_vnni.c and kernels_avx2.c
    _fields_ = [("hidden", _long), ("heads", _long), ("kv_heads", _long), ("head_dim", _long), ("inter", _long),
                ("eps", ctypes.c_float), ("head_eps", ctypes.c_float),
                ("attn_norm", _ptr), ("qk_norm", _ptr), ("post_attn_norm", _ptr), ("mlp_norm", _ptr),
                ("post_mlp_norm", _ptr), ("qkv", CLinear), ("o", CLinear), ("gate_up", CLinear), ("down", CLinear)]


@functools.cache
def check_mirrors() -> None:
    """The C structs and their ctypes mirrors above must agree byte for byte, or every call would read
    its pointers from the wrong places: a mismatch is a bug here, raised before the first call."""
    lib = native.library()
    for mirror, size in ((CLinear, lib.sizeof_linear()), (_Layer, lib.sizeof_layer())):
        if ctypes.sizeof(mirror) != size:
            raise RuntimeError(f"{mirror.__name__} is {ctypes.sizeof(mirror)} bytes here and {size} in the "
                               f"{lib.kernel.name} kernels: decoder/fused.py's mirror is out of date")


def kernel_weights(m) -> tuple | None:
    """What the call reads of projection `m`: our int8 blocks, or an `Int4Linear`'s own buffers."""
    if isinstance(m, Int4Linear):
        if not native.available("int4_linear"):
            return None
        return (m.weight, m.group_scales) + ((m.super_scales,) if m.layout == "kquant" else ())
    if isinstance(m, Int8Linear) and m.int8_inputs:
        return (m.packed(),)
    return None


def c_linear(m, weights: tuple) -> CLinear:
    """The C description of projection `m` over `kernel_weights(m)`."""
    if isinstance(m, Int4Linear):
        return CLinear(weights[0].data_ptr(), None, None, weights[1].data_ptr(),
                       weights[2].data_ptr() if len(weights) > 2 else None, 0, m.in_features, m.out_features,
                       m.group_size, native.LAYOUTS[m.layout])
    blocks = weights[0]
    return CLinear(blocks.blocks.data_ptr(), blocks.scales.data_ptr(), blocks.comp.data_ptr(), None, None,
                   m.rotation or 0, m.in_features, m.out_features, 0, 0)


_assignments = 0  # submodules, parameters and buffers assigned so far, on any module (see `plan`)


def _assigned(*_) -> None:
    global _assignments
    _assignments += 1


for _register in (torch.nn.modules.module.register_module_module_registration_hook,
                  torch.nn.modules.module.register_module_parameter_registration_hook,
                  torch.nn.modules.module.register_module_buffer_registration_hook):
    _register(_assigned)


def plan(block, x: torch.Tensor, cache) -> _Layer | None:
    """The C description of `block` for running the rows `x` of one sequence into `cache`, made again
    when a weight or a norm gain changes; None where the calls do not fit (a batch, not float32,
    widths not whole registers, a projection neither int8 with 8-bit inputs nor 4-bit, our kernels
    unavailable)."""
    if (x.shape[0] != 1 or x.dtype != torch.float32 or not isinstance(cache, (RingCache, FullCache))
            or cache.k.dtype != torch.float32 or cache.k.shape[0] != 1 or x.shape[-1] % 16
            or not native.available("gemma3_layer_step", "gemma3_layer_rows", "gemma3_prompt_qkv", "gemma3_prompt_rest")):
        return None
    # Asked for every layer of every decoded token: the description is kept while no module anywhere had a
    # submodule, parameter or buffer assigned (a quantizing swap, a loaded weight: torch's registration
    # hooks count them), the norms' weights keep their storage and values, and no int8 weight was packed
    # anew. Reading them through nn.Module's attribute lookup took ~75 us a layer, 1.3 ms a 4-stream step.
    cached = block.__dict__.get("_fused")
    if cached is not None and cached[0] == _fingerprint(*cached[2]):
        return cached[1]
    attn, mlp = block.attn, block.mlp
    linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
    if mlp.down_proj.in_features % 16 or attn.head_dim % 32:  # whole registers; a prompt's attention reads values 32 at a time
        return None
    weights = [kernel_weights(m) for m in linears]
    if any(w is None for w in weights):
        return None
    check_mirrors()
    if not all(isinstance(w[0], native.Int8Blocks) or isinstance(m, Int4Linear) for m, w in zip(linears, weights)):
        return None
    norms = (block.attn_norm, attn.q_norm, attn.k_norm, block.post_attn_norm, block.mlp_norm, block.post_mlp_norm)
    gains = [n.gain() for n in (block.attn_norm, block.post_attn_norm, block.mlp_norm, block.post_mlp_norm)]
    gains.append(attn.qk_norm_gain().contiguous())
    E, D = gains[0].shape[0], attn.head_dim
    layer = _Layer(E, attn.n_heads, attn.n_kv, D, mlp.down_proj.in_features,
                   math.sqrt(E * block.attn_norm.eps), math.sqrt(D * attn.q_norm.eps),
                   gains[0].data_ptr(), gains[4].data_ptr(), gains[1].data_ptr(), gains[2].data_ptr(),
                   gains[3].data_ptr(), *map(c_linear, linears, weights))
    layer.keep = (gains, weights)  # what the pointers point into
    watched = (tuple(n.weight for n in norms), linears)
    block._fused = (_fingerprint(*watched), layer, watched)
    return layer


def _fingerprint(norm_weights: tuple, linears: tuple) -> tuple:
    """What `plan`'s kept description depends on, read without nn.Module's attribute lookup: the count
    of assignments, each norm weight's storage and version, each int8 projection's packing (`_Packed`)."""
    return (_assignments, tuple((w.data_ptr(), w._version) for w in norm_weights),
            tuple(id(m.__dict__.get("_packed")) for m in linears))


def _reserve(cache, position: int) -> tuple[int, int]:
    """`cache.reserve`, attention reading only the slots that can hold keys: a ring not yet wrapped holds
    positions 0.. in its first `offset` slots and nothing (masked) after them, all of which attention
    walked (a sliding layer at position 100 read Gemma 3's 512). Rounded up to whole vectors of 8 scores,
    so one thread's sums are those over the whole ring (the masked scores add exact zeros)."""
    slot, keys = cache.reserve(position)
    if isinstance(cache, RingCache):
        keys = min(keys, -(-cache.offset // 8) * 8)
    return slot, keys


def step(layer: _Layer, x: torch.Tensor, rope, cache, positions: torch.Tensor, masks: dict | None,
         window: int | None) -> torch.Tensor:
    """The block's output for one decoded token, in one call (see the module notes)."""
    slot, keys = _reserve(cache, int(positions[0]))
    bias = step_mask(masks, positions, cache.key_positions(), window)
    out = x.contiguous().clone()  # the call updates it in place
    cos, sin = (t.contiguous() for t in rope)
    native.library().gemma3_layer_step(ctypes.byref(layer), out.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                                       cache.k.data_ptr(), cache.v.data_ptr(), cache.k.shape[2] * cache.k.shape[3],
                                       slot, keys, bias.data_ptr())
    return out


ROWS = 16  # at most this many rows of a sequence with keys already cached go through `rows`


def rows(layer: _Layer, x: torch.Tensor, rope, caches, positions: torch.Tensor, masks: dict | None,
         window: int | None) -> torch.Tensor:
    """The block's output for a few decoded rows x (1, M, hidden), each row exactly as `step` computes
    it, the weights read once for all (see `gemma3_layer_rows`): a speculative check's rows of one
    sequence (`caches` one cache), or one token of each of M sequences (`caches` a list, one a row).
    Row r attends its cache as it is once rows <= r are written."""
    M = x.shape[1]
    caches = caches if isinstance(caches, list) else [caches] * M
    key = ("rows", window)  # every layer of a kind holds the same positions: one mask a forward
    bias = masks.get(key) if masks is not None else None
    reserved, seen = [], []
    for cache, p in zip(caches, positions.tolist()):
        reserved.append(_reserve(cache, p))
        if bias is None:
            seen.append(cache.key_positions().clone())  # the keys as row r finds them
    if bias is None:
        bias = _rows_bias(seen, positions, window)
        if masks is not None:
            masks[key] = bias
    slots, keys = (torch.tensor(v, dtype=torch.long) for v in zip(*reserved))
    planes = torch.tensor([c.k.shape[2] * c.k.shape[3] for c in caches], dtype=torch.long)
    k_ptrs = (ctypes.c_void_p * M)(*[c.k.data_ptr() for c in caches])  # after `reserve`, which may grow them
    v_ptrs = (ctypes.c_void_p * M)(*[c.v.data_ptr() for c in caches])
    out = x.contiguous().clone()  # the call updates it in place
    cos, sin = (t.contiguous() for t in rope)
    native.library().gemma3_layer_rows(ctypes.byref(layer), out.data_ptr(), M, cos.data_ptr(), sin.data_ptr(),
                                       k_ptrs, v_ptrs, planes.data_ptr(), slots.data_ptr(), keys.data_ptr(),
                                       bias.data_ptr(), bias.shape[1])
    return out


def _rows_bias(seen: list[torch.Tensor], positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """The additive mask (rows, keys) of rows at `positions` over the key positions row r finds (`seen[r]`,
    -1 an empty slot), as layers.attention_mask makes it."""
    width = max(k.shape[0] for k in seen)
    k_pos = torch.stack([torch.nn.functional.pad(k, (0, width - k.shape[0]), value=-1) for k in seen])
    q_pos = positions.to(torch.long)[:, None]
    allowed = (k_pos <= q_pos) & (k_pos >= 0)
    if window is not None:
        allowed &= (q_pos - k_pos) < window
    return attention_bias(allowed)


def stack_rows(layers: list[_Layer], x: torch.Tensor, ropes: list, windows: list, caches: list[list],
               positions: torch.Tensor) -> torch.Tensor:
    """The output of every layer for one decoded token of each of M sequences (x (1, M, hidden);
    `caches[r]` sequence r's caches, one a layer), each layer exactly as `rows` runs it, in one C call
    (`gemma3_stack_rows`): a batch of streams pays the argument building of `rows` once a step, not once
    a layer. `ropes[i]` and `windows[i]`: layer i's RoPE tables and sliding window."""
    M, L = x.shape[1], len(layers)
    pos = positions.tolist()
    slots, keys, k_ptrs, v_ptrs, planes, biases, tables = [], [], [], [], [], {}, {}
    for i in range(L):
        here = [c[i] for c in caches]
        for cache, p in zip(here, pos):
            slot, n = _reserve(cache, p)
            slots.append(slot)
            keys.append(n)
        if windows[i] not in biases:  # every layer of a kind holds the same positions: one mask a kind
            biases[windows[i]] = _rows_bias([c.key_positions() for c in here], positions, windows[i])
        if id(ropes[i]) not in tables:
            tables[id(ropes[i])] = tuple(t.contiguous() for t in ropes[i])
        k_ptrs += [c.k.data_ptr() for c in here]  # after `reserve`, which may grow them
        v_ptrs += [c.v.data_ptr() for c in here]
        planes += [c.k.shape[2] * c.k.shape[3] for c in here]
    cos = [tables[id(r)][0].data_ptr() for r in ropes]
    sin = [tables[id(r)][1].data_ptr() for r in ropes]
    bias = [biases[w] for w in windows]
    ptrs, longs = ctypes.c_void_p * L, _long * L
    out = x.contiguous().clone()  # the call updates it in place
    native.library().gemma3_stack_rows(
        ptrs(*[ctypes.addressof(layer) for layer in layers]), L, out.data_ptr(), M, ptrs(*cos), ptrs(*sin),
        (ctypes.c_void_p * (L * M))(*k_ptrs), (ctypes.c_void_p * (L * M))(*v_ptrs), (_long * (L * M))(*planes),
        (_long * (L * M))(*slots), (_long * (L * M))(*keys), ptrs(*[b.data_ptr() for b in bias]),
        longs(*[b.shape[1] for b in bias]))
    return out


def prompt(layer: _Layer, x: torch.Tensor, rope, cache, positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """The block's output for a prompt's rows x (1, T, hidden), in two calls around `cache.update`."""
    T, H, Hkv, D = x.shape[1], layer.heads, layer.kv_heads, layer.head_dim
    out = x.contiguous().clone()  # the calls update it in place
    cos, sin = (t.contiguous() for t in rope)
    q, k, v = (x.new_empty(1, n, T, D) for n in (H, Hkv, Hkv))
    lib = native.library()
    lib.gemma3_prompt_qkv(ctypes.byref(layer), out.data_ptr(), T, cos.data_ptr(), sin.data_ptr(), q.data_ptr(),
                          k.data_ptr(), v.data_ptr())
    k, v, k_pos = cache.update(k, v, positions)
    k, v = native.kv_rows(k, v)
    q_pos, k_pos = positions.to(torch.long).contiguous(), k_pos.to(torch.long).contiguous()
    lib.gemma3_prompt_rest(ctypes.byref(layer), out.data_ptr(), T, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                           k.shape[2], k.stride(1), q_pos.data_ptr(), k_pos.data_ptr(), window or 0)
    return out
