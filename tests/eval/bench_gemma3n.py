"""Gemma 3n through the public API at real size: load time, decode speed and whole-process memory.

    python tests/eval/make_real_size_gemma3n.py /work/realsize        # the E2B/E4B folders
    python tests/eval/bench_gemma3n.py /work/realsize/gemma-3n-E2B-it [--quantize int4] [--offload ple] [--profile]
        [--compare] [--rounds 3] [--gguf FILE]
    # llama.cpp's converter (bounded memory, see the script) and quantizer on the same folder, for --gguf
    python tests/eval/convert_gemma3n_gguf.py /work/realsize/gemma-3n-E2B-it /work/realsize/gguf3n/gemma-3n-E2B-q8_0.gguf
    $LLAMA/build/bin/llama-quantize --allow-requantize gemma-3n-E2B-q8_0.gguf gemma-3n-E2B-Q4_K_M.gguf Q4_K_M

Run it twice: the first load quantizes and writes the weight cache, the second is a cached load.
Decode tok/s is over 16 tokens after the first (greedy, the prompt's time taken out), medians of
3 rounds. `--compare` alternates rounds of the fused layer step (`gemma3n_fast.FastBlock`, what a load
runs) and the reference `Block` on the same loaded weights, medians of each. `--gguf` alternates
`llama-bench -p 0 -n 16 -r 1` on that file with our rounds and prints the ratio (`decode_side_by_side`,
which bench_gemma4.py runs too). Memory is /proc/self/status's: peak (VmHWM), anonymous and file-backed resident pages
(the weight cache and the per-layer table are mapped: their touched pages count as file RSS).
Target (issue 16): E2B decode >= 1.0x llama.cpp's on the same weights; peak RSS <= 2 GB with
offload="ple" at 4 bits.
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


def load_reported(a):
    """`mmsdk.load` of a.folder as the bench asks, printing the CPU, the kernels, the load time (with and
    without the imports) and the memory after the imports and after the load."""
    t0 = time.perf_counter()
    import mmsdk
    from mmsdk._bench_run import cpu_model, kernel_summary

    print(f"CPU: {cpu_model()}, {a.threads} threads; kernels: {kernel_summary()}")
    print(f"after the imports: {memory()} MB")
    t1 = time.perf_counter()
    asst = mmsdk.load(a.folder, quantize=a.quantize, offload=a.offload, threads=a.threads)
    print(f"load {time.perf_counter() - t1:.1f} s ({time.perf_counter() - t0:.1f} s with the imports): {memory()} MB")
    return asst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--gguf", help="the same weights as llama.cpp's GGUF (llama-bench alternates with ours)")
    ap.add_argument("--quantize", default="int4")
    ap.add_argument("--offload", default="ple")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also time a decoded token's parts by module kind")
    ap.add_argument("--compare", action="store_true", help="alternate the fused layer step and the reference Block")
    a = ap.parse_args()
    asst = load_reported(a)
    variants = {"fused": None}
    if a.compare:
        from mmsdk.decoder.gemma3n import Block
        from mmsdk.decoder.gemma3n_fast import FastBlock
        variants = {"fused step": FastBlock, "reference Block": Block}
    decode_side_by_side(asst, variants, a.rounds, a.gguf, a.threads)
    print(f"after decoding: {memory()} MB")
    if a.profile:
        gemv_bandwidth(asst.model)
        for name, cls in variants.items():
            if cls is not None:
                print(f"-- {name}")
                for layer in asst.model.layers:
                    layer.__class__ = cls
            profile(asst.model)


def decode_side_by_side(asst, variants: dict, rounds: int, gguf: str | None, threads: int, extra=None) -> dict:
    """`rounds` rounds, each: 16 tokens decoded after the first (greedy, through `Assistant.generate`, the
    prompt's time taken out) with each of `variants` (name: the layer class swapped in, None: as loaded),
    then llama-bench's tg16 (`-p 0 -n 16 -r 1`) on `gguf`: alternating, so both see the same host load.
    `extra(rates, line)` adds other measures to a round. Prints each round, the medians, ours (the first
    variant) / llama-bench and llama-bench's peak RSS (its process's, as `/usr/bin/time -v` reports it)."""
    from mmsdk._bench_llama import llama_bench

    prompt = "The history of the city"
    asst.generate(prompt, max_tokens=4, temperature=0)
    rates = {name: [] for name in (*variants, *(["llama-bench"] if gguf else []))}
    peer_rss = []
    for r in range(rounds):
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
        if gguf:
            peer = llama_bench(gguf, threads, 0, 16, 1)
            if "error" in peer:
                raise SystemExit(f"llama-bench on {gguf}: {peer['error']}")
            rates["llama-bench"].append(peer["decode_tps"])
            peer_rss.append(peer["peak_rss_mb"])
            line.append(f"llama-bench tg16 {peer['decode_tps']:.2f}")
        if extra:
            extra(rates, line)
        print(f"round {r + 1}: " + ", ".join(line) + " tok/s", flush=True)
    for name, v in rates.items():
        kind = "decode " if name in variants or name == "llama-bench" else ""  # `extra` names its own
        print(f"{kind}{name}: {statistics.median(v):.2f} tok/s (min {min(v):.2f}, max {max(v):.2f})")
    if gguf:
        ratio = statistics.median(rates[next(iter(variants))]) / statistics.median(rates["llama-bench"])
        print(f"ours / llama-bench: {ratio:.2f}x; llama-bench peak RSS {max(peer_rss):.0f} MB")
    return rates


def gemv_bandwidth(model, calls: int = 20):
    """The 4-bit products of one decoded row on E2B's shapes: ms a call (median) and the bytes they
    stream (codes + group numbers) per second."""
    import torch

    layer = model.layers[0]
    mods = {"q_proj": layer.attn.q_proj, "gate_proj": layer.mlp.gate_proj, "down_proj": layer.mlp.down_proj,
            "LM head": model.embed}
    with torch.inference_mode():
        for name, mod in mods.items():
            x = torch.randn(1, 1, mod.in_features if hasattr(mod, "in_features") else mod.embedding_dim)
            run = mod.as_linear if name == "LM head" else mod
            run(x)
            times = []
            for _ in range(calls):
                t = time.perf_counter()
                run(x)
                times.append(time.perf_counter() - t)
            nbytes = sum(b.numel() * b.element_size() for b in mod.buffers())
            shape = tuple(mod.weight.shape)
            ms = statistics.median(times) * 1e3
            print(f"  4-bit GEMV {name:9s} {str(shape):16s} {ms:7.2f} ms  {nbytes / ms / 1e6:5.1f} GB/s")


def profile(model, steps: int = 8):
    """Seconds per decoded token in each kind of module (forward hooks, outermost call counted; the
    hooks' own cost, ~2 us a call, lands in the parents' and 'other' times)."""
    import collections

    import torch

    from mmsdk.decoder.kv_cache import make_cache

    spent, depth, starts = collections.Counter(), [0], {}
    kinds = {}
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        if name.endswith(("altup", "laurel", "attn", "mlp")) or kind in ("Int4Linear", "Int8Linear", "Linear",
                                                                        "RMSNorm", "Int4Embedding", "Int8Embedding"):
            kinds[mod] = kind if kind.startswith(("Int", "Linear", "RMS")) else name.rsplit(".", 1)[-1]

    def pre(mod, args):
        starts[mod] = time.perf_counter()

    def post(mod, args, out):
        spent[kinds[mod]] += time.perf_counter() - starts.pop(mod)

    hooks = [m.register_forward_pre_hook(pre) for m in kinds] + [m.register_forward_hook(post) for m in kinds]
    caches = make_cache(model.config)
    with torch.inference_mode():
        model(torch.tensor([[2, 651, 3925]]), caches, torch.arange(3))
        spent.clear()
        t = time.perf_counter()
        for i in range(steps):
            h = model(torch.tensor([[1000 + i]]), caches, torch.tensor([3 + i]))
            t1 = time.perf_counter()
            model.logits(h)
            spent["LM head"] += time.perf_counter() - t1
        total = (time.perf_counter() - t) / steps
    for h in hooks:
        h.remove()
    print(f"a decoded token: {1e3 * total:.1f} ms (hooked); per kind, nested kinds inside their parents' times:")
    for kind, s in spent.most_common():
        print(f"  {kind:14s} {1e3 * s / steps:7.2f} ms")


if __name__ == "__main__":
    main()
