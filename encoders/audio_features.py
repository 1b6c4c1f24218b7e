"""Gemma 3n's audio features as pure functions: 128 log-mel bins every 10 ms over 32 ms frames, with
HTK-style pre-emphasis inside each frame, a periodic Hann window and a doubled ("overdriven") FFT.

This matches transformers' `Gemma3nAudioFeatureExtractor` for one clip: the same padding to a
multiple of 128 samples, the same 30 s truncation, the same per-frame validity mask.
"""
import functools
import logging
import math
from dataclasses import dataclass

import numpy as np

from .hf_config import hf_fields

logger = logging.getLogger(__name__)

# Keys of preprocessor_config.json that describe the processor rather than the features.
_IGNORED_HF_KEYS = frozenset({
    "feature_extractor_type", "processor_class", "padding_side", "return_attention_mask",
    "image_processor_type", "auto_map",
})


@dataclass(frozen=True)
class FeatureConfig:
    """Field names as in Gemma 3n's preprocessor_config.json."""

    feature_size: int = 128
    sampling_rate: int = 16_000
    padding_value: float = 0.0
    frame_length_ms: float = 32.0
    hop_length_ms: float = 10.0
    min_frequency: float = 125.0
    max_frequency: float = 7600.0
    preemphasis: float = 0.97
    preemphasis_htk_flavor: bool = True
    fft_overdrive: bool = True
    dither: float = 0.0
    input_scale_factor: float = 1.0
    mel_floor: float = 1e-5
    per_bin_mean: tuple[float, ...] | None = None
    per_bin_stddev: tuple[float, ...] | None = None
    max_length: int = 480_000  # 30 s; longer audio is split into windows before it gets here
    pad_to_multiple_of: int = 128

    @classmethod
    def from_hf(cls, d: dict) -> "FeatureConfig":
        d = dict(d)
        rate = d.get("sampling_rate") or cls.sampling_rate
        for key in ("frame_length", "hop_length"):  # transformers saves these in samples, not ms
            if d.get(key) is not None:
                d.setdefault(f"{key}_ms", d.pop(key) * 1000.0 / rate)
        fft = d.pop("fft_length", None)
        kwargs = hf_fields(cls, d, _IGNORED_HF_KEYS)
        for key in ("per_bin_mean", "per_bin_stddev"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(float(x) for x in kwargs[key])
        cfg = cls(**kwargs)
        if fft is not None and fft != cfg.fft_length:  # derived from the frame length; a mismatch is a new extractor
            raise ValueError(f"fft_length {fft} in the feature config, but frame length and fft_overdrive give {cfg.fft_length}")
        return cfg

    @property
    def frame_length(self) -> int:
        return int(round(self.sampling_rate * self.frame_length_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        return int(round(self.sampling_rate * self.hop_length_ms / 1000.0))

    @property
    def fft_length(self) -> int:
        n = 2 ** math.ceil(math.log2(self.frame_length))
        return 2 * n if self.fft_overdrive else n


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int, fft_length: int):
    """Triangular HTK-mel filters without area normalisation, (n_freqs, n_mels) float64."""
    all_freqs = np.arange(n_freqs, dtype=np.float32) * (sample_rate / fft_length)
    m_min = 2595.0 * math.log10(1.0 + f_min / 700.0)
    m_max = 2595.0 * math.log10(1.0 + f_max / 700.0)
    f_pts = 700.0 * (10 ** (np.linspace(m_min, m_max, n_mels + 2) / 2595.0) - 1.0)  # band edges in Hz
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(np.zeros(1, dtype=np.float32), np.minimum(down, up))


@functools.lru_cache(maxsize=8)
def _constants(cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    n = np.arange(cfg.frame_length, dtype=np.float32)
    window = (0.5 * (1 - np.cos(2 * np.pi * n / cfg.frame_length))).astype(np.float32)  # periodic Hann
    filters = mel_filterbank(
        cfg.fft_length // 2 + 1, cfg.min_frequency, cfg.max_frequency, cfg.feature_size, cfg.sampling_rate,
        cfg.fft_length,
    )
    return window, filters


def pad_waveform(samples: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Truncate to `max_length` samples, then zero-pad to a multiple of `pad_to_multiple_of`.
    Returns (samples (L,) float32, sample mask (L,) bool with True on real samples)."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if samples.shape[0] > cfg.max_length:
        logger.warning("audio of %d samples truncated to %d for one feature window", len(samples), cfg.max_length)
        samples = samples[: cfg.max_length]
    n = samples.shape[0]
    m = cfg.pad_to_multiple_of
    padded_len = -(-n // m) * m if m else n
    out = np.full(padded_len, cfg.padding_value, dtype=np.float32)
    out[:n] = samples
    mask = np.zeros(padded_len, dtype=bool)
    mask[:n] = True
    return out, mask


def frame(samples: np.ndarray, size: int, step: int) -> np.ndarray:
    """(L,) → (num_frames, size) overlapping frames, a read-only view."""
    num_frames = (samples.shape[0] - size) // step + 1
    if num_frames <= 0:
        return np.zeros((0, size), dtype=samples.dtype)
    stride = samples.strides[0]
    return np.lib.stride_tricks.as_strided(samples, shape=(num_frames, size), strides=(stride * step, stride))


def log_mel(samples: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> tuple[np.ndarray, np.ndarray]:
    """16 kHz mono samples → (features (T, feature_size) float32, mask (T,) bool, True on frames that
    start inside the real audio). T = (L - frame_length - 1) // hop + 1 after padding."""
    waveform, sample_mask = pad_waveform(samples, cfg)
    if cfg.dither > 0.0:
        waveform = waveform + cfg.dither * np.random.randn(*waveform.shape).astype(waveform.dtype)
    if cfg.input_scale_factor != 1.0:
        waveform = waveform * cfg.input_scale_factor
    window, filters = _constants(cfg)

    # Each frame carries one extra leading sample so pre-emphasis needs nothing from the frame before.
    frames = frame(waveform, cfg.frame_length + 1, cfg.hop_length)  # (T, frame_length + 1)
    if cfg.preemphasis > 0.0 and cfg.preemphasis_htk_flavor:
        first = frames[:, :1] * (1.0 - cfg.preemphasis)
        rest = frames[:, 1:-1] - cfg.preemphasis * frames[:, :-2]
        frames = np.concatenate([first, rest], axis=-1)
    elif cfg.preemphasis > 0.0:
        frames = frames[:, 1:] - cfg.preemphasis * frames[:, :-1]
    else:
        frames = frames[:, :-1]

    spectrum = np.abs(np.fft.rfft(frames * window, n=cfg.fft_length, axis=-1))  # (T, fft_length/2 + 1)
    mel = np.log(np.maximum(spectrum @ filters, np.array(cfg.mel_floor, dtype=np.float64)))  # (T, n_mels)
    if cfg.per_bin_mean is not None:
        mel = mel - np.asarray(cfg.per_bin_mean)[None, :]
    if cfg.per_bin_stddev is not None:
        mel = mel / np.asarray(cfg.per_bin_stddev)[None, :]
    mask = sample_mask[:: cfg.hop_length][: mel.shape[0]]
    return mel.astype(np.float32), mask


def num_frames(num_samples: int, cfg: FeatureConfig = FeatureConfig()) -> tuple[int, int]:
    """(total feature frames, valid feature frames) that `log_mel` returns for a clip, without audio."""
    n = min(num_samples, cfg.max_length)
    m = cfg.pad_to_multiple_of
    padded = -(-n // m) * m if m else n
    total = max(0, (padded - cfg.frame_length - 1) // cfg.hop_length + 1)
    return total, min(total, -(-n // cfg.hop_length))
