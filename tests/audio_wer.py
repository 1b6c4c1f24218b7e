"""Word error rate and word alignment for the speech tests and the audio eval script."""
import re
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures" / "audio"
# Whisper base's words differ by CPU (CTranslate2 picks its kernels by instruction set): on an AMD Zen 3
# it hears "The quick round fox jump ..." (2 of 13 words, 0.154). A broken pipeline is far above this.
MAX_WER = 0.25


def words(text: str) -> list[str]:
    """Lower-case words without punctuation; hyphens and spaces both split ("river bank" = "riverbank"
    is not attempted: one substitution either way)."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def align(ref: list[str], hyp: list[str]) -> list[tuple[str, int | None, int | None]]:
    """Levenshtein alignment as ops ("ok" | "sub" | "del" | "ins", ref index, hyp index)."""
    n, m = len(ref), len(hyp)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]), d[i - 1][j] + 1, d[i][j - 1] + 1)
    ops, i, j = [], n, m
    while i or j:
        if i and j and d[i][j] == d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            ops.append(("ok" if ref[i - 1] == hyp[j - 1] else "sub", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i and d[i][j] == d[i - 1][j] + 1:
            ops.append(("del", i - 1, None))
            i -= 1
        else:
            ops.append(("ins", None, j - 1))
            j -= 1
    return ops[::-1]


def wer(ref_text: str, hyp_text: str) -> float:
    ref, hyp = words(ref_text), words(hyp_text)
    errors = sum(op != "ok" for op, _, _ in align(ref, hyp))
    return errors / max(1, len(ref))


def fixture_transcripts() -> list[tuple[str, str]]:
    """(file name, reference text) for every short fixture clip."""
    lines = (FIXTURES / "transcripts.txt").read_text().splitlines()
    return [tuple(line.split("\t", 1)) for line in lines if line.strip()]


def long_clip_sentences() -> list[tuple[float, float, str]]:
    """(start_s, end_s, text) of each sentence in long_3min.ogg."""
    rows = (FIXTURES / "long_3min.tsv").read_text().splitlines()
    return [(float(a), float(b), t) for a, b, t in (r.split("\t", 2) for r in rows if r.strip())]


def write_m4a(samples: np.ndarray, rate: int, path: Path) -> Path:
    """AAC in an MP4 container, the format phones record, written with PyAV (sox cannot)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path
