"""Audio evaluation: word error rate per speech fixture through the bundled Whisper base, and real-time
factors (processing seconds per audio second) for it and for the Gemma 3n audio encoder at its real
size with random weights.

    HF_HUB_OFFLINE=1 python tests/eval/eval_audio.py --threads 2
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from audio_wer import FIXTURES, fixture_transcripts, long_clip_sentences, words, align  # noqa: E402

from mmsdk.encoders.audio_features import log_mel  # noqa: E402
from mmsdk.encoders.audio_gemma3n import AudioConfig, Gemma3nAudio, num_audio_tokens  # noqa: E402
from mmsdk.encoders.audio_io import SAMPLE_RATE, load_audio  # noqa: E402
from mmsdk.speech import plan_windows, transcribe  # noqa: E402


def errors(ref_text: str, hyp_text: str) -> tuple[int, int]:
    ref = words(ref_text)
    return sum(op != "ok" for op, _, _ in align(ref, words(hyp_text))), len(ref)


def eval_whisper(threads: int) -> None:
    transcribe(FIXTURES / fixture_transcripts()[0][0], language="en", threads=threads)  # load + warm up
    cases = list(fixture_transcripts())
    cases.append(("long_3min.ogg", " ".join(t for _, _, t in long_clip_sentences())))
    total_err = total_words = 0
    print(f"{'fixture':34s} {'WER':>6s} {'audio s':>8s} {'RTF':>6s}  transcript")
    for name, reference in cases:
        seconds = len(load_audio(FIXTURES / name)) / SAMPLE_RATE
        t0 = time.perf_counter()
        result = transcribe(FIXTURES / name, language="en", threads=threads)
        rtf = (time.perf_counter() - t0) / seconds
        err, n = errors(reference, result.text)
        total_err, total_words = total_err + err, total_words + n
        text = result.text if len(result.text) < 60 else result.text[:57] + "..."
        print(f"{name:34s} {err / n:6.1%} {seconds:8.1f} {rtf:6.3f}  {text}")
        if name == "long_3min.ogg":
            print(f"  long clip: {len(plan_windows(load_audio(FIXTURES / name)))} windows, "
                  f"{len(result.segments)} segments")
    print(f"{'overall':34s} {total_err / total_words:6.1%}  ({total_err} errors / {total_words} words)")


def eval_gemma3n_encoder(threads: int, seconds: float = 30.0) -> None:
    torch.manual_seed(0)
    model = Gemma3nAudio(AudioConfig(), text_hidden_size=2048).eval()  # E2B/E4B audio tower size
    params = sum(p.numel() for p in model.parameters())
    x = (np.random.default_rng(0).standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32)
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        timings = []
        for _ in range(2):  # the first run pays one-off allocation costs
            t0 = time.perf_counter()
            feats, mask = log_mel(x)
            with torch.inference_mode():
                out, valid = model(torch.from_numpy(feats)[None].to(dtype), torch.from_numpy(mask)[None])
            timings.append(time.perf_counter() - t0)
        assert out.shape[1] == num_audio_tokens(len(x))[0]
        print(f"gemma3n audio encoder {params / 1e6:.0f}M params, {str(dtype).removeprefix('torch.'):8s}: "
              f"{seconds:.0f} s clip → {out.shape[1]} tokens in {min(timings):.2f} s, RTF {min(timings) / seconds:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-whisper", action="store_true")
    p.add_argument("--skip-gemma", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} cpu_count={os.cpu_count()} load_avg={os.getloadavg()[0]:.1f}")
    if not args.skip_whisper:
        eval_whisper(args.threads)
    if not args.skip_gemma:
        eval_gemma3n_encoder(args.threads)


if __name__ == "__main__":
    main()
