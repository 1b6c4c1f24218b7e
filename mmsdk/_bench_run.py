"""`mmsdk bench` driver: every measurement in its own process, engines alternating round by round,
medians and min-max over rounds, the memory bandwidth and the decode roofline it implies."""
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

log = logging.getLogger(__name__)

SPEED_KEYS = ("prefill_tps", "decode_tps", "ttft_s", "first_prompt_s", "load_s", "peak_rss_mb")


def run_worker(spec: dict, env: dict | None = None, timeout: float = 1800, module: str = "mmsdk._bench_worker") -> dict:
    """Run one measurement (`python -m module SPEC_JSON`) in a fresh Python; its result, or {"error": ...}."""
    cmd = [sys.executable, "-m", module, json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {p.returncode}: {tail[0][:300]}"}


def memory_bandwidth_gbs(threads: int, mbytes: int = 512, repeats: int = 7) -> float:
    """Read bandwidth with `threads` threads: the best of several sums over a buffer far larger
    than the caches (a sum does one add per 4 bytes read, so memory is the limit)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buf = torch.ones(mbytes * 2**20 // 4, dtype=torch.float32)
        buf.sum()
        best = min(_timed(buf.sum) for _ in range(repeats))
        return buf.numel() * 4 / best / 1e9
    finally:
        torch.set_num_threads(old)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def prepare_ids(model: str, threads: int, precision: str) -> list[int]:
    """Corpus token ids from mmsdk's tokenizer (one process), shared by all engines."""
    r = run_worker({"engine": "mmsdk", "task": "tokens", "model": model, "threads": threads, "precision": precision})
    if "error" in r:
        raise RuntimeError(f"could not tokenize the corpus: {r['error']}")
    return r["ids"]


def configs(precisions: list[str], peers: list[str]) -> list[tuple[str, str]]:
    out = [("mmsdk", p) for p in precisions]
    for peer in peers:
        if peer == "llama.cpp":
            out.append(("llama.cpp", "gguf"))
        elif peer == "transformers":
            out += [("transformers", "float"), ("transformers", "bfloat16")]
        else:
            raise ValueError(f"unknown peer {peer!r} (known: llama.cpp, transformers)")
    return out


def bench_speed(model: str, *, threads: int, prompt_tokens: int, gen_tokens: int, precisions: list[str],
                peers: list[str], rounds: int, cold: bool, progress=None, llama_bin: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="mmsdk-bench-") as work:
        corpus = prepare_ids(model, threads, precisions[0] if precisions else "int8")
        ids = [2, *corpus[:prompt_tokens - 1]]  # BOS + text, the same ids for every engine
        ids_path = os.path.join(work, "ids.json")
        with open(ids_path, "w") as f:
            json.dump(ids, f)
        from ._bench_llama import tool

        # llama.cpp's own llama-bench where it is built: it times itself, outside the rounds below
        own_llama = "llama.cpp" in peers and model.endswith(".gguf") and tool("llama-bench", llama_bin) is not None
        cfgs = configs(precisions, [p for p in peers if not (own_llama and p == "llama.cpp")])
        runs: dict[str, list[dict]] = {f"{e}:{p}": [] for e, p in cfgs}
        cold_load: dict[str, dict] = {}
        steps = rounds * len(cfgs) + (len(precisions) if cold else 0)
        done = 0
        if cold:  # first load of each precision: an empty cache folder, so the weight cache is built
            for p in precisions:
                with tempfile.TemporaryDirectory(prefix="mmsdk-cold-") as empty:
                    r = run_worker({"engine": "mmsdk", "model": model, "threads": threads, "precision": p,
                                    "ids": ids_path, "gen_tokens": 1}, env={"MMSDK_CACHE": empty})
                cold_load[f"mmsdk:{p}"] = r
                done += 1
                progress and progress(done, steps)
        else:  # make sure each precision's cache exists before timing cached loads
            for p in precisions:
                run_worker({"engine": "mmsdk", "model": model, "threads": threads, "precision": p,
                            "ids": ids_path, "gen_tokens": 1})
        for rnd in range(rounds):
            order = cfgs[rnd % len(cfgs):] + cfgs[:rnd % len(cfgs)]  # rotate: no engine always goes first
            for engine, prec in order:
                r = run_worker({"engine": engine, "model": model, "threads": threads, "precision": prec,
                                "ids": ids_path, "gen_tokens": gen_tokens})
                if "error" in r:
                    log.warning("%s %s: %s", engine, prec, r["error"])
                runs[f"{engine}:{prec}"].append(r)
                done += 1
                progress and progress(done, steps)
    bandwidth = memory_bandwidth_gbs(threads)
    results = {}
    if own_llama:
        results["llama-bench:gguf"] = llama_bench_entry(model, threads, len(ids), gen_tokens, rounds, llama_bin, bandwidth)
    for name, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        entry = {"runs": len(ok), "errors": [r["error"] for r in rs if "error" in r]}
        if ok:
            entry.update({k: summarize([r[k] for r in ok]) for k in SPEED_KEYS})
            entry["bytes_per_token"] = ok[0]["bytes_per_token"]
            entry["label"] = ok[0]["label"]
            roof = bandwidth * 1e9 / ok[0]["bytes_per_token"]
            entry["roofline_tps"] = roof
            entry["roofline_share"] = entry["decode_tps"]["median"] / roof
        if name in cold_load and "error" not in cold_load[name]:
            entry["cold_load_s"] = cold_load[name]["load_s"]
        results[name] = entry
    return {"model": model, "threads": threads, "prompt_tokens": len(ids), "gen_tokens": gen_tokens,
            "rounds": rounds, "bandwidth_gbs": bandwidth, "results": results, "cpu": cpu_model(),
            "kernels": kernel_summary()}


def llama_bench_entry(model: str, threads: int, prompt_tokens: int, gen_tokens: int, rounds: int,
                      llama_bin: str | None, bandwidth: float) -> dict:
    """llama-bench's pp/tg (mean, and min-max as mean -/+ its stddev over `rounds` repetitions) and
    llama.cpp's printed load time, in the shape of the other engines' entries."""
    from ._bench_llama import llama_bench, llama_load

    r = llama_bench(model, threads, prompt_tokens, gen_tokens, max(rounds, 2), llama_bin)
    if "error" in r:
        return {"runs": 0, "errors": [r["error"]]}
    load = llama_load(model, threads, llama_bin)

    def spread(mean, sd):
        return {"median": mean, "min": mean - sd, "max": mean + sd, "n": max(rounds, 2)}

    ttft = prompt_tokens / r["prefill_tps"]
    size = os.path.getsize(model)
    entry = {"runs": max(rounds, 2), "errors": [], "label": r.get("label") or "gguf",
             "prefill_tps": spread(r["prefill_tps"], r["prefill_tps_stddev"]),
             "decode_tps": spread(r["decode_tps"], r["decode_tps_stddev"]),
             "ttft_s": spread(ttft, 0.0), "first_prompt_s": spread(ttft, 0.0),
             "load_s": spread(load.get("load_s", float("nan")), 0.0), "peak_rss_mb": spread(r["peak_rss_mb"], 0.0),
             "bytes_per_token": size, "command": r["command"], "cpu": r.get("cpu"), "build": r.get("build")}
    entry["roofline_tps"] = bandwidth * 1e9 / size
    entry["roofline_share"] = r["decode_tps"] / entry["roofline_tps"]
    return entry


def cpu_model() -> str:
    """The CPU's model name, with its family and model numbers (a VM may name it only "AMD EPYC")."""
    try:
        with open("/proc/cpuinfo") as f:
            info = {}
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
        return f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"
    except OSError:
        import platform

        return platform.processor() or "unknown CPU"


def bench_quality(model: str, *, threads: int, tokens: int, precisions: list[str], progress=None) -> dict:
    """Perplexity on the CPython docs text and top-1 agreement with the float model."""
    import math

    with tempfile.TemporaryDirectory(prefix="mmsdk-bench-") as work:
        ids = prepare_ids(model, threads, precisions[0])[:tokens]
        ids_path = os.path.join(work, "ids.json")
        with open(ids_path, "w") as f:
            json.dump(ids, f)
        out = {}
        for i, p in enumerate(precisions):
            out[p] = run_worker({"engine": "mmsdk", "task": "quality", "model": model, "threads": threads,
                                 "precision": p, "ids": ids_path})
            progress and progress(i + 1, len(precisions))
    base = out.get("float")
    res = {}
    for p, r in out.items():
        if "error" in r:
            res[p] = {"error": r["error"]}
            continue
        entry = {"perplexity": math.exp(r["nll"] / r["tokens"]), "tokens": r["tokens"], "label": r["label"]}
        if base and "error" not in base:
            agree = sum(a == b for a, b in zip(r["top1"], base["top1"]))
            entry["top1_agreement"] = agree / len(base["top1"])
            entry["ppl_vs_float"] = entry["perplexity"] / math.exp(base["nll"] / base["tokens"]) - 1
        res[p] = entry
    return {"model": model, "corpus": "pydoc_data.topics", "tokens": len(ids), "results": res}


def kernel_summary() -> str:
    """Which kernels the quantized layers run on this CPU (as `native` chose them, once)."""
    import torch

    from mmsdk.decoder import native

    cap = torch.backends.cpu.get_cpu_capability()
    name = native.kernel_name()
    if name != "torch":
        return f"mmsdk C kernels ({name}: int8 GEMV/GEMM, int4 x 8-bit-input GEMV/GEMM, fused Gemma 3 layers); torch {cap}"
    return (f"torch fallbacks (CPU capability {cap}): int8 layers fbgemm/oneDNN dynamic int8, "
            "int4 layers torch's _weight_int4pack_mm_for_cpu in bfloat16")
