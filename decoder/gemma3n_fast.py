"""Gemma 3n's decode-time module swaps: `gemma3n.py` stays the readable reference.

AltUp's products are 4 wide: a (1, 2048) x (2048, 4) router, 4 x 4 and 16 x 4 coefficient maps,
and the (2048, 4) x (4, 4) stream mix. As BLAS calls they cost more than their arithmetic: torch
hands them to its 2-thread BLAS, whose threads wait on each other when the cores are busy (the
stream mix alone: 6-12 ms a call on a loaded 2-core AMD EPYC Zen 3, 0.4 ms as the broadcast
sums here, `tests/eval/bench_gemma3n.py --profile`). For a few rows (decoding, a speculative
check) `AltUpRows` computes them as broadcast multiply-and-sums, which torch runs on the calling
thread at these sizes; prompts keep the reference's matmuls.
"""
import torch
from torch import nn

from .gemma3n import AltUp
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


def accelerate_(model: nn.Module) -> nn.Module:
    """Swap every `AltUp` of a Gemma 3n model for `AltUpRows` (the same parameters, in place) where
    its small maps are, or can be made, float `nn.Linear`s."""
    for mod in model.modules():
        if type(mod) is AltUp:
            small = [_as_float(getattr(mod, name)) for name in _SMALL]
            if all(m is not None for m in small):
                for name, m in zip(_SMALL, small):
                    setattr(mod, name, m)
                mod.__class__ = AltUpRows
    return model
