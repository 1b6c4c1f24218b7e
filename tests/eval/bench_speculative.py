"""Decode speed with prompt-lookup drafting against plain greedy decoding and llama.cpp's tg128.

The task quotes its context, as answers and summaries over documents do: each prompt asks the
model to repeat a section of the CPython reference shipped with Python (`pydoc_data`). Plain and
speculative decoding alternate in one process, every round, so machine noise hits both alike;
medians are reported, with the acceptance rate (accepted drafts / drafted) and tokens per pass,
and whether the greedy ids are identical (they must be). llama.cpp's `llama-bench -t T -n 128 -p 0`
on the same GGUF runs in the same script, before and after.

    python tests/eval/bench_speculative.py [--model GGUF] [--tokens 128] [--rounds 5] [--sections 6] [--threads 2]
        [--llama-bench PATH] [--rows]

Decode tok/s counts tokens after the first (the first comes with the prompt), over the time after it.
`--rows` also times one forward pass of T = 1..9 rows at the prompt's context: with random weights,
where drafts say nothing about speed, the cost of checking k drafts is `pass(k+1) / pass(1)` per
pass, and divided by (accepted + 1) per token.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import torch

NATIVE_LLAMA_BENCH = Path.home() / ".cache/llama-cpp-tools/native/src/vendor/llama.cpp/build/bin/llama-bench"
SECTIONS = ("global", "assert", "del", "break", "pass", "nonlocal")


def cpu_model() -> str:
    """The model name and the vector extensions that pick kernels."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown CPU")
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    have = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name} ({', '.join(have) or 'no AVX2'})"


