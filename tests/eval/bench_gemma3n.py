"""Gemma 3n through the public API at real size: load time, decode speed and whole-process memory.

    python tests/eval/make_real_size_gemma3n.py /work/realsize        # the E2B/E4B folders
    python tests/eval/bench_gemma3n.py /work/realsize/gemma-3n-E2B-it [--quantize int4] [--offload ple]

Run it twice: the first load quantizes and writes the weight cache, the second is a cached load.
Decode tok/s is over 16 tokens after the first (greedy, the prompt's time taken out), medians of
3 rounds. Memory is /proc/self/status's: peak (VmHWM), anonymous and file-backed resident pages
(the weight cache and the per-layer table are mapped: their touched pages count as file RSS).
Target (issue 16): E2B peak RSS <= 2 GB with offload="ple" at 4 bits.
"""
import argparse
import statistics
import time


def memory() -> dict:
    keys = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
    out = {}
    for line in open("/proc/self/status"):
        k = line.split(":")[0]
        if k in keys:
            out[k] = int(line.split()[1]) // 1024
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--quantize", default="int4")
    ap.add_argument("--offload", default="ple")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    t0 = time.perf_counter()
    import mmsdk
    from mmsdk._bench_run import cpu_model, kernel_summary

    print(f"CPU: {cpu_model()}, {a.threads} threads; kernels: {kernel_summary()}")
    print(f"after the imports: {memory()} MB")
    t1 = time.perf_counter()
    asst = mmsdk.load(a.folder, quantize=a.quantize, offload=a.offload, threads=a.threads)
    print(f"load {time.perf_counter() - t1:.1f} s ({time.perf_counter() - t0:.1f} s with the imports): {memory()} MB")
    prompt = "The history of the city"
    asst.generate(prompt, max_tokens=4, temperature=0)
    rates = []
    for _ in range(3):
        t = time.perf_counter()
        asst.generate(prompt, max_tokens=1, temperature=0)
        first = time.perf_counter() - t
        t = time.perf_counter()
        asst.generate(prompt, max_tokens=17, temperature=0)
        rates.append(16 / (time.perf_counter() - t - first))
    print(f"decode {statistics.median(rates):.2f} tok/s (min {min(rates):.2f}, max {max(rates):.2f}); "
          f"prompt + first token {first:.2f} s")
    print(f"after decoding: {memory()} MB")


if __name__ == "__main__":
    main()
