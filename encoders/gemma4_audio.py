"""Gemma 4's audio encoder (Google, "Gemma 4", 2026), following transformers' `modeling_gemma4.py`
(`Gemma4AudioModel` + `Gemma4MultimodalEmbedder`) and `feature_extraction_gemma4.py`.

A USM-style conformer, as Gemma 3n's (`audio_gemma3n.py`), reworked:
- Features: 128 log-mel bins every 10 ms over 20 ms frames (no pre-emphasis, no doubled FFT), the
  first frame centred on t = 0; a frame counts only if its whole window is real audio.
- Two 3x3 stride-2 convolutions (LayerNorm, ReLU) bring 100 frames/s to 25 and project to the width.
- Each conformer layer: half-step feed-forward, chunked local self-attention (chunks of 12 frames
  seeing 11 frames back, relative position logits, soft-capped at 50), a light causal depthwise
  convolution, a second half-step feed-forward, a final norm. Linear layers may clip their inputs
  and outputs to ranges the checkpoint stores.
- An output projection, then RMS-norm and projection to the decoder's width: 25 soft tokens a second.
Checkpoint names are transformers' (`model.audio_tower.*`, `model.embed_audio.*`).
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..decoder.errors import ModelLoadError
from .audio_features import frame, mel_filterbank
from .gemma3n_embedder import RMSNorm
from .gemma4_vision import ClippableLinear
from .hf_config import empty_module, hf_fields

SAMPLE_RATE = 16_000


@dataclass
class Gemma4AudioConfig:
    hidden_size: int = 1024
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    subsampling_conv_channels: tuple[int, int] = (128, 32)
    conv_kernel_size: int = 5
    residual_weight: float = 0.5
    attention_chunk_size: int = 12
    attention_context_left: int = 13
    attention_context_right: int = 0
    attention_logit_cap: float = 50.0
    attention_invalid_logits_value: float = -1.0e9
    use_clipped_linears: bool = True
    rms_norm_eps: float = 1e-6
    gradient_clipping: float = 1e10
    output_proj_dims: int = 1536
    text_hidden_size: int = 1536

    @classmethod
    def from_hf(cls, d: dict, text_hidden_size: int) -> "Gemma4AudioConfig":
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"audio hidden_act {d['hidden_act']!r} is not supported (expected 'silu')")
        kw = hf_fields(cls, d, frozenset({"hidden_act", "initializer_range"}))
        kw["subsampling_conv_channels"] = tuple(kw.get("subsampling_conv_channels", cls.subsampling_conv_channels))
        return cls(**kw, text_hidden_size=text_hidden_size)


# ---- features ---------------------------------------------------------------------------------

def log_mel(samples: np.ndarray, *, frame_ms: float = 20.0, hop_ms: float = 10.0, n_mels: int = 128,
            f_max: float = 8000.0, mel_floor: float = 1e-3, pad_to_multiple_of: int = 128):
    """16 kHz mono samples -> (features (T, n_mels) float32, zero on invalid frames; valid (T,) bool)."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    n = len(samples)
    padded = -(-n // pad_to_multiple_of) * pad_to_multiple_of
    length, hop = int(round(SAMPLE_RATE * frame_ms / 1000)), int(round(SAMPLE_RATE * hop_ms / 1000))
    fft = 2 ** math.ceil(math.log2(length))
    left = length // 2  # "semicausal": the first frame centred on the first sample
    wave = np.zeros(left + padded, dtype=np.float32)
    wave[left:left + n] = samples
    real = np.zeros(left + padded, dtype=bool)
    real[left:left + n] = True
    frames = frame(wave, length + 1, hop)[:, :-1]  # one spare sample per frame, as the reference unfolds
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)).astype(np.float32)  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, n=fft, axis=-1))
    mel = np.log(magnitude @ mel_filterbank(fft // 2 + 1, 0.0, f_max, n_mels, SAMPLE_RATE, fft) + mel_floor)
    valid = real[np.arange(len(frames)) * hop + length]  # the frame's last sample (of length + 1) is real
    return (mel.astype(np.float32) * valid[:, None]).astype(np.float32), valid


# ---- the encoder ------------------------------------------------------------------------------

class SubsampleLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(c_out, eps=eps, bias=False)

    def forward(self, x, valid):  # (B, C, T, F), (B, T)
        x = self.conv((x * valid[:, None, :, None]).to(self.conv.weight.dtype))
        return F.relu(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2), valid[:, ::2]


class Subsampler(nn.Module):
    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        c0, c1 = cfg.subsampling_conv_channels
        self.layer0 = SubsampleLayer(1, c0, cfg.rms_norm_eps)
        self.layer1 = SubsampleLayer(c0, c1, cfg.rms_norm_eps)
        # (128 mel bins / 4) x c1 inputs, written as the reference does: with c0 = 128
        self.input_proj_linear = nn.Linear((c0 // 4) * c1, cfg.hidden_size, bias=False)

    def forward(self, mel, valid):  # (B, T, n_mels) -> (B, T/4, hidden)
        x, valid = self.layer1(*self.layer0(mel[:, None], valid))
        B, _, T, _ = x.shape
        return self.input_proj_linear(x.permute(0, 2, 3, 1).reshape(B, T, -1)), valid


def _clip(x, limit: float):
    limit = min(limit, torch.finfo(x.dtype).max)
    return torch.clamp(x, -limit, limit)


class FeedForward(nn.Module):
    """A half-step (residual_weight) SiLU feed-forward, four times as wide."""

    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        self.ffw_layer_1 = ClippableLinear(cfg, cfg.hidden_size, 4 * cfg.hidden_size)
        self.ffw_layer_2 = ClippableLinear(cfg, 4 * cfg.hidden_size, cfg.hidden_size)
        self.pre_layer_norm, self.post_layer_norm = RMSNorm(cfg.hidden_size), RMSNorm(cfg.hidden_size)
        self.limit, self.weight = cfg.gradient_clipping, cfg.residual_weight

    def forward(self, x):
        y = self.ffw_layer_2(F.silu(self.ffw_layer_1(self.pre_layer_norm(_clip(x, self.limit)))))
        return x + self.post_layer_norm(_clip(y, self.limit)) * self.weight


class ChunkedAttention(nn.Module):
    """Self-attention in chunks of C frames, each seeing its own chunk and `context_left - 1` frames
    back (Transformer-XL relative position logits), with logits soft-capped."""

    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        H, self.n_heads = cfg.hidden_size, cfg.num_attention_heads
        self.head_dim = H // self.n_heads
        self.chunk, self.past = cfg.attention_chunk_size, cfg.attention_context_left - 1
        self.future = cfg.attention_context_right
        self.context = self.chunk + self.past + self.future
        self.cap, self.invalid = cfg.attention_logit_cap, cfg.attention_invalid_logits_value
        self.q_proj, self.k_proj, self.v_proj = (ClippableLinear(cfg, H, H) for _ in range(3))
        self.post = ClippableLinear(cfg, H, H)
        self.relative_k_proj = nn.Linear(H, H, bias=False)
        self.per_dim_scale = nn.Parameter(torch.empty(self.head_dim))

    def relative_positions(self, dtype) -> torch.Tensor:
        """Distances context/2 .. 0 as [sin, cos] timing signals (context/2 + 1, H)."""
        H = self.n_heads * self.head_dim
        inv = torch.exp(torch.arange(H // 2) * -(math.log(1e4) / max(H // 2 - 1, 1)))
        t = torch.arange(self.context // 2, -1, -1)[:, None] * inv[None]
        return torch.cat([t.sin(), t.cos()], -1).to(dtype)

    def forward(self, x, valid):  # (B, T, H), (B, T)
        B, T, _ = x.shape
        shape = (B, T, self.n_heads, self.head_dim)
        q = self.q_proj(x).float().view(shape) * (self.head_dim ** -0.5 / math.log(2)) * F.softplus(self.per_dim_scale)
        k = self.k_proj(x).float().view(shape) * (math.log(1 + math.e) / math.log(2))
        v = self.v_proj(x).float().view(shape)
        n_blocks = -(-T // self.chunk)
        q = F.pad(q, (0, 0, 0, 0, 0, n_blocks * self.chunk - T)).view(B, n_blocks, self.chunk, *shape[2:])
        k, v = self._contexts(k), self._contexts(v)  # (B, blocks, context, heads, D)
        qh = q.permute(0, 3, 1, 2, 4)  # (B, heads, blocks, chunk, D)
        content = qh @ k.permute(0, 3, 1, 4, 2)  # (B, heads, blocks, chunk, context)
        rel = self.relative_k_proj(self.relative_positions(x.dtype)).view(-1, self.n_heads, self.head_dim).float()
        position = (qh.reshape(B, self.n_heads, -1, self.head_dim) @ rel.permute(1, 2, 0))
        logits = content + self._rel_shift(position.view(B, self.n_heads, n_blocks, self.chunk, -1))
        logits = torch.tanh(logits / self.cap) * self.cap
        logits = logits.masked_fill(~self._allowed(valid, n_blocks), self.invalid)
        y = logits.softmax(-1) @ v.permute(0, 3, 1, 2, 4)
        y = y.permute(0, 2, 3, 1, 4).reshape(B, n_blocks * self.chunk, -1)[:, :T]
        return self.post(y.to(x.dtype))

    def _contexts(self, x):
        """(B, T, heads, D) -> (B, blocks, context, heads, D): each chunk's frames with those before it."""
        x = F.pad(x, (0, 0, 0, 0, self.past, self.future + self.chunk - 1))
        return x.unfold(1, self.context, self.chunk).movedim(-1, 2)

    def _rel_shift(self, x):
        """(..., chunk, positions) logits by relative distance -> (..., chunk, context) by key slot."""
        *lead, C, P = x.shape
        x = F.pad(x, (0, self.context + 1 - P)).reshape(*lead, C * (self.context + 1))
        return x[..., :C * self.context].reshape(*lead, C, self.context)

    def _allowed(self, valid, n_blocks):
        """(B, 1, blocks, chunk, context): the key is a real frame, less than `past` frames back (the
        context's oldest frame is never seen, as in the reference) and less than `future` ahead."""
        T = valid.shape[1]
        t = torch.arange(n_blocks * self.chunk).view(n_blocks, self.chunk, 1)
        starts = (torch.arange(n_blocks) * self.chunk).view(n_blocks, 1, 1)
        s = starts + torch.arange(self.context).view(1, 1, -1) - self.past  # each context slot's frame
        near = ((t >= s) & (t - s < self.past)) | ((t < s) & (s - t < self.future))
        real = F.pad(valid, (0, n_blocks * self.chunk + self.context - T), value=False)
        key_real = real[:, (s.clamp(min=0)).expand(n_blocks, self.chunk, -1)] & (s >= 0)
        return (near & key_real)[:, None]


class LightConv(nn.Module):
    """GLU, a causal depthwise convolution, norm, SiLU, projection; residual."""

    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        H = cfg.hidden_size
        self.linear_start = ClippableLinear(cfg, H, 2 * H)
        self.linear_end = ClippableLinear(cfg, H, H)
        self.depthwise_conv1d = nn.Conv1d(H, H, cfg.conv_kernel_size, groups=H, bias=False)
        self.pre_layer_norm, self.conv_norm = RMSNorm(H, cfg.rms_norm_eps), RMSNorm(H, cfg.rms_norm_eps)
        self.limit, self.pad = cfg.gradient_clipping, cfg.conv_kernel_size - 1

    def forward(self, x):
        y = F.glu(self.linear_start(self.pre_layer_norm(x)), dim=-1)
        y = self.depthwise_conv1d(F.pad(y.transpose(1, 2), (self.pad, 0))).transpose(1, 2)
        return x + self.linear_end(F.silu(self.conv_norm(_clip(y, self.limit))))


class ConformerLayer(nn.Module):
    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        H = cfg.hidden_size
        self.feed_forward1, self.feed_forward2 = FeedForward(cfg), FeedForward(cfg)
        self.self_attn = ChunkedAttention(cfg)
        self.lconv1d = LightConv(cfg)
        self.norm_pre_attn, self.norm_post_attn, self.norm_out = RMSNorm(H), RMSNorm(H), RMSNorm(H)
        self.limit = cfg.gradient_clipping

    def forward(self, x, valid):
        x = self.feed_forward1(x)
        y = self.self_attn(self.norm_pre_attn(_clip(x, self.limit)), valid)
        x = self.lconv1d(x + self.norm_post_attn(_clip(y, self.limit)))
        return self.norm_out(_clip(self.feed_forward2(x), self.limit))


class Gemma4AudioTower(nn.Module):
    """Log-mel features (B, T, 128) and their validity (B, T) -> (soft tokens (B, T/4, text width), valid (B, T/4))."""

    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        self.config = cfg
        self.subsample_conv_projection = Subsampler(cfg)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.output_proj = nn.Linear(cfg.hidden_size, cfg.output_proj_dims, bias=True)
        self.embed_norm = RMSNorm(cfg.output_proj_dims, cfg.rms_norm_eps, with_scale=False)
        self.embed_proj = nn.Linear(cfg.output_proj_dims, cfg.text_hidden_size, bias=False)

    def forward(self, mel: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, valid = self.subsample_conv_projection(mel, valid)
        for layer in self.layers:
            x = layer(x, valid)
        return self.embed_proj(self.embed_norm(self.output_proj(x))), valid


def load_gemma4_audio(tensors: dict, hf: dict, path, dtype: torch.dtype = torch.float32) -> Gemma4AudioTower:
    """The tower from a Gemma 4 checkpoint's `model.audio_tower.*` and `model.embed_audio.*` tensors."""
    try:
        cfg = Gemma4AudioConfig.from_hf(hf.get("audio_config") or {}, (hf.get("text_config") or {})["hidden_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(path, f"audio config: {e}") from e
    state = {k.removeprefix("model.audio_tower."): v for k, v in tensors.items() if k.startswith("model.audio_tower.")}
    if "model.embed_audio.embedding_projection.weight" not in tensors:
        raise ModelLoadError(path, "missing tensor 'model.embed_audio.embedding_projection.weight'")
    state["embed_proj.weight"] = tensors["model.embed_audio.embedding_projection.weight"]
    tower = empty_module(Gemma4AudioTower, cfg)
    want = tower.state_dict()
    for name in sorted(set(state) | set(want)):
        if name not in want or name not in state:
            kind = "unexpected" if name not in want else "missing"
            raise ModelLoadError(path, f"{kind} tensor 'model.audio_tower.{name}'")
        if tuple(state[name].shape) != tuple(want[name].shape):
            raise ModelLoadError(path, f"tensor {name!r} has shape {tuple(state[name].shape)}, the config implies "
                                       f"{tuple(want[name].shape)}")
    tower.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return tower.eval().requires_grad_(False)