def llama_bench(exe: str | None, gguf: str, threads: int, reps: int) -> float | None:
    """tg128 tok/s from llama.cpp's own llama-bench (mean of `reps` runs), or None where it is not found."""
    exe = exe or os.environ.get("LLAMA_BENCH") or (str(NATIVE_LLAMA_BENCH) if NATIVE_LLAMA_BENCH.exists()
                                                   else shutil.which("llama-bench"))
    if not exe:
        return None
    out = subprocess.run([exe, "-m", gguf, "-t", str(threads), "-n", "128", "-p", "0", "-r", str(reps), "-o", "json"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    return float(json.loads(out)[0]["avg_ts"])


def prompts(tok, limit: int) -> list[list[int]]:
    import pydoc_data.topics

    from mmsdk import chat_format

    out = []
    for name in SECTIONS:
        text = tok.decode(tok.encode(pydoc_data.topics.topics[name], add_bos=False)[:limit])
        prompt, _, _ = chat_format.render_messages(
            [{"role": "user", "content": f"Repeat the following text exactly, word for word:\n\n{text}"}])
        out.append(chat_format.encode(tok, prompt))  # the chat parts: control tokens by id, text as text
    return out


def decode(model, ids, n: int, draft) -> tuple[list[int], float, dict]:
    """Greedy ids, decode tok/s after the first token, and the drafting counts."""
    from mmsdk.decoder.generate import generate_step
    from mmsdk.decoder.kv_cache import make_cache
    from mmsdk.decoder.sampling import make_sampler
    from mmsdk.decoder.speculative import make_drafter, speculative_step

    stats: dict = {}
    caches, sampler = make_cache(model.config), make_sampler()
    steps = (generate_step(model, ids, caches, sampler) if draft is None else
             speculative_step(model, ids, caches, sampler, make_drafter(draft, model), max_tokens=n, stats=stats))
    out = [next(steps)]
    t0 = time.perf_counter()
    out += [next(steps) for _ in range(n - 1)]
    rate = (n - 1) / (time.perf_counter() - t0)
    steps.close()
    return out, rate, stats


def pass_cost(model, ids, rounds: int) -> dict[int, float]:
    """Median ms of one forward pass (and its logits) of T rows after the prompt, T = 1..9."""
    from mmsdk.decoder.generate import prefill
    from mmsdk.decoder.kv_cache import make_cache

    caches = make_cache(model.config)
    prefill(model, ids, caches, 0)
    times: dict[int, list[float]] = {T: [] for T in range(1, 10)}
    with torch.inference_mode():
        for _ in range(rounds):
            for T in times:
                saved = [c.checkpoint(T) for c in caches]
                t0 = time.perf_counter()
                model.logits(model(torch.tensor([ids[-T:]]), caches, torch.arange(len(ids), len(ids) + T)))
                times[T].append(time.perf_counter() - t0)
                for c, s in zip(caches, saved):
                    c.rewind(s, len(ids))
    return {T: 1e3 * statistics.median(v) for T, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="a GGUF file (default: the bundled Gemma 3 270M)")
    ap.add_argument("--tokens", type=int, default=128, help="tokens decoded per reply")
    ap.add_argument("--rounds", type=int, default=5, help="rounds over the prompts, plain and speculative alternating")
    ap.add_argument("--sections", type=int, default=len(SECTIONS), help="quoted sections (prompts), at most 6")
    ap.add_argument("--context", type=int, default=400, help="tokens of each quoted section (at most)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-bench", default=None, help="llama.cpp's llama-bench (default: the native build, PATH)")
    ap.add_argument("--llama-reps", type=int, default=5, help="llama-bench repetitions (-r) per run")
    ap.add_argument("--rows", action="store_true", help="also time passes of 1..9 rows")
    a = ap.parse_args()

    import mmsdk
    from mmsdk.bundled import bundled_gguf
    from mmsdk.decoder import native

    gguf = a.model or str(bundled_gguf())
    print(f"CPU: {cpu_model()}, {a.threads} threads; our C kernels: {'yes' if native.available() else 'no (torch)'}")
    print(f"model: {gguf}")
    peer = [llama_bench(a.llama_bench, gguf, a.threads, a.llama_reps)]
    torch.set_num_threads(a.threads)
    asst = mmsdk.load(gguf, threads=a.threads)
    tasks = prompts(asst.tokenizer, a.context)[:a.sections]
    decode(asst.model, tasks[0], 8, None)  # warm up both paths
    decode(asst.model, tasks[0], 8, "lookup")
    rates = {"plain": [], "lookup": []}
    same, drafted, accepted, passes = True, 0, 0, 0
    for r in range(a.rounds):
        for i, ids in enumerate(tasks):
            order = ("plain", "lookup") if (r + i) % 2 == 0 else ("lookup", "plain")
            got = {}
            for name in order:
                got[name], rate, stats = decode(asst.model, ids, a.tokens, None if name == "plain" else "lookup")
                rates[name].append(rate)
                if stats:
                    drafted, accepted, passes = (drafted + stats["drafted"], accepted + stats["accepted"],
                                                 passes + stats["passes"])
            same &= got["plain"] == got["lookup"]
    peer.append(llama_bench(a.llama_bench, gguf, a.threads, a.llama_reps))
    plain, lookup = statistics.median(rates["plain"]), statistics.median(rates["lookup"])
    print(f"quoting task: {len(tasks)} sections x {a.rounds} rounds, {a.tokens} tokens each, prompts "
          f"{min(map(len, tasks))}-{max(map(len, tasks))} tokens")
    print(f"decode plain:         {plain:7.1f} tok/s (median)")
    print(f"decode prompt lookup: {lookup:7.1f} tok/s (median), {lookup / plain:.2f}x plain")
    print(f"acceptance {accepted / max(drafted, 1):.2f} ({accepted}/{drafted} drafts), "
          f"{(accepted + passes) / max(passes, 1):.2f} tokens per pass")
    print(f"greedy ids identical to plain decoding: {same}")
    if peer[0] is not None:
        tg = statistics.median(peer)
        print(f"llama-bench tg128 -t {a.threads}: {tg:.1f} tok/s (runs {', '.join(f'{p:.1f}' for p in peer)}); "
              f"prompt lookup {lookup / tg:.2f}x, plain {plain / tg:.2f}x")
    else:
        print("llama-bench not found (--llama-bench PATH or $LLAMA_BENCH): no peer figure")
    if a.rows:
        cost = pass_cost(asst.model, tasks[0], max(3, a.rounds))
        print("one pass of T rows at context", len(tasks[0]), ":",
              ", ".join(f"T={T} {ms:.1f} ms ({ms / cost[1]:.2f}x)" for T, ms in cost.items()))


if __name__ == "__main__":
    main()
