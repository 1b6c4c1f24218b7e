"""`mmsdk bench --image` / `--audio`: how long a model's image or audio encoder takes, against
transformers (float32 and bfloat16: its processor, then `get_image_features` / `get_audio_features`) and
llama.cpp's `llama-mtmd-cli` (its own "image slice encoded in N ms"), each run in its own process.

Workloads: one view at the encoder's own size (896 px SigLIP, 768 px MobileNet-V5) and, for SigLIP, a 3:1
image with pan-and-scan (the whole view + 3 crops, one batch); 30 s of audio. Times include preprocessing
(pixels / log-mel features) for every engine. mmsdk also gives the time to first token of `describe_image` /
an audio `chat` (`max_tokens=1`; another image or clip each run, so the encode cache does not answer).
Each engine reports its process's peak RSS.

    python -m mmsdk._bench_media SPEC_JSON   # one worker; prints one BENCH_RESULT line
"""
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._bench_worker import peak_rss_mb

AUDIO_RATE = 16_000
AUDIO_SECONDS = 30.0
PRECISIONS = ("float", "int8")
WORKLOADS = {"image": ("one_view_s", "pan_and_scan_s", "ttft_s"),
             "audio": ("audio_30s_s", "ttft_s", "audio_30s_int8_swap_s")}


def test_image(h: int, w: int, seed: int):
    """Gradients plus noise: content for the encoder that no cache has seen (a new seed each run)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], -1)
    return Image.fromarray(np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8))


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A gliding tone in noise at 16 kHz: encode time does not depend on what is said."""
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


# ---- workers: one engine in a fresh process ---------------------------------------------------------

def _image_tower(encoders):
    """(tower, preprocessing config, whether it takes pan-and-scan crops) of a Gemma 3 or 3n model;
    None where its images go another way (Gemma 4: only the time to first token is measured)."""
    if encoders.vision is not None:
        return encoders.vision, encoders.image_config, True
    if encoders.gemma3n is not None and encoders.gemma3n.has("vision"):
        return encoders.gemma3n.vision, encoders.gemma3n.image_config, False
    return None


def work_mmsdk(spec: dict) -> dict:
    import torch

    import mmsdk
    from mmsdk.decoder.memory import heap_allocations
    from mmsdk.encoders.accelerate import int8_kernel

    kw = {"quantize": "int8"} if spec["precision"] == "int8" else {"dtype": "float32"}
    t = time.perf_counter()
    asst = mmsdk.load(spec["model"], mmproj=spec.get("mmproj"), threads=spec["threads"], **kw)
    res = {"load_s": time.perf_counter() - t,
           "kernel": int8_kernel() if spec["precision"] == "int8" else "float32 (oneDNN/MKL)"}
    if spec["kind"] not in asst.info.modalities:
        raise ValueError(f"{spec['model']}: the model has no {spec['kind']} encoder")
    runs = iter(range(1000, 2000))  # a new image / clip every TTFT run: the encode cache must not answer
    repeats = spec["repeats"]
    # the tower alone runs as the public path runs it: activations from the heap (`media.encode_prompt`)
    with torch.inference_mode(), heap_allocations():
        if spec["kind"] == "image":
            from mmsdk.encoders.image_preprocess import preprocess

            found = _image_tower(asst.encoders)
            side = 896
            if found:
                tower, cfg, crops = found
                side = cfg.size["height"]
                if spec.get("layers"):  # a shallower SigLIP for a quick run
                    tower.encoder.layers = tower.encoder.layers[:spec["layers"]]
                square = test_image(side, side, 1)
                res["one_view_s"] = timed(lambda: tower(preprocess(square, cfg, pan_and_scan=False).pixel_values),
                                          repeats)
                if crops:  # a 3:1 image: the whole view and 3 crops, where the crops are not too small
                    wide = test_image(600, 1800, 2)
                    res["pan_and_scan_views"] = preprocess(wide, cfg).pixel_values.shape[0]
                    res["pan_and_scan_s"] = timed(lambda: tower(preprocess(wide, cfg).pixel_values), repeats)
            res["ttft_s"] = timed(lambda: asst.describe_image(test_image(side, side, next(runs)), max_tokens=1),
                                  repeats)
        else:
            res.update(_mmsdk_audio(asst, spec, runs))
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def _mmsdk_audio(asst, spec: dict, runs) -> dict:
    import torch

    res, repeats = {}, spec["repeats"]
    g3n = asst.encoders.gemma3n
    if g3n is not None and g3n.has("audio"):
        from mmsdk.encoders.audio_features import log_mel

        audio, features = g3n.audio, g3n.features
        clip = speech_like(spec.get("seconds", AUDIO_SECONDS))

        def encode():
            mel, mask = log_mel(clip, features)
            return audio(torch.from_numpy(mel)[None], torch.from_numpy(mask)[None])

        res["audio_30s_s"] = timed(encode, repeats)
        from mmsdk.encoders.accelerate import Q8GroupLinear

        int8 = sum(isinstance(m, Q8GroupLinear) for m in audio.modules())
        res["conformer"] = f"{int8} linears int8 (8-bit inputs per 32)" if int8 else "float32"
        if spec.get("audio_int8_swap") and spec["precision"] == "float":  # the quantized loads' swap, on float
            from mmsdk.encoders.accelerate import accelerate_gemma3n_audio_

            ref, valid = encode()
            accelerate_gemma3n_audio_(audio)
            res["audio_30s_int8_swap_s"] = timed(encode, repeats)
            cos = torch.nn.functional.cosine_similarity(encode()[0][valid], ref[valid], dim=-1)
            res["int8_swap_cosine_min"], res["int8_swap_cosine_mean"] = cos.min().item(), cos.mean().item()
    msg = lambda: [{"role": "user", "content": [
        {"type": "audio", "audio": (speech_like(spec.get("seconds", AUDIO_SECONDS), next(runs)), AUDIO_RATE)},
        {"type": "text", "text": "Transcribe"}]}]
    res["ttft_s"] = timed(lambda: asst.chat(msg(), max_tokens=1), repeats)
    return res


