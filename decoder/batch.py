"""Decode steps of several sequences in one pass (continuous batching, as vLLM and llama-server's
`--parallel` run them): each sequence keeps its own caches and position, the new tokens go through
the layers as the rows of one batch. Decoding is memory-bound, so the MLPs and the LM head (for
Gemma 3 270M nine tenths of the weights a token reads) cost about one sequence's pass for all of
them; attention runs per sequence over its own cache.

A `Slot` is how a generation (`generate.generate_step`) offers its next forward to a scheduler:
the scheduler runs the slots of every waiting sequence through `decode_batch` and hands each its
logits; a slot nobody ran is run by its own generation alone.
"""
import torch

from .config import SLIDING


class Slot:
    """The next forward one sequence waits for: its token, position and caches; `logits` once run."""

    def __init__(self):
        self.token: int | None = None
        self.pos, self.caches, self.logits = 0, None, None

    def offer(self, token: int, pos: int, caches: list) -> None:
        self.token, self.pos, self.caches, self.logits = token, pos, caches, None

    def withdraw(self) -> None:
        """The sequence ends: its last token is not fed."""
        self.token = None

    def take(self) -> torch.Tensor | None:
        """The logits a scheduler computed for the offered token, or None if none did."""
        logits, self.logits, self.token = self.logits, None, None
        return logits


def can_batch(model) -> bool:
    """Gemma 3 text decoders with their own layers (not Gemma 3n, not layers streamed from disk)."""
    from .gemma3 import Block, Gemma3Text

    return type(model) is Gemma3Text and all(type(layer) is Block for layer in model.layers)


@torch.inference_mode()
def decode_batch(model, slots: list[Slot]) -> None:
    """Run the offered token of every slot through `model` together; each slot gets its logits (V,).
    Mirrors `Block.forward` with the attention of each row over its own caches."""
    positions = [torch.tensor([s.pos]) for s in slots]
    x = model.embed_tokens(torch.tensor([[s.token] for s in slots]))  # (B, 1, hidden)
    ropes = [{SLIDING: model.rope_local(p, x.dtype), "full_attention": model.rope_global(p, x.dtype)}
             for p in positions]
    masks = [{} for _ in slots]
    for i, layer in enumerate(model.layers):
        h = layer.attn_norm(x)
        attended = [layer.attn(h[b:b + 1], ropes[b][layer.layer_type], s.caches[i], positions[b], None, masks[b])
                    for b, s in enumerate(slots)]
        x = layer.post_attn_norm.add_to(x, torch.cat(attended))
        x = layer.post_mlp_norm.add_to(x, layer.mlp(layer.mlp_norm(x)))
    logits = model.logits(model.norm(x))[:, -1]
    for s, row in zip(slots, logits):
        s.logits = row
