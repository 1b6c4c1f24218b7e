"""Time to first token of describing one image with a real-size Gemma 3 (a Q4_0 GGUF and its mmproj,
random weights: `make_real_size.py`, `make_real_size_encoders.py --only mmproj4b`), mmsdk beside llama.cpp's own
`llama-mtmd-cli` on the same files and the same 896 x 896 image, in one run.

    python tests/eval/ttft_image.py [--model /work/realsize/gemma-3-4b-q4_0.gguf]
        [--mmproj /work/realsize/gemma3-4b-mmproj-f16.gguf] [--repeats 2]

mmsdk: `describe_image(..., max_tokens=1)` after the model is loaded (the image encoded, the prompt
prefilled, the first token picked), median of the repeats. llama-mtmd-cli: from its log's time
stamps, the time from the model loaded to the prompt (text, image encode, the image's tokens) done.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

NATIVE_BIN = Path.home() / ".cache/llama-cpp-tools/native/src/vendor/llama.cpp/build/bin"


def llama_ttft(bin_dir: Path, model: str, mmproj: str, image: str, threads: int) -> dict:
    out = subprocess.run([str(bin_dir / "llama-mtmd-cli"), "-m", model, "--mmproj", mmproj, "--image", image,
                          "-p", "Describe this image.", "-n", "1", "-t", str(threads), "--temp", "0",
                          "--chat-template", "gemma"],  # the real-size GGUF carries no template: llama.cpp's own
                         capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    stamp = lambda pattern: next((_seconds(m.group(1)) for m in re.finditer(rf"^(\S+) I {pattern}", log, re.M)), None)  # noqa: E731
    start, done = stamp("main: loading model"), stamp("mtmd batch encoding done")  # the prompt, after the model loads
    encoded = re.search(r"mtmd batch encoding done in (\d+) ms", log)
    if out.returncode or start is None or done is None:
        raise SystemExit(f"llama-mtmd-cli failed ({out.returncode}):\n{log[-2000:]}")
    return {"ttft_s": done - start, "prompt_ms": float(encoded.group(1)) if encoded else float("nan")}


def _seconds(stamp: str) -> float:
    """llama.cpp's log time stamp, minutes.seconds.milliseconds.microseconds, in seconds."""
    m, s, ms, us = (int(x) for x in stamp.split("."))
    return 60 * m + s + ms / 1e3 + us / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/work/realsize/gemma-3-4b-q4_0.gguf")
    ap.add_argument("--mmproj", default="/work/realsize/gemma3-4b-mmproj-f16.gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--llama-bin", type=Path, default=Path(os.environ.get("MMSDK_LLAMA_BIN", NATIVE_BIN)))
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import torch

    import mmsdk
    from mmsdk._bench_run import cpu_model, kernel_summary

    print(f"CPU: {cpu_model()}, {a.threads} threads; kernels: {kernel_summary()}")
    with tempfile.TemporaryDirectory() as tmp:
        # another image each run: the session's encode cache would answer a repeated one without encoding it
        images = [str(Path(tmp) / f"image{i}.png") for i in range(a.repeats)]
        for i, image in enumerate(images):
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (896, 896, 3), dtype=np.uint8)).save(image)
        peer = llama_ttft(a.llama_bin, a.model, a.mmproj, images[0], a.threads)
        torch.set_num_threads(a.threads)
        asst = mmsdk.load(a.model, mmproj=a.mmproj, threads=a.threads)
        times = []
        for image in images:
            t = time.perf_counter()
            asst.describe_image(image, max_tokens=1, pan_and_scan=False)
            times.append(time.perf_counter() - t)
    ours = statistics.median(times)
    print(f"model: {a.model}\nmmproj: {a.mmproj}")
    print(f"mmsdk describe_image TTFT: {ours:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})")
    print(f"llama-mtmd-cli TTFT: {peer['ttft_s']:.2f} s (its prompt with the image: {peer['prompt_ms']:.0f} ms)")
    print(f"mmsdk / llama-mtmd-cli: {ours / peer['ttft_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
