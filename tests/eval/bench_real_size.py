"""First load, cached load and (with --speed) prefill/decode speed of real-size GGUFs, side by side
with llama.cpp's own tools on the same file.

    python tests/eval/make_real_size.py /work/realsize            # the files
    python tests/eval/bench_real_size.py /work/realsize/gemma-3-1b-q4_0.gguf [more.gguf] [--speed]

Each measurement runs in its own process. Peak RSS is the whole process's (VmHWM in
/proc/self/status: Python, torch and the model). The first load gets an empty weight cache folder
(`MMSDK_CACHE`), the cached load the folder the first one filled. llama.cpp's load time is the one
it prints (`load time`, llama-perplexity on one 128-token chunk), its speed llama-bench's pp/tg.
A cached load is given twice: with Python's imports (torch's ~1 s among them) and the model's own.
The SDK's C kernels are compiled once per machine and SDK version, on first use, into the same cache
folder: that build (~5 s, a `cc` child process) runs first and is reported on its own line, so the
first load is a model's, as a user's second model meets it.
Targets (issue 16): first load peak RSS <= 1.5 x file + 600 MB and <= 20 s per GB of file; cached
load <= llama.cpp's load time. CPU time is printed beside wall time: on a shared machine the wall
time of a load is mostly waiting for a core.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(spec: dict) -> dict:
    """One load in this process: wall and CPU seconds, peak and final RSS."""
    import resource

    t, c = time.perf_counter(), time.process_time()
    import torch

    from mmsdk.decoder.loader import load_text

    m0 = time.perf_counter()  # after the imports: the model's own load, as llama.cpp's "load time" counts
    loaded = load_text(spec["model"], None, quantize=spec.get("quantize"), threads=spec["threads"])
    loaded.tokenizer.encode("warm")
    wall, cpu, model_s = time.perf_counter() - t, time.process_time() - c, time.perf_counter() - m0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with torch.inference_mode():  # it runs: one token through the whole model
        from mmsdk.decoder.kv_cache import make_cache

        m = loaded.model
        m.logits(m(torch.tensor([[2]]), make_cache(m.config), torch.tensor([0])))
    from mmsdk.decoder.quantize import quantized_bits

    return {"load_s": wall, "model_load_s": model_s, "cpu_s": cpu, "peak_rss_mb": status_mb("VmHWM"), "rss_after_mb": status_mb("VmRSS"),
            "major_faults": ru.ru_majflt, "label": loaded.quantization, "modules": quantized_bits(m)}


def run_load(model: Path, threads: int, cache: str, quantize=None) -> dict:
    spec = json.dumps({"model": str(model), "threads": threads, "quantize": quantize})
    p = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True,
                       env={**os.environ, "MMSDK_CACHE": cache})
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}


def build_kernels(cache: str) -> dict:
    """Compile the C kernels into the cache folder (what the SDK's first use does once), timed."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", "import torch; from mmsdk.decoder import native; native.library()"],
                       capture_output=True, text=True, env={**os.environ, "MMSDK_CACHE": cache})
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
    return {"wall_s": time.perf_counter() - t}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed", action="store_true", help="also prefill (pp512) and decode (tg128) vs llama-bench")
    ap.add_argument("--cache-root", default=None, help="where the temporary weight cache folders go")
    ap.add_argument("--llama-bin", default=None, help="llama.cpp's build/bin (default: $MMSDK_LLAMA_BIN, the native build)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(json.loads(a.worker))), flush=True)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from mmsdk._bench_llama import llama_bench, llama_load
    from mmsdk._bench_run import cpu_model, kernel_summary

    print(f"CPU: {cpu_model()}, {a.threads} threads; kernels: {kernel_summary()}")
    out = []
    if a.cache_root:
        os.makedirs(a.cache_root, exist_ok=True)
    for model in a.models:
        size_gb = model.stat().st_size / 1e9
        cache = tempfile.mkdtemp(prefix="mmsdk-realsize-", dir=a.cache_root)
        try:
            kernels = build_kernels(cache)
            first = run_load(model, a.threads, cache)
            cached = run_load(model, a.threads, cache)
            peer = llama_load(str(model), a.threads, a.llama_bin)
            row = {"model": str(model), "file_gb": size_gb, "kernels": kernels, "first": first, "cached": cached, "llama_load": peer}
            if a.speed:
                row["speed"] = speed(model, a.threads, cache)
                row["llama_bench"] = llama_bench(str(model), a.threads, 512, 128, 2, a.llama_bin)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        out.append(row)
        report(row)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


def speed(model: Path, threads: int, cache: str) -> dict:
    """pp512 and tg128 as `mmsdk bench` measures them (the prompt timed on its second run)."""
    from mmsdk._bench_run import prepare_ids, run_worker

    env = {"MMSDK_CACHE": cache}
    os.environ["MMSDK_CACHE"] = cache
    ids = [2, *prepare_ids(str(model), threads, "stored")[:511]]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(ids, f)
    try:
        return run_worker({"engine": "mmsdk", "model": str(model), "threads": threads, "precision": "stored",
                           "ids": f.name, "gen_tokens": 128}, env=env)
    finally:
        os.unlink(f.name)


def report(row: dict) -> None:
    gb = row["file_gb"]
    print(f"\n{row['model']}  ({gb:.2f} GB)")
    rss_target, time_target = 1.5 * gb * 1000 + 600, 20 * gb
    f, c, p = row["first"], row["cached"], row["llama_load"]
    k = row["kernels"]
    print(f"  kernel build failed: {k['error']}" if "error" in k else
          f"  kernel build {k['wall_s']:7.1f} s with Python's imports (once per machine and SDK version, before the first load)")
    if "error" in f:
        print(f"  first load failed: {f['error']}")
    else:
        print(f"  first load   {f['load_s']:7.1f} s (CPU {f['cpu_s']:.1f} s; target <= {time_target:.1f} s)  "
              f"peak RSS {f['peak_rss_mb']:6.0f} MB (target <= {rss_target:.0f})  {f['label']} {f['modules']}")
    if "error" in c:
        print(f"  cached load failed: {c['error']}")
    else:
        print(f"  cached load  {c['load_s']:7.2f} s with the imports, {c['model_load_s']:.2f} s the model's own "
              f"(CPU {c['cpu_s']:.2f} s)  peak RSS {c['peak_rss_mb']:6.0f} MB, "
              f"{c['rss_after_mb']:.0f} MB after a token")
    if "error" in p:
        print(f"  llama.cpp load failed: {p['error']}")
    else:
        print(f"  llama.cpp load {p['load_s']:5.2f} s (its printed load time)  peak RSS {p['peak_rss_mb']:6.0f} MB "
              f"(whole llama-perplexity run)")
    if "speed" in row:
        s, lb = row["speed"], row["llama_bench"]
        ours = "failed: " + s["error"] if "error" in s else f"pp512 {s['prefill_tps']:.1f}  tg128 {s['decode_tps']:.2f} tok/s"
        theirs = ("failed: " + lb["error"] if "error" in lb else
                  f"pp512 {lb['prefill_tps']:.1f}  tg128 {lb['decode_tps']:.2f} tok/s")
        print(f"  mmsdk       {ours}\n  llama-bench {theirs}")


if __name__ == "__main__":
    sys.exit(main())