def work_transformers(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText

    dtype = torch.bfloat16 if spec["precision"] == "bfloat16" else torch.float32
    folder = spec["model"]
    t = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype).eval()
    res = {"load_s": time.perf_counter() - t, "kernel": f"transformers {dtype}".replace("torch.", "")}
    gemma3 = model.config.model_type == "gemma3"
    repeats = spec["repeats"]
    with torch.inference_mode():
        if spec["kind"] == "image":
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(folder)
            if spec.get("layers"):
                tower = model.model.vision_tower
                del getattr(tower, "vision_model", tower).encoder.layers[spec["layers"]:]

            def encode(img, **kw):
                pixels = proc(img, return_tensors="pt", **kw)["pixel_values"]
                return model.get_image_features(pixels.to(dtype))

            side = proc.size["height"]
            res["one_view_s"] = timed(lambda: encode(test_image(side, side, 1), **(
                {"do_pan_and_scan": False} if gemma3 else {})), repeats)
            if gemma3:
                wide = test_image(600, 1800, 2)
                res["pan_and_scan_views"] = proc(wide, return_tensors="pt", do_pan_and_scan=True)["pixel_values"].shape[0]
                res["pan_and_scan_s"] = timed(lambda: encode(wide, do_pan_and_scan=True), repeats)
        else:
            from transformers import AutoFeatureExtractor

            fe = AutoFeatureExtractor.from_pretrained(folder)
            clip = speech_like(spec.get("seconds", AUDIO_SECONDS))

            def encode():
                f = fe(clip, sampling_rate=AUDIO_RATE, return_tensors="pt")
                return model.model.get_audio_features(f["input_features"].to(dtype), ~f["input_features_mask"])

            res["audio_30s_s"] = timed(encode, repeats)
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def work_llama(spec: dict) -> dict:
    """llama-mtmd-cli, one process per run, on the text model and mmproj given; its own encode timing.
    Each run's wall time (load, encode, prompt, one token) is its time to first token."""
    from ._bench_llama import tool

    cli = tool("llama-mtmd-cli", spec.get("llama_bin"))
    if cli is None:
        raise FileNotFoundError("llama-mtmd-cli not found (set MMSDK_LLAMA_BIN to llama.cpp's build/bin)")
    res = {"kernel": "llama.cpp ggml-cpu (the mmproj's own weights)", "one_view_s": [], "ttft_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(spec["repeats"] + 1):
            png = Path(tmp) / f"img{run}.png"
            test_image(896, 896, 1000 + run).save(png)
            t = time.perf_counter()
            cmd = [str(cli), "-m", spec["llama_model"], "--mmproj", spec["llama_mmproj"], "--image", str(png),
                   "-p", "Describe this image.", "-n", "1", "-t", str(spec["threads"]), "--temp", "0",
                   "--chat-template", "gemma"]  # a base model's GGUF may carry no chat template
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            wall = time.perf_counter() - t
            m = re.search(r"(?:image slice encoded|mtmd batch encoding done) in (\d+) ms", p.stdout + p.stderr)
            if p.returncode or not m:
                raise RuntimeError(f"llama-mtmd-cli failed ({p.returncode}): {(p.stderr or p.stdout)[-300:]}")
            if run:  # the first run warms the page cache
                res["one_view_s"].append(int(m.group(1)) / 1000)
                res["ttft_s"].append(wall)
    res["peak_rss_mb"] = peak_rss_mb(children=True)
    return res


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    work = {"mmsdk": work_mmsdk, "transformers": work_transformers, "llama.cpp": work_llama}[spec["engine"]]
    return work(spec)


# ---- driver -------------------------------------------------------------------------------------------

def bench_media(kind: str, model: str, *, threads: int = 2, repeats: int = 3, precisions=PRECISIONS, peers=(),
                mmproj: str | None = None, llama_model: str | None = None, llama_bin: str | None = None,
                layers: int = 0, audio_int8_swap: bool = False, progress=None) -> dict:
    """Every engine once, each in its own process, `repeats` timed runs after a warm-up. `kind` "image" or
    "audio"; peers "transformers" (float32 and bfloat16, `model` a checkpoint folder; "transformers:float" or
    "transformers:bfloat16" for one of them) and "llama.cpp"
    (images: `llama-mtmd-cli -m llama_model --mmproj mmproj`)."""
    from ._bench_run import cpu_model, run_worker

    engines = [("mmsdk", p) for p in precisions]
    engines += [("transformers", p) for p in ("float", "bfloat16") if "transformers" in peers or f"transformers:{p}" in peers]
    if "llama.cpp" in peers and kind == "image" and not layers:  # its mmproj is the full depth
        engines.append(("llama.cpp", "mmproj"))
    # mmsdk reads the mmproj beside a .gguf only; a folder carries its own tower (the same weights, for the eval)
    base = {"kind": kind, "model": str(model), "threads": threads, "repeats": repeats, "layers": layers,
            "mmproj": mmproj if str(model).endswith(".gguf") else None, "llama_mmproj": mmproj,
            "llama_model": llama_model, "llama_bin": llama_bin, "audio_int8_swap": audio_int8_swap}
    results = {}
    for i, (engine, precision) in enumerate(engines):
        results[f"{engine}:{precision}"] = run_worker({**base, "engine": engine, "precision": precision},
                                                      env={"HF_HUB_OFFLINE": "1"}, timeout=7200, module=__name__)
        progress and progress(i + 1, len(engines))
    return {"kind": kind, "model": str(model), "cpu": cpu_model(), "cpu_flags": cpu_flags(), "threads": threads,
            "repeats": repeats, "results": results, "ratios": ratios(kind, results)}


def cpu_flags() -> str:
    """The flags the kernel choice reads (`native._cpu_flags`), those this CPU has."""
    from .decoder.native import _cpu_flags

    have = _cpu_flags()
    return ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in have)


