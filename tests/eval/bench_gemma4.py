"""Gemma 4 E2B through the public API at real size beside llama.cpp on the same weights: load time,
decode speed and whole-process memory.

    python tests/eval/make_real_size_gemma4.py /work/realsize              # the HF folder (9.3 GB)
    # llama.cpp's converter and quantizer on that folder (Q8_0 first: no 9 GB bf16 intermediate on disk)
    PYTHONPATH=$LLAMA/gguf-py python $LLAMA/convert_hf_to_gguf.py /work/realsize/gemma-4-E2B-it --outtype q8_0 \
        --outfile /work/realsize/gguf4/gemma-4-E2B-q8_0.gguf
    $LLAMA/build/bin/llama-quantize --allow-requantize gemma-4-E2B-q8_0.gguf gemma-4-E2B-Q4_K_M.gguf Q4_K_M
    python tests/eval/bench_gemma4.py /work/realsize/gemma-4-E2B-it --gguf /work/realsize/gguf4/gemma-4-E2B-Q4_K_M.gguf

Run it twice: the first load quantizes and writes the weight cache, the second is a cached load.
Each round decodes 16 tokens after the first through `Assistant.generate` (greedy; the prompt's
time taken out), then runs `llama-bench -p 0 -n 16 -r 1` on the GGUF: rounds alternate so both see
the same host load; medians. `--compare` adds rounds of the reference `gemma4.Block` (the fused layer
step, `gemma4_fast.FastBlock`, is what a load runs). Memory as `bench_gemma3n.py` reports it
(/proc/self/status: peak VmHWM, anonymous and file-backed resident pages; the weight cache and the
per-layer table are mapped, their touched pages count as file RSS).
`--prefill N` adds rounds of an N-token prompt beside llama-bench's ppN.
Target (issue 22): decode >= 1.0x llama.cpp's; peak RSS <= 2 GB with offload="ple" at 4 bits.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gemma3n import load_reported, memory, profile  # noqa: E402

LLAMA_BENCH = Path.home() / ".cache/llama-cpp-tools/native/src/vendor/llama.cpp/build/bin/llama-bench"


def llama_bench(gguf: str, threads: int, n: int, prompt: int = 0) -> tuple[float, int]:
    """llama-bench's decode tok/s (tg`n`, one repetition), or with `prompt` its prefill tok/s (pp`prompt`),
    and its peak RSS in MB."""
    cmd = ["/usr/bin/time", "-f", "%M", str(LLAMA_BENCH), "-m", gguf, "-p", str(prompt), "-n", str(0 if prompt else n),
           "-r", "1", "-t", str(threads), "-o", "json"]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
    return float(json.loads(run.stdout)[0]["avg_ts"]), int(run.stderr.strip().splitlines()[-1]) // 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--gguf", help="the same weights as llama.cpp's GGUF (llama-bench alternates with ours)")
    ap.add_argument("--quantize", default="int4")
    ap.add_argument("--offload", default="ple")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compare", action="store_true", help="also rounds of the reference Block")
    ap.add_argument("--profile", action="store_true", help="also time a decoded token's parts by module kind")
    ap.add_argument("--prefill", type=int, default=0, metavar="N",
                    help="also rounds of an N-token prompt's prefill (random ids) beside llama-bench's ppN")
    a = ap.parse_args()
    asst = load_reported(a)
    prompt = "The history of the city"
    asst.generate(prompt, max_tokens=4, temperature=0)
    variants = {"ours (fused step)": None}
    if a.compare:
        from mmsdk.decoder.gemma4 import Block
        from mmsdk.decoder.gemma4_fast import FastBlock
        variants = {"ours (fused step)": FastBlock, "ours (reference Block)": Block}
    rates = {name: [] for name in (*variants, *(["llama-bench"] if a.gguf else []))}
    if a.prefill:
        rates.update({f"ours prefill {a.prefill}": [], **({f"llama-bench pp{a.prefill}": []} if a.gguf else {})})
    peer_rss = []
    for r in range(a.rounds):
        line = []
        for name, cls in variants.items():
            if cls is not None:
                for layer in asst.model.layers:
                    layer.__class__ = cls
            t = time.perf_counter()
            asst.generate(prompt, max_tokens=1, temperature=0)
            first = time.perf_counter() - t
            t = time.perf_counter()
            asst.generate(prompt, max_tokens=17, temperature=0)
            rates[name].append(16 / (time.perf_counter() - t - first))
            line.append(f"{name} {rates[name][-1]:.2f}")
        if a.gguf:
            tg, rss = llama_bench(a.gguf, a.threads, 16)
            rates["llama-bench"].append(tg)
            peer_rss.append(rss)
            line.append(f"llama-bench tg16 {tg:.2f}")
        if a.prefill:
            rates[f"ours prefill {a.prefill}"].append(prefill(asst.model, a.prefill))
            line.append(f"ours prefill {rates[f'ours prefill {a.prefill}'][-1]:.1f}")
            if a.gguf:
                rates[f"llama-bench pp{a.prefill}"].append(llama_bench(a.gguf, a.threads, 0, a.prefill)[0])
                line.append(f"llama-bench pp{a.prefill} {rates[f'llama-bench pp{a.prefill}'][-1]:.1f}")
        print(f"round {r + 1}: " + ", ".join(line) + " tok/s", flush=True)
    for name, v in rates.items():
        print(f"decode {name}: {statistics.median(v):.2f} tok/s (min {min(v):.2f}, max {max(v):.2f})")
    if a.gguf:
        ratio = statistics.median(rates[next(iter(variants))]) / statistics.median(rates["llama-bench"])
        print(f"ours / llama-bench: {ratio:.2f}x; llama-bench peak RSS {max(peer_rss)} MB")
    print(f"after decoding: {memory()} MB")
    if a.profile:
        profile(asst.model)


def prefill(model, n: int) -> float:
    """tok/s of an n-token prompt (random ids) through the decoder and the last position's logits."""
    import torch

    from mmsdk.decoder.kv_cache import make_cache

    ids = torch.randint(1000, 200000, (1, n), generator=torch.Generator().manual_seed(n))
    with torch.inference_mode():
        t = time.perf_counter()
        model.logits(model(ids, make_cache(model.config), torch.arange(n))[:, -1:])
        return n / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
