"""Encode time of the real-size encoders, mmsdk against transformers (float32 and bfloat16, its
processor then `get_image_features` / `get_audio_features`) and llama.cpp's `llama-mtmd-cli`, on the
same random weights (`make_real_size_encoders.py`), each measurement in its own process, medians.

Workloads: SigLIP (Gemma 3) one 896 px view, and a 3:1 image with pan-and-scan (whole view + 3 crops,
4 views in one batch); MobileNet-V5 (Gemma 3n) one 768 px view; 30 s of audio through the Gemma 3n
conformer. Times include preprocessing (pixels / log-mel features) for every engine. mmsdk also
reports the time to first token of `describe_image` / an audio prompt (`max_tokens=1`, tiny decoder,
another image each run so the encode cache does not answer). Each worker reports its peak RSS.

mmsdk runs as `mmsdk.load(folder, dtype="float32")` (transformers' float32 math) and
`mmsdk.load(folder, quantize="int8")` (the encoders' int8 module swap where one exists).
llama-mtmd-cli times its own image encode ("image slice encoded in N ms") with the bundled Gemma 3 270M
as its text model (the mmproj projects to its width, 640), on the same SigLIP weights in f16.

    HF_HUB_OFFLINE=1 python tests/eval/bench_encoders.py [--root /work/realsize] [--threads 2] [--repeats 3]
        [--encoders siglip,mobilenet,audio] [--engines mmsdk-f32,mmsdk-int8,hf-f32,hf-bf16,llama] [--json out.json]
        [--siglip-layers N]   # a shallower SigLIP for a quick run (every engine but llama-mtmd-cli)
"""
import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
LLAMA_BIN = Path(os.environ.get("LLAMA_CPP_BIN",
                                Path.home() / ".cache/llama-cpp-tools/native/src/vendor/llama.cpp/build/bin"))
ENGINES = ("mmsdk-f32", "mmsdk-int8", "hf-f32", "hf-bf16", "llama")
AUDIO_RATE = 16_000


def cpu_name() -> str:
    """The model name with its family and model numbers (a VM may show only "AMD EPYC")."""
    info = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    name = info.get("model name") or platform.processor()
    return f"{name} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"


def cpu_flags() -> str:
    flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split())
    return ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags)


