"""Tensor name maps from checkpoint layouts to our module names, and strict assignment."""
import torch
from torch import nn

from .errors import ModelLoadError

# Hugging Face Gemma3ForCausalLM names, relative to the text model's prefix.
HF_TO_NATIVE = {
    "embed_tokens.weight": "embed.weight",
    "norm.weight": "norm.weight",
    "layers.{}.input_layernorm.weight": "layers.{}.attn_norm.weight",
    "layers.{}.self_attn.q_proj.weight": "layers.{}.attn.q_proj.weight",
    "layers.{}.self_attn.k_proj.weight": "layers.{}.attn.k_proj.weight",
    "layers.{}.self_attn.v_proj.weight": "layers.{}.attn.v_proj.weight",
    "layers.{}.self_attn.o_proj.weight": "layers.{}.attn.o_proj.weight",
    "layers.{}.self_attn.q_norm.weight": "layers.{}.attn.q_norm.weight",
    "layers.{}.self_attn.k_norm.weight": "layers.{}.attn.k_norm.weight",
    "layers.{}.post_attention_layernorm.weight": "layers.{}.post_attn_norm.weight",
    "layers.{}.pre_feedforward_layernorm.weight": "layers.{}.mlp_norm.weight",
    "layers.{}.mlp.gate_proj.weight": "layers.{}.mlp.gate_proj.weight",
    "layers.{}.mlp.up_proj.weight": "layers.{}.mlp.up_proj.weight",
    "layers.{}.mlp.down_proj.weight": "layers.{}.mlp.down_proj.weight",
    "layers.{}.post_feedforward_layernorm.weight": "layers.{}.post_mlp_norm.weight",
}

# llama.cpp's names for the same tensors in a GGUF file.
GGUF_TO_NATIVE = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "norm.weight",
    "blk.{}.attn_norm.weight": "layers.{}.attn_norm.weight",
    "blk.{}.attn_q.weight": "layers.{}.attn.q_proj.weight",
    "blk.{}.attn_k.weight": "layers.{}.attn.k_proj.weight",
    "blk.{}.attn_v.weight": "layers.{}.attn.v_proj.weight",
    "blk.{}.attn_output.weight": "layers.{}.attn.o_proj.weight",
    "blk.{}.attn_q_norm.weight": "layers.{}.attn.q_norm.weight",
    "blk.{}.attn_k_norm.weight": "layers.{}.attn.k_norm.weight",
    "blk.{}.post_attention_norm.weight": "layers.{}.post_attn_norm.weight",
    "blk.{}.ffn_norm.weight": "layers.{}.mlp_norm.weight",
    "blk.{}.ffn_gate.weight": "layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "layers.{}.mlp.down_proj.weight",
    "blk.{}.post_ffw_norm.weight": "layers.{}.post_mlp_norm.weight",
}


# Our parameters that stack several checkpoint tensors (one matmul instead of several), in order.
FUSED = {
    "layers.{}.attn.qkv_proj.weight": ("layers.{}.attn.q_proj.weight", "layers.{}.attn.k_proj.weight",
                                       "layers.{}.attn.v_proj.weight"),
    "layers.{}.mlp.gate_up_proj.weight": ("layers.{}.mlp.gate_proj.weight", "layers.{}.mlp.up_proj.weight"),
}


def expand(key_map: dict, n_layers: int) -> dict:
    """Spell out the per-layer templates for every layer index (values: a name or a tuple of names)."""
    out = {}
    for src, dst in key_map.items():
        if "{}" in src:
            out.update({src.format(i): dst.format(i) if isinstance(dst, str) else tuple(d.format(i) for d in dst)
                        for i in range(n_layers)})
        else:
            out[src] = dst
    return out


def assign_strict(model: nn.Module, tensors: dict[str, torch.Tensor], key_map: dict[str, str],
                  path, dtype: torch.dtype, fused: dict[str, tuple[str, ...]] | None = None) -> None:
    """Copy checkpoint tensors into `model` by `key_map`. A missing or unexpected tensor, or a shape
    that differs from the config's, is a `ModelLoadError` naming it. `fused` maps a parameter to the
    `key_map` targets stacked (along dim 0) into it."""
    params = dict(model.named_parameters())
    check_names(tensors, key_map, path)
    part_of = {part: (dst, i) for dst, parts in (fused or {}).items() for i, part in enumerate(parts)}
    stacks: dict[str, list] = {dst: [None] * len(parts) for dst, parts in (fused or {}).items()}
    for src, dst in key_map.items():
        if dst in part_of:
            stacks[part_of[dst][0]][part_of[dst][1]] = tensors[src]
            continue
        t, p = tensors[src], params[dst]
        if tuple(t.shape) != tuple(p.shape):
            raise ModelLoadError(path, f"tensor {src!r} has shape {tuple(t.shape)}, the config implies {tuple(p.shape)}")
        p.data = t.to(dtype)
    for dst, parts in stacks.items():
        t, p = torch.cat(parts, 0), params[dst]
        if tuple(t.shape) != tuple(p.shape):
            src = ", ".join(s for s, d in key_map.items() if d in fused[dst])
            raise ModelLoadError(path, f"tensors {src} stack to {tuple(t.shape)}, the config implies {tuple(p.shape)}")
        p.data = t.to(dtype)


def check_names(names, key_map: dict[str, str], path) -> None:
    """A `ModelLoadError` naming the first tensor of `names` that `key_map` lacks, or the reverse."""
    unexpected = sorted(k for k in names if k not in key_map)
    if unexpected:
        raise ModelLoadError(path, f"unexpected tensor {unexpected[0]!r}" +
                             (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    missing = sorted(src for src in key_map if src not in names)
    if missing:
        raise ModelLoadError(path, f"missing tensor {missing[0]!r}" +
                             (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def check_shape(path, src: str, shape, expected) -> None:
    if tuple(shape) != tuple(expected):
        raise ModelLoadError(path, f"tensor {src} has shape {tuple(shape)}, the config implies {tuple(expected)}")
