"""The quality cost of each 4-bit layout and of a 4-bit tied embedding / LM head, on the bundled Gemma 3 270M.

    python tests/eval/eval_int4_layouts.py [--tokens 4096] [--variants all4-pairs,all4-kquant,...]

The bundled Q4_K_M file is dequantized to float32 (the reference), then each variant is rounded
to nearest from it (no GPTQ) and scored on the same text as `eval_perplexity.py` (the CPython
topics), in windows of 512 advancing by 256. Prints per variant: perplexity, its rise over the
float model's, top-1 agreement with the float model's predictions, and the bytes of the layers
and the head. A variant is `<mix>-<layout>[-head4]`: mix "all4" (every layer 4-bit), "float" (the
layers float: the head's cost alone) or "mix"
(llama.cpp's Q4_K_M: q/k/v and some down_proj at 8 bits, `quant_plan.int4_bits`), layout
"pairs" (bfloat16 scale + zero per 32, 5 bits), "symmetric" (Q4_0, 4.5 bits), "kquant"
(Q4_K, 4.625 bits as held), "-head4": the tied head in the same 4-bit layout (else int8), "-torch":
the kquant layers rounded by torch's reference (`quantize_int4_kquant`) instead of the C rounding
(`quantize_q4.h`) the loaders run where the kernels build: the two should score alike.
"""
import argparse
import copy
import math
import time

import torch

ALL = ("all4-pairs,all4-symmetric,all4-kquant,mix-pairs,mix-kquant,all4-kquant-head4,all4-symmetric-head4,"
       "all4-pairs-head4")


def held_bytes(model) -> tuple[int, int]:
    """(bytes of the quantized layers' buffers, bytes of the embedding's) as held in memory."""
    from mmsdk.decoder.quantize import Int4Embedding, Int8Embedding

    layers = head = 0
    for mod in model.modules():
        if isinstance(mod, (Int4Embedding, Int8Embedding)):
            head += sum(b.numel() * b.element_size() for b in mod.buffers())
        elif hasattr(mod, "weight") and mod.weight.dtype in (torch.uint8, torch.int8):
            layers += sum(b.numel() * b.element_size() for b in mod.buffers(recurse=False))
    return layers, head


def round_with_torch(model, float_model) -> None:
    """Every kquant `Int4Linear` layer of `model` (not the embedding) refilled from its float weight
    by torch's reference rounding."""
    from mmsdk.decoder.quantize import Int4Embedding, Int4Linear, quantize_int4_kquant

    for name, mod in model.named_modules():
        if isinstance(mod, Int4Linear) and not isinstance(mod, Int4Embedding) and mod.layout == "kquant":
            ref = Int4Linear.from_kquant(*quantize_int4_kquant(float_model.get_submodule(name).weight))
            mod.load_state_dict(ref.state_dict())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=ALL)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from mmsdk._bench_run import cpu_model
    from mmsdk._bench_worker import corpus_text
    from mmsdk.bundled import bundled_gguf
    from mmsdk.decoder.loader import load_text
    from mmsdk.decoder.quant_plan import int4_bits
    from mmsdk.decoder.quantize import quantize_
    from mmsdk.scoring import score_ids

    loaded = load_text(bundled_gguf(), "float32", quantize=None)
    float_model, tok = loaded.model, loaded.tokenizer
    ids = tok.encode(corpus_text(), add_bos=False)[:a.tokens]
    n_layers = len(float_model.layers)
    print(f"CPU: {cpu_model()}, {a.threads} threads; Gemma 3 270M (bundled Q4_K_M dequantized), "
          f"{len(ids)} tokens, windows of {a.window}")
    ref = score_ids(float_model, tok.bos_id, ids, a.window)
    base = math.exp(-sum(ref.logprobs) / len(ref.logprobs))
    print(f"{'float32':24s} ppl {base:8.3f}")
    for variant in a.variants.split(","):
        mix, layout, *rest = variant.split("-")
        head = "head4" in rest
        model = copy.deepcopy(float_model)
        t = time.perf_counter()
        plan = {"mix": lambda name, m: int4_bits(name, n_layers), "float": lambda name, m: None}.get(mix, 4)
        quantize_(model, plan, 32, embedding_bits=4 if head else 8, layout=layout)
        if "torch" in rest:
            round_with_torch(model, float_model)
        made = time.perf_counter() - t
        s = score_ids(model, tok.bos_id, ids, a.window)
        ppl = math.exp(-sum(s.logprobs) / len(s.logprobs))
        agree = sum(p == q for p, q in zip(s.predicted, ref.predicted)) / len(ref.predicted)
        layers, headb = held_bytes(model)
        print(f"{variant:24s} ppl {ppl:8.3f} ({100 * (ppl / base - 1):+.2f}%)  top-1 agreement {100 * agree:.2f}%  "
              f"layers {layers / 2**20:.1f} MB, head {headb / 2**20:.1f} MB  (rounded in {made:.0f} s)", flush=True)
        del model


if __name__ == "__main__":
    main()
