"""Gemma 3n's audio tower (a Universal Speech Model conformer, arXiv:2303.01037) and the embedder that
projects its output into the decoder's width.

    log-mel (B, T, 128)
      → subsampling: two stride-2 Conv2d blocks with cumulative group norm → (B, T/4, D)   25 frames/s
      → conformer × L: ½·FFN → chunked local self-attention → light conv → ½·FFN → norm
      → keep every 4th frame                                                → (B, T/16, D)  6.25 tokens/s
      → embedder: RMSNorm → Linear(D, text width) → RMSNorm without scale   → audio soft tokens

Attention is local: the sequence is cut into chunks of `conf_attention_chunk_size` queries, each of
which sees itself and the `conf_attention_context_left - 1` frames before it (and
`conf_attention_context_right` after), with Transformer-XL style relative position logits.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..decoder.errors import ModelLoadError
from ..decoder.layers import softcap
from ..decoder.weights import assign_strict, expand
from .audio_features import FeatureConfig, num_frames
from .gemma3n_embedder import MultimodalEmbedder, RMSNorm  # Gemma 3n's shared norm and embedder
from .hf_config import empty_module, hf_fields


@dataclass
class AudioConfig:
    """Field names as in the `audio_config` block of Gemma 3n's config.json."""

    vocab_size: int = 128
    vocab_offset: int = 262_144 + 128
    input_feat_size: int = 128
    hidden_size: int = 1536
    rms_norm_eps: float = 1e-6
    gradient_clipping: float = 1e10
    conf_attention_chunk_size: int = 12
    conf_attention_context_left: int = 13
    conf_attention_context_right: int = 0
    conf_attention_logit_cap: float = 50.0
    conf_num_attention_heads: int = 8
    conf_num_hidden_layers: int = 12
    conf_conv_kernel_size: int = 5
    conf_reduction_factor: int = 4
    conf_residual_weight: float = 0.5
    sscp_conv_channel_size: tuple[int, int] = (128, 32)
    sscp_conv_group_norm_eps: float = 1e-3
    sscp_conv_kernel_size: tuple[tuple[int, int], tuple[int, int]] = ((3, 3), (3, 3))
    sscp_conv_stride_size: tuple[tuple[int, int], tuple[int, int]] = ((2, 2), (2, 2))

    @classmethod
    def from_hf(cls, d: dict) -> "AudioConfig":
        kwargs = hf_fields(cls, d)
        for key in ("sscp_conv_kernel_size", "sscp_conv_stride_size"):
            if key in kwargs:
                kwargs[key] = tuple(tuple(pair) for pair in kwargs[key])
        if "sscp_conv_channel_size" in kwargs:
            kwargs["sscp_conv_channel_size"] = tuple(kwargs["sscp_conv_channel_size"])
        return cls(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.conf_num_attention_heads

    @property
    def time_stride(self) -> int:
        """Feature frames per frame after subsampling (4)."""
        return math.prod(stride[0] for stride in self.sscp_conv_stride_size)


def num_audio_tokens(num_samples: int, config: AudioConfig = AudioConfig(),
                     features: FeatureConfig = FeatureConfig()) -> tuple[int, int]:
    """(tokens the encoder emits, how many of them carry real audio rather than padding) for a clip
    of `num_samples` 16 kHz samples: (188, 188) for 30 s, 6.25 per second."""
    frames, valid_frames = num_frames(num_samples, features)
    for stride_t, _ in config.sscp_conv_stride_size:
        frames = (frames - 1) // stride_t + 1 if frames else 0  # causal padding keeps ceil(T / stride)
    r = config.conf_reduction_factor
    tokens = -(-frames // r)
    # A token is real when the first feature frame it covers is: token j starts at frame j·16.
    return tokens, min(tokens, -(-valid_frames // (r * config.time_stride)))


# ---------------------------------------------------------------------------------------------------
# Building blocks


class CumulativeGroupNorm(nn.Module):
    """Group norm (one group) whose mean and variance at time t cover frames 0..t only, so the
    subsampler stays causal in time. Input (B, T, F, C); statistics over F and C."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        per_step = h.shape[2] * h.shape[3]
        count = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype).view(1, -1, 1, 1) * per_step
        mean = h.sum(dim=(2, 3), keepdim=True).cumsum(dim=1) / count
        var = (h - mean).pow(2).sum(dim=(2, 3), keepdim=True).cumsum(dim=1) / count
        return ((h - mean) * torch.rsqrt(var + self.eps) * self.weight.float()).to(x.dtype)


class SubsampleConvBlock(nn.Module):
    """Conv2d over (time, frequency) with causal time padding, then cumulative group norm and ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int], stride: tuple[int, int], eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, bias=False)
        self.norm = CumulativeGroupNorm(out_ch, eps)
        self.padding = (1, 1, 0, kernel[0] - 1)  # (freq left, freq right, time before, time after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T, F) → (B, C_out, T', F')
        x = self.conv(F.pad(x, self.padding).to(self.conv.weight.dtype))
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return F.relu(x)


class Subsampler(nn.Module):
    """Two conv blocks: 4× fewer frames in time and frequency, then flatten and project to the width."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        c0, c1 = cfg.sscp_conv_channel_size
        eps = cfg.sscp_conv_group_norm_eps
        self.block0 = SubsampleConvBlock(1, c0, cfg.sscp_conv_kernel_size[0], cfg.sscp_conv_stride_size[0], eps)
        self.block1 = SubsampleConvBlock(c0, c1, cfg.sscp_conv_kernel_size[1], cfg.sscp_conv_stride_size[1], eps)
        freq = cfg.input_feat_size
        for (_, k_f), (_, s_f) in zip(cfg.sscp_conv_kernel_size, cfg.sscp_conv_stride_size):
            freq = (freq + 2 - k_f) // s_f + 1
        self.proj = nn.Linear(c1 * freq, cfg.hidden_size, bias=False)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # (B, T, n_mels) → (B, T/4, D)
        x = self.block1(self.block0(mel.unsqueeze(1)))  # (B, C, T/4, F/4)
        b, c, t, f = x.shape
        return self.proj(x.permute(0, 2, 3, 1).reshape(b, t, f * c))  # features ordered (freq, channel)


class FeedForward(nn.Module):
    """Macaron half-step FFN: x + ½ · norm(W2 silu(W1 norm(x)))."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.clip = cfg.gradient_clipping
        self.pre_norm = RMSNorm(cfg.hidden_size)
        self.up = nn.Linear(cfg.hidden_size, 4 * cfg.hidden_size, bias=False)
        self.down = nn.Linear(4 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.post_norm = RMSNorm(cfg.hidden_size)
        self.residual_weight = cfg.conf_residual_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre_norm(x.clamp(-self.clip, self.clip))
        h = self.down(F.silu(self.up(h))).clamp(-self.clip, self.clip)
        return x + self.residual_weight * self.post_norm(h)


def timing_signal(positions: torch.Tensor, channels: int) -> torch.Tensor:
    """Transformer sinusoids [sin | cos] for (possibly negative) relative positions, (P, channels)."""
    n = channels // 2
    inv_timescales = torch.exp(torch.arange(n, dtype=torch.float32) * -(math.log(1.0e4) / max(n - 1, 1)))
    scaled = positions.float().unsqueeze(-1) * inv_timescales.to(positions.device)
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1)


class LocalAttention(nn.Module):
    """Chunked local self-attention with relative positions and a tanh logit cap."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        d, self.n_heads, self.head_dim = cfg.hidden_size, cfg.conf_num_attention_heads, cfg.head_dim
        self.chunk = cfg.conf_attention_chunk_size  # W queries per block
        self.left = max(0, cfg.conf_attention_context_left - 1)  # P past frames visible
        self.right = cfg.conf_attention_context_right  # R future frames visible
        self.context = self.chunk + self.left + self.right  # C keys per block
        self.cap = cfg.conf_attention_logit_cap
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.pos_proj = nn.Linear(d, d, bias=False)
        self.per_dim_scale = nn.Parameter(torch.zeros(self.head_dim))  # learned query scale, through softplus

    def window(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Query w of a block sees context key c iff 0 <= f = c - w <= P + R; f indexes the relative
        embedding, whose position (query-key distance) is P - f. Returns (f clamped, visible), (W, C)."""
        f = torch.arange(self.context, device=device)[None, :] - torch.arange(self.chunk, device=device)[:, None]
        return f.clamp(0, self.left + self.right), (f >= 0) & (f <= self.left + self.right)

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) → (B, U, W, ...): non-overlapping query blocks, zero-padded at the end."""
        u = -(-x.shape[1] // self.chunk)
        x = _pad_time(x, 0, u * self.chunk - x.shape[1])
        return x.reshape(x.shape[0], u, self.chunk, *x.shape[2:])

    def contexts(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) → (B, U, C, ...): for block u, frames u·W - P .. u·W + W + R - 1."""
        x = _pad_time(x, self.left, self.right + self.chunk - 1)
        x = x.unfold(1, self.context, self.chunk)  # (B, U, ..., C)
        return torch.movedim(x, -1, 2)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        shape = (b, t, self.n_heads, self.head_dim)
        scale = self.head_dim**-0.5 / F.softplus(torch.tensor(0.0))
        q = self.q_proj(x).reshape(shape) * scale * F.softplus(self.per_dim_scale)  # (B, T, N, H)
        k = self.k_proj(x).reshape(shape)
        v = self.v_proj(x).reshape(shape)

        q = self.blocks(q).permute(0, 3, 1, 2, 4)  # (B, N, U, W, H)
        k = self.contexts(k).permute(0, 3, 1, 4, 2)  # (B, N, U, H, C)
        v = self.contexts(v).permute(0, 1, 3, 2, 4)  # (B, U, N, C, H)
        u = q.shape[2]

        content = q @ k  # (B, N, U, W, C)
        rel_index, visible = self.window(x.device)
        distances = torch.arange(self.left, -self.right - 1, -1, device=x.device)  # P .. -R
        rel = self.pos_proj(timing_signal(distances, x.shape[-1]).to(x.dtype))  # (F, N·H)
        rel = rel.reshape(-1, self.n_heads, self.head_dim).permute(1, 2, 0)  # (N, H, F)
        position = (q.reshape(b, self.n_heads, u * self.chunk, self.head_dim) @ rel)  # (B, N, U·W, F)
        position = position.reshape(b, self.n_heads, u, self.chunk, -1)
        position = torch.gather(position, -1, rel_index.expand(b, self.n_heads, u, -1, -1))  # (B,N,U,W,C)
        logits = content + position

        logits = softcap(logits, self.cap)
        allowed = self.contexts(valid)[:, None, :, None, :] & visible  # (B, 1, U, W, C)
        logits = torch.where(allowed, logits, torch.finfo(logits.dtype).min)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(v.dtype)

        out = probs.transpose(1, 2) @ v  # (B, U, N, W, H)
        return out.transpose(2, 3).reshape(b, u * self.chunk, self.n_heads * self.head_dim)[:, :t]


def _pad_time(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Zero-pad (or False-pad) dimension 1."""
    pad = [0, 0] * (x.dim() - 2) + [before, after]
    return F.pad(x, pad)


class LightConv(nn.Module):
    """GLU → causal depthwise conv over time → norm → SiLU → linear, with a residual."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        d = cfg.hidden_size
        self.clip = cfg.gradient_clipping
        self.pre_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.linear_start = nn.Linear(d, 2 * d, bias=False)
        self.depthwise = nn.Conv1d(d, d, cfg.conf_conv_kernel_size, groups=d, bias=False)
        self.conv_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.linear_end = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.linear_start(self.pre_norm(x)), dim=-1)  # (B, T, D)
        h = F.pad(h.transpose(1, 2), (self.depthwise.kernel_size[0] - 1, 0))  # causal: pad the past only
        h = self.depthwise(h).transpose(1, 2).clamp(-self.clip, self.clip)
        return x + self.linear_end(F.silu(self.conv_norm(h)))


class ConformerBlock(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.clip = cfg.gradient_clipping
        self.ffn_start = FeedForward(cfg)
        self.attn_norm = RMSNorm(cfg.hidden_size)
        self.attn = LocalAttention(cfg)
        self.attn_out = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.attn_post_norm = RMSNorm(cfg.hidden_size)
        self.conv = LightConv(cfg)
        self.ffn_end = FeedForward(cfg)
        self.norm = RMSNorm(cfg.hidden_size)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # (B, T, D), (B, T) bool
        x = self.ffn_start(x)
        h = self.attn(self.attn_norm(x.clamp(-self.clip, self.clip)), valid)
        x = x + self.attn_post_norm(self.attn_out(h).clamp(-self.clip, self.clip))
        x = self.conv(x * valid.unsqueeze(-1).to(x.dtype))  # padding frames must not leak into the conv
        x = self.ffn_end(x)
        return self.norm(x.clamp(-self.clip, self.clip))


# ---------------------------------------------------------------------------------------------------
# The tower and the embedder


class AudioEncoder(nn.Module):
    """Log-mel frames → audio encodings at 6.25 per second, zero where the audio was padding."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.config = cfg
        self.subsample = Subsampler(cfg)
        self.layers = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.conf_num_hidden_layers))

    def forward(self, mel: torch.Tensor, mel_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, T, n_mels), mel_valid (B, T) bool → (encodings (B, T', D), valid (B, T') bool)."""
        x = self.subsample(mel)  # (B, T/4, D)
        # A subsampled frame is valid when the first feature frame of its receptive field is.
        starts = (torch.arange(x.shape[1], device=mel.device) * self.config.time_stride).clamp(max=mel.shape[1] - 1)
        valid = mel_valid[:, starts]
        for layer in self.layers:
            x = layer(x, valid)
        r = self.config.conf_reduction_factor
        x, valid = x[:, ::r], valid[:, ::r]  # (B, T/16, D)
        return x.masked_fill(~valid.unsqueeze(-1), 0.0), valid


class Gemma3nAudio(nn.Module):
    """The audio tower plus its embedder: log-mel → decoder-width soft tokens."""

    def __init__(self, cfg: AudioConfig, text_hidden_size: int):
        super().__init__()
        self.config = cfg
        self.encoder = AudioEncoder(cfg)
        self.embedder = MultimodalEmbedder(cfg, text_hidden_size)  # reads vocab_*, hidden_size, rms_norm_eps

    def forward(self, mel: torch.Tensor, mel_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encodings, valid = self.encoder(mel, mel_valid)
        return self.embedder(encodings), valid


# ---------------------------------------------------------------------------------------------------
# Checkpoint conversion: google/gemma-3n-* tensor names → ours. "{}" is the conformer layer index.

_TOWER = "model.audio_tower."
_LAYER = _TOWER + "conformer.{}."
HF_TO_NATIVE = {
    _TOWER + "subsample_conv_projection.conv_0.conv.weight": "encoder.subsample.block0.conv.weight",
    _TOWER + "subsample_conv_projection.conv_0.norm.weight": "encoder.subsample.block0.norm.weight",
    _TOWER + "subsample_conv_projection.conv_1.conv.weight": "encoder.subsample.block1.conv.weight",
    _TOWER + "subsample_conv_projection.conv_1.norm.weight": "encoder.subsample.block1.norm.weight",
    _TOWER + "subsample_conv_projection.input_proj_linear.weight": "encoder.subsample.proj.weight",
    **{
        _LAYER + f"{hf_ffn}.{hf}.weight": f"encoder.layers.{{}}.{ours_ffn}.{ours}.weight"
        for hf_ffn, ours_ffn in (("ffw_layer_start", "ffn_start"), ("ffw_layer_end", "ffn_end"))
        for hf, ours in (("pre_layer_norm", "pre_norm"), ("ffw_layer_1", "up"), ("ffw_layer_2", "down"),
                         ("post_layer_norm", "post_norm"))
    },
    _LAYER + "attention.pre_attn_norm.weight": "encoder.layers.{}.attn_norm.weight",
    _LAYER + "attention.attn.q_proj.weight": "encoder.layers.{}.attn.q_proj.weight",
    _LAYER + "attention.attn.k_proj.weight": "encoder.layers.{}.attn.k_proj.weight",
    _LAYER + "attention.attn.v_proj.weight": "encoder.layers.{}.attn.v_proj.weight",
    _LAYER + "attention.attn.per_dim_scale": "encoder.layers.{}.attn.per_dim_scale",
    _LAYER + "attention.attn.relative_position_embedding.pos_proj.weight": "encoder.layers.{}.attn.pos_proj.weight",
    _LAYER + "attention.post.weight": "encoder.layers.{}.attn_out.weight",
    _LAYER + "attention.post_norm.weight": "encoder.layers.{}.attn_post_norm.weight",
    _LAYER + "lconv1d.pre_layer_norm.weight": "encoder.layers.{}.conv.pre_norm.weight",
    _LAYER + "lconv1d.linear_start.weight": "encoder.layers.{}.conv.linear_start.weight",
    _LAYER + "lconv1d.depthwise_conv1d.weight": "encoder.layers.{}.conv.depthwise.weight",
    _LAYER + "lconv1d.conv_norm.weight": "encoder.layers.{}.conv.conv_norm.weight",
    _LAYER + "lconv1d.linear_end.weight": "encoder.layers.{}.conv.linear_end.weight",
    _LAYER + "norm.weight": "encoder.layers.{}.norm.weight",
    "model.embed_audio.embedding.weight": "embedder.embedding.weight",
    "model.embed_audio.hard_embedding_norm.weight": "embedder.hard_norm.weight",
    "model.embed_audio.soft_embedding_norm.weight": "embedder.soft_norm.weight",
    "model.embed_audio.embedding_projection.weight": "embedder.proj.weight",
}
AUDIO_PREFIXES = ("model.audio_tower.", "model.embed_audio.")


def load_hf_audio_state(model: Gemma3nAudio, tensors: dict[str, torch.Tensor], source="checkpoint",
                        dtype: torch.dtype = torch.float32) -> None:
    """Assign a Gemma 3n checkpoint's audio tensors (other tensors are skipped) to `model`. Strict: a
    missing or unknown audio tensor, or a wrong shape, raises `ModelLoadError` naming it."""
    audio = {k: v for k, v in tensors.items() if k.startswith(AUDIO_PREFIXES)}
    assign_strict(model, audio, expand(HF_TO_NATIVE, model.config.conf_num_hidden_layers), source, dtype)


def load_gemma3n_audio(checkpoint: str | Path, dtype: torch.dtype = torch.float32) -> Gemma3nAudio:
    """Build the audio tower and embedder from a Gemma 3n checkpoint folder (config.json and
    *.safetensors), reading only the audio tensors."""
    from safetensors import safe_open

    folder = Path(checkpoint)
    try:
        config = json.loads((folder / "config.json").read_text())
        cfg = AudioConfig.from_hf(config["audio_config"])
        text_hidden = config["text_config"]["hidden_size"]
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(folder / "config.json", f"no usable Gemma 3n audio_config ({e})") from e
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                tensors.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(AUDIO_PREFIXES)})
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ModelLoadError(file, f"unreadable safetensors file ({e})") from e
    model = empty_module(lambda c: Gemma3nAudio(c, text_hidden), cfg)  # no random init: every weight is assigned
    load_hf_audio_state(model, tensors, folder, dtype)
    return model.eval()