def image(h: int, w: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], -1)
    return Image.fromarray(np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8))


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(t)))
    return (tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: first-call packing and allocation are load time, not encode time
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def peak_rss_mb(children: bool = False) -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- workers: one engine, one encoder, in a fresh process ------------------------------------------

def work_mmsdk(args, encoder: str, engine: str) -> dict:
    import torch
    from mmsdk.decoder.memory import heap_allocations
    from mmsdk.encoders.accelerate import accelerate_gemma3n_audio_, int8_kernel
    from mmsdk.encoders.audio_features import log_mel
    from mmsdk.encoders.image_preprocess import preprocess

    import mmsdk

    folder = Path(args.root) / ("gemma3" if encoder == "siglip" else "gemma3n")
    kw = {"quantize": "int8"} if engine == "mmsdk-int8" else {"dtype": "float32"}
    t = time.perf_counter()
    asst = mmsdk.load(folder, **kw)
    res = {"load_s": time.perf_counter() - t,
           "kernel": int8_kernel() if engine == "mmsdk-int8" else "float32 (oneDNN/MKL)"}
    enc = asst.encoders
    runs = iter(range(1000, 2000))  # a new image / clip every TTFT run: the encode cache must not answer
    # the tower alone runs as the public path runs it: activations from the heap (`media.encode_prompt`)
    with torch.inference_mode(), heap_allocations():
        if encoder == "siglip":
            tower, cfg = enc.vision, enc.image_config
            if args.siglip_layers:
                tower.encoder.layers = tower.encoder.layers[:args.siglip_layers]
            square, wide = image(896, 896, 1), image(600, 1800, 2)
            assert preprocess(wide, cfg).pixel_values.shape[0] == 4
            res["one_view_s"] = timed(lambda: tower(preprocess(square, cfg, pan_and_scan=False).pixel_values),
                                      args.repeats)
            res["pan_and_scan_4_views_s"] = timed(lambda: tower(preprocess(wide, cfg).pixel_values), args.repeats)
            res["ttft_describe_image_s"] = timed(
                lambda: asst.describe_image(image(896, 896, next(runs)), max_tokens=1), args.repeats)
        elif encoder == "mobilenet":
            tower, cfg = enc.gemma3n.vision, enc.gemma3n.image_config
            square = image(768, 768, 1)
            res["one_view_s"] = timed(lambda: tower(preprocess(square, cfg, pan_and_scan=False).pixel_values),
                                      args.repeats)
            res["ttft_describe_image_s"] = timed(
                lambda: asst.describe_image(image(768, 768, next(runs)), max_tokens=1), args.repeats)
        else:
            audio, features = enc.gemma3n.audio, enc.gemma3n.features
            clip = speech_like(30.0)

            def encode():
                mel, mask = log_mel(clip, features)
                return audio(torch.from_numpy(mel)[None], torch.from_numpy(mask)[None])

            res["audio_30s_s"] = timed(encode, args.repeats)
            msg = lambda: [{"role": "user", "content": [
                {"type": "audio", "audio": (speech_like(30.0, next(runs)), AUDIO_RATE)},
                {"type": "text", "text": "Transcribe"}]}]
            res["ttft_audio_chat_s"] = timed(lambda: asst.chat(msg(), max_tokens=1), args.repeats)
            if engine == "mmsdk-int8":  # the int8 conformer swap, which loads do not apply (quality gate)
                ref, valid = encode()
                accelerate_gemma3n_audio_(audio)
                res["audio_30s_int8_swap_s"] = timed(encode, args.repeats)
                cos = torch.nn.functional.cosine_similarity(encode()[0][valid], ref[valid], dim=-1)
                res["int8_swap_cosine_min"], res["int8_swap_cosine_mean"] = cos.min().item(), cos.mean().item()
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def work_hf(args, encoder: str, engine: str) -> dict:
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    dtype = torch.bfloat16 if engine == "hf-bf16" else torch.float32
    folder = Path(args.root) / ("gemma3" if encoder == "siglip" else "gemma3n")
    t = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype).eval()
    res = {"load_s": time.perf_counter() - t, "kernel": f"transformers {dtype}".replace("torch.", "")}
    with torch.inference_mode():
        if encoder in ("siglip", "mobilenet"):
            proc = AutoImageProcessor.from_pretrained(folder)
            if encoder == "siglip" and args.siglip_layers:
                layers = model.model.vision_tower.encoder.layers
                del layers[args.siglip_layers:]

            def encode(img, **kw):
                pixels = proc(img, return_tensors="pt", **kw)["pixel_values"]
                return model.get_image_features(pixels.to(dtype))

            side = 896 if encoder == "siglip" else 768
            square = image(side, side, 1)
            no_crops = {"do_pan_and_scan": False} if encoder == "siglip" else {}
            res["one_view_s"] = timed(lambda: encode(square, **no_crops), args.repeats)
            if encoder == "siglip":
                wide = image(600, 1800, 2)
                assert proc(wide, return_tensors="pt", do_pan_and_scan=True)["pixel_values"].shape[0] == 4
                res["pan_and_scan_4_views_s"] = timed(lambda: encode(wide, do_pan_and_scan=True), args.repeats)
        else:
            from transformers import AutoFeatureExtractor

            fe = AutoFeatureExtractor.from_pretrained(folder)
            clip = speech_like(30.0)

            def encode():
                f = fe(clip, sampling_rate=AUDIO_RATE, return_tensors="pt")
                return model.model.get_audio_features(f["input_features"].to(dtype), ~f["input_features_mask"])

            res["audio_30s_s"] = timed(encode, args.repeats)
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def work_llama(args) -> dict:
    """llama-mtmd-cli, one process per run; its own encode timing."""
    from mmsdk.bundled import bundled_gguf

    cli = LLAMA_BIN / "llama-mtmd-cli"
    mmproj = Path(args.root) / "gemma3-mmproj-f16.gguf"
    res = {"kernel": "llama.cpp ggml-cpu (f16 weights)", "one_view_s": [], "ttft_describe_image_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeats + 1):
            png = Path(tmp) / f"img{run}.png"
            image(896, 896, 1000 + run).save(png)
            t = time.perf_counter()
            cmd = [str(cli), "-m", str(bundled_gguf()), "--mmproj", str(mmproj), "--image", str(png),
                   "-p", "Describe this image.", "-n", "1", "-t", str(args.threads), "--temp", "0",
                   "--chat-template", "gemma"]  # the 270M GGUF carries no chat template
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            wall = time.perf_counter() - t
            m = re.search(r"(?:image slice encoded|mtmd batch encoding done) in (\d+) ms", p.stdout + p.stderr)
            if p.returncode or not m:
                raise RuntimeError(f"llama-mtmd-cli failed ({p.returncode}): {(p.stderr or p.stdout)[-400:]}")
            if run:  # the first run warms the page cache
                res["one_view_s"].append(int(m.group(1)) / 1000)
                res["ttft_describe_image_s"].append(wall)  # the whole process: load, encode, prompt, 1 token
    res["peak_rss_mb"] = peak_rss_mb(children=True)
    return res


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    encoder, engine = args.worker.split(":")
    if engine == "llama":
        res = work_llama(args)
    elif engine.startswith("mmsdk"):
        res = work_mmsdk(args, encoder, engine)
    else:
        res = work_hf(args, encoder, engine)
    print("BENCH_RESULT " + json.dumps(res))


# ---- driver --------------------------------------------------------------------------------------

WORKLOADS = {"siglip": ("one_view_s", "pan_and_scan_4_views_s", "ttft_describe_image_s"),
             "mobilenet": ("one_view_s", "ttft_describe_image_s"),
             "audio": ("audio_30s_s", "ttft_audio_chat_s", "audio_30s_int8_swap_s")}


def run_one(args, encoder: str, engine: str) -> dict:
    cmd = [sys.executable, str(HERE), "--worker", f"{encoder}:{engine}", "--root", args.root, "--threads",
           str(args.threads), "--repeats", str(args.repeats), "--siglip-layers", str(args.siglip_layers or 0)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for line in p.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[-500:]}"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/work/realsize")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--encoders", default="siglip,mobilenet,audio")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--siglip-layers", type=int, default=0, help="0: all 27")
    ap.add_argument("--json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    results = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "threads": args.threads, "repeats": args.repeats,
               "siglip_layers": args.siglip_layers or 27, "runs": {}}
    print(f"CPU: {results['cpu']} ({results['cpu_flags']}), {args.threads} threads, median of {args.repeats}")
    for encoder in args.encoders.split(","):
        for engine in args.engines.split(","):
            if engine == "llama" and (encoder != "siglip" or args.siglip_layers):
                continue  # llama-mtmd-cli has no Gemma 3n encoders; its mmproj is the full depth
            r = run_one(args, encoder, engine)
            results["runs"][f"{encoder}:{engine}"] = r
            if "error" in r:
                print(f"{encoder:9s} {engine:10s} ERROR {r['error']}", flush=True)
                continue
            cols = "  ".join(f"{k} {statistics.median(r[k]):7.2f}" for k in WORKLOADS[encoder] if k in r)
            print(f"{encoder:9s} {engine:10s} {cols}  peak RSS {r['peak_rss_mb']:6.0f} MB  [{r['kernel']}]", flush=True)
            if "int8_swap_cosine_min" in r:
                print(f"{'':20s} int8 conformer swap: per-token cosine to float32 min {r['int8_swap_cosine_min']:.5f} "
                      f"mean {r['int8_swap_cosine_mean']:.5f} (gate >= 0.999)", flush=True)
    print_ratios(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def print_ratios(results: dict) -> None:
    """The issue's targets, against the best transformers run of the same workload."""
    runs = results["runs"]

    def med(key, workload):
        r = runs.get(key, {})
        return statistics.median(r[workload]) if workload in r else None

    for encoder, workload, target in (("siglip", "one_view_s", 0.5), ("mobilenet", "one_view_s", 0.7),
                                      ("audio", "audio_30s_s", 0.5)):
        hf = [v for v in (med(f"{encoder}:hf-f32", workload), med(f"{encoder}:hf-bf16", workload)) if v]
        ours = med(f"{encoder}:mmsdk-int8", workload) or med(f"{encoder}:mmsdk-f32", workload)
        if hf and ours:
            ratio = ours / min(hf)
            print(f"{encoder} {workload}: mmsdk {ours:.2f} s = {ratio:.2f}x transformers' best "
                  f"(target <= {target}x: {'met' if ratio <= target else 'MISSED'})")
    one, four, llama = med("siglip:mmsdk-int8", "one_view_s"), med("siglip:mmsdk-int8", "pan_and_scan_4_views_s"), \
        med("siglip:llama", "one_view_s")
    if one and four:
        print(f"siglip 4 views / 1 view: {four / one:.2f} (target <= 4: {'met' if four <= 4 * one else 'MISSED'})")
    if one and llama:
        print(f"siglip one view: mmsdk {one:.2f} s vs llama-mtmd-cli {llama:.2f} s "
              f"(target <=: {'met' if one <= llama else 'MISSED'})")
    audio = med("audio:mmsdk-int8", "audio_30s_s") or med("audio:mmsdk-f32", "audio_30s_s")
    if audio:
        print(f"audio: {30 / audio:.1f}x real time (target >= 10x: {'met' if 30 / audio >= 10 else 'MISSED'})")


if __name__ == "__main__":
    main()
