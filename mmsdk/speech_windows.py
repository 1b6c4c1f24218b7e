"""Cutting audio of any length into windows a speech model takes (at most 30 s), at quiet points, for
both transcription paths: the bundled Whisper (`speech`) and a model's own audio encoder
(`speech_gemma3n`). Neighbouring windows overlap a little; every recognised word is kept by exactly
one window (see `plan_windows`), so nothing is lost or doubled at a seam."""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .encoders.audio_io import SAMPLE_RATE

MAX_WINDOW_S = 30.0  # Whisper's receptive field
OVERLAP_S = 1.0  # audio shared with each neighbour, so a word at a cut is heard whole on both sides
SEARCH_S = 10.0  # how far back from the longest possible cut to look for a quiet point
SILENCE_PEAK = 1e-3  # -60 dBFS: quieter windows are skipped (Whisper invents text for silence)


@dataclass(frozen=True)
class Window:
    """Sample ranges: `start:end` is decoded; words whose midpoint lies in `keep_from:keep_to` are kept."""

    start: int
    end: int
    keep_from: int
    keep_to: int


def voiced_windows(samples: np.ndarray, *, progress: bool = False) -> Iterator[tuple[Window, np.ndarray]]:
    """The windows of `samples` (`plan_windows`) with their audio, silent ones skipped (speech models
    invent text for silence). With `progress`, a bar in seconds of audio when there is more than one."""
    windows = plan_windows(samples)
    bar = _progress_bar(len(samples) / SAMPLE_RATE, enabled=progress and len(windows) > 1)
    done = 0
    try:
        for w in windows:
            chunk = samples[w.start:w.end]
            if np.abs(chunk).max(initial=0.0) >= SILENCE_PEAK:
                yield w, chunk
            bar.update((w.end - done) / SAMPLE_RATE)
            done = w.end
    finally:
        bar.close()


def plan_windows(samples: np.ndarray, *, rate: int = SAMPLE_RATE, max_window_s: float = MAX_WINDOW_S,
                 overlap_s: float = OVERLAP_S, search_s: float = SEARCH_S) -> list[Window]:
    """Cut audio into windows of at most `max_window_s`, each cut at the quietest point of the last
    `search_s` seconds its window could reach.

    At a pause, neighbouring windows share only the pause (up to `overlap_s` each side), so neither
    hears a clipped word and each keeps all it hears. With no pause (continuous speech), they
    share `overlap_s` of speech each side of the cut and a word goes to the window holding its middle."""
    n = len(samples)
    max_window, overlap = int(max_window_s * rate), int(overlap_s * rate)
    if n <= max_window:
        return [Window(0, n, 0, n)]
    energy, hop = _smoothed_energy(samples, rate)
    windows, start, keep_from = [], 0, 0
    while n - start > max_window:
        latest_cut = start + max_window - overlap
        cut, margin, pause = _find_cut(energy, hop, latest_cut - int(search_s * rate), latest_cut, overlap)
        if pause:
            windows.append(Window(start, cut + margin, keep_from, cut + margin))
            start = keep_from = cut - margin
        else:
            windows.append(Window(start, cut + overlap, keep_from, cut))
            start, keep_from = cut - overlap, cut
    windows.append(Window(start, n, keep_from, n))
    return windows


def _smoothed_energy(samples: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """Mean power over 300 ms around every 10 ms step: low where speech pauses, not just between
    two phonemes. Returns (energy per step, step in samples)."""
    hop = rate // 100
    frames = len(samples) // hop
    power = np.square(samples[: frames * hop].astype(np.float64)).reshape(frames, hop).mean(axis=1)
    width = 31
    kernel = np.ones(width) / width
    return np.convolve(np.pad(power, width // 2, mode="edge"), kernel, mode="valid"), hop


def _find_cut(energy: np.ndarray, hop: int, lo: int, hi: int, overlap: int) -> tuple[int, int, bool]:
    """Quietest step in samples lo..hi → (cut sample, quiet margin each side in samples, is a pause).
    A pause is 20 dB below the region's median power for at least 100 ms; the cut moves to its middle."""
    lo, hi = -(-lo // hop), min(hi // hop, len(energy) - 1)
    region = energy[lo : hi + 1]
    c = lo + int(np.argmin(region))
    quiet, limit = energy[c] * 10 + 1e-12, overlap // hop
    before = after = 0
    while before < limit and c - before - 1 >= 0 and energy[c - before - 1] <= quiet:
        before += 1
    while after < limit and c + after + 1 < len(energy) and energy[c + after + 1] <= quiet:
        after += 1
    pause = energy[c] < 0.01 * np.median(region) and before + after >= 10
    if not pause:
        return c * hop, 0, False
    return (c + (after - before) // 2) * hop, (after + before) // 2 * hop, True


def norm_word(word: str) -> str:
    """A word as compared across a seam: lower case, punctuation dropped."""
    return re.sub(r"[^\w']", "", word.lower())


def _progress_bar(total_s: float, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total_s, unit="s", desc="transcribing", disable=not enabled,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]")