def _median(results: dict, name: str, workload: str) -> float | None:
    r = results.get(name, {})
    return statistics.median(r[workload]) if r.get(workload) else None


def ratios(kind: str, results: dict) -> dict:
    """mmsdk's fastest precision against transformers' best and llama-mtmd-cli, per workload."""
    out = {}
    one = "one_view_s" if kind == "image" else "audio_30s_s"
    ours = [v for p in PRECISIONS if (v := _median(results, f"mmsdk:{p}", one))]
    hf = [v for p in ("float", "bfloat16") if (v := _median(results, f"transformers:{p}", one))]
    llama = _median(results, "llama.cpp:mmproj", one)
    if ours and hf:
        out["vs_transformers_best"] = min(ours) / min(hf)
    if ours and llama:
        out["vs_llama_mtmd_cli"] = min(ours) / llama
    if kind == "image":
        pairs = [(views, _median(results, name, one)) for name in results
                 if name.startswith("mmsdk:") and (views := _median(results, name, "pan_and_scan_s"))]
        if pairs:  # the "<= 4x one view" for SigLIP's 4 views
            out["pan_and_scan_over_one_view"] = min(v / o for v, o in pairs if o)
    elif ours:
        out["real_time_factor"] = AUDIO_SECONDS / min(ours)
    return out


def media_table(res: dict) -> str:
    keys = [k for k in WORKLOADS[res["kind"]] if any(r.get(k) for r in res["results"].values())]
    lines = [f"CPU {res['cpu']} ({res['cpu_flags']}); {res['threads']} threads; median (min-max) of {res['repeats']} "
             f"runs after a warm-up, each engine in its own process",
             f"model {res['model']}",
             f"{'engine':24} " + " ".join(f"{k:>22}" for k in keys) + f" {'peak RSS MB':>12}  kernel"]
    for name, r in res["results"].items():
        if "error" in r:
            lines.append(f"{name:24} failed: {r['error']}")
            continue
        cells = [f"{statistics.median(r[k]):.2f} ({min(r[k]):.2f}-{max(r[k]):.2f})" if r.get(k) else "-" for k in keys]
        lines.append(f"{name:24} " + " ".join(f"{c:>22}" for c in cells) + f" {r['peak_rss_mb']:>12.0f}  {r['kernel']}"
                     + (f"; pan-and-scan: {r['pan_and_scan_views']} views" if "pan_and_scan_views" in r else "")
                     + (f"; conformer: {r['conformer']}" if "conformer" in r else ""))
        if "int8_swap_cosine_min" in r:
            lines.append(f"{'':24} the int8 conformer swap on this load: {statistics.median(r['audio_30s_int8_swap_s']):.2f} s, "
                         f"per-token cosine to float32 min {r['int8_swap_cosine_min']:.5f}"
                         f" mean {r['int8_swap_cosine_mean']:.5f}")
    names = {"vs_transformers_best": "mmsdk / transformers' best", "vs_llama_mtmd_cli": "mmsdk / llama-mtmd-cli",
             "pan_and_scan_over_one_view": "pan-and-scan image / 1 view", "real_time_factor": "x real time"}
    lines += [f"{names[k]}: {v:.2f}" for k, v in res["ratios"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        result = worker(json.loads(sys.argv[1]))
    except Exception as e:  # the driver reports the reason in a line; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        result = {"error": str(e)}
    print("BENCH_RESULT " + json.dumps(result))
