"""Log-mel features equal transformers' Gemma3nAudioFeatureExtractor."""
import numpy as np
import pytest

from audio_wer import FIXTURES
from mmsdk.encoders.audio_features import FeatureConfig, log_mel, num_frames
from mmsdk.encoders.audio_io import load_audio

import transformers
from transformers import Gemma3nAudioFeatureExtractor  # noqa: E402


@pytest.mark.parametrize("n", [513, 600, 16000, 16123, 160_000, 480_000, 500_000])
def test_features_match_reference(n):
    x = (np.random.default_rng(n).standard_normal(n) * 0.1).astype(np.float32)
    ref = Gemma3nAudioFeatureExtractor()(x, return_tensors="np")
    feats, mask = log_mel(x)
    assert feats.shape == ref["input_features"][0].shape and feats.dtype == np.float32
    assert np.abs(feats - ref["input_features"][0]).max() <= 1e-4
    np.testing.assert_array_equal(mask, ref["input_features_mask"][0])
    assert num_frames(n) == (feats.shape[0], int(mask.sum()))


def test_features_match_reference_on_speech_with_per_bin_normalisation():
    x = load_audio(FIXTURES / "c03_enus_m3_noise_16k.wav")
    mean, std = np.linspace(-3, 1, 128), np.linspace(0.5, 2, 128)
    ref = Gemma3nAudioFeatureExtractor(per_bin_mean=mean, per_bin_stddev=std)(x, return_tensors="np")
    cfg = FeatureConfig.from_hf({"per_bin_mean": list(mean), "per_bin_stddev": list(std),
                                 "feature_extractor_type": "Gemma3nAudioFeatureExtractor"})
    feats, _ = log_mel(x, cfg)
    assert np.abs(feats - ref["input_features"][0]).max() <= 1e-4


def test_short_input_gives_no_frames_and_unknown_keys_warn():
    feats, mask = log_mel(np.zeros(100, np.float32))
    assert feats.shape == (0, 128) and mask.shape == (0,)
    with pytest.warns(UserWarning, match="frobnicate"):
        FeatureConfig.from_hf({"frobnicate": 1})
