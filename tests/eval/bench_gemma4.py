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
the same host load; medians (`bench_gemma3n.decode_side_by_side`, shared with the Gemma 3n bench).
`--compare` adds rounds of the reference `gemma4.Block` (the fused layer step, `gemma4_fast.FastBlock`,
is what a load runs). Memory as `bench_gemma3n.py` reports it
(/proc/self/status: peak VmHWM, anonymous and file-backed resident pages; the weight cache and the
per-layer table are mapped, their touched pages count as file RSS).
`--prefill N` adds rounds of an N-token prompt beside llama-bench's ppN.
Target (issue 22): decode >= 1.0x llama.cpp's; peak RSS <= 2 GB with offload="ple" at 4 bits.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gemma3n import decode_side_by_side, load_reported, memory, profile  # noqa: E402


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
    variants = {"ours (fused step)": None}
    if a.compare:
        from mmsdk.decoder.gemma4 import Block
        from mmsdk.decoder.gemma4_fast import FastBlock
        variants = {"ours (fused step)": FastBlock, "ours (reference Block)": Block}

    def prefill_round(rates, line):
        from mmsdk._bench_llama import llama_bench

        rates.setdefault(f"ours prefill {a.prefill}", []).append(prefill(asst.model, a.prefill))
        line.append(f"ours prefill {rates[f'ours prefill {a.prefill}'][-1]:.1f}")
        if a.gguf:
            rates.setdefault(f"llama-bench pp{a.prefill}", []).append(
                llama_bench(a.gguf, a.threads, a.prefill, 0, 1)["prefill_tps"])
            line.append(f"llama-bench pp{a.prefill} {rates[f'llama-bench pp{a.prefill}'][-1]:.1f}")

    decode_side_by_side(asst, variants, a.rounds, a.gguf, a.threads, prefill_round if a.prefill else None)
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
