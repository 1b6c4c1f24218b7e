"""One `mmsdk bench` measurement, run in its own process: `python -m mmsdk._bench_worker SPEC_JSON`.

SPEC: {"engine": "mmsdk" | "llama.cpp" | "transformers", "model": path, "threads": n,
"precision": "float" | "int8" | "int4" | "stored" | "bfloat16", "task": "speed" | "quality" | "tokens",
"ids": path of a JSON file of prompt ids, "gen_tokens": n, "cold": bool}. Prints one JSON line.
Peak RSS is this process's, so every engine is measured alone.
"""
import json
import os
import resource
import sys
import time

QUALITY_WINDOW = 512  # `score` windows: BOS + 511 tokens, advancing by 256 (each token sees 255+ before it)


def corpus_text() -> str:
    """English prose nobody here wrote: the CPython documentation topics shipped with Python."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def peak_rss_mb(children: bool = False) -> float:
    """This process's peak RSS (or, `children`, the largest of its waited-for children's), in MB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def _mmsdk_load(spec):
    import torch

    from mmsdk.decoder.loader import load_text

    prec = spec["precision"]
    dtype = {"float": "float32", "bfloat16": "bfloat16"}.get(prec)
    quantize = prec if prec in ("int8", "int4", "stored") else None
    t = time.perf_counter()
    loaded = load_text(spec["model"], dtype, quantize=quantize, threads=spec["threads"])
    loaded.tokenizer.encode("warm")  # the tokenizer is part of being ready
    load_s = time.perf_counter() - t
    torch.set_num_threads(spec["threads"])
    return loaded, load_s


def _weight_bytes(model) -> int:
    """Bytes one decoded token reads: every tensor once (the tied embedding once, as the LM head)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def mmsdk_speed(spec, ids, gen):
    import torch

    from mmsdk.decoder.generate import generate_step, prefill
    from mmsdk.decoder.kv_cache import make_cache
    from mmsdk.decoder.sampling import make_sampler

    loaded, load_s = _mmsdk_load(spec)
    model = loaded.model
    with torch.inference_mode():
        model.logits(prefill(model, ids[:16], make_cache(model.config), 0))  # a short warm-up, head included
        t = time.perf_counter()  # the first whole prompt: memory not yet held, pages not yet mapped
        model.logits(prefill(model, ids, make_cache(model.config), 0))
        first_s = time.perf_counter() - t
    # The library's own greedy decoding loop: the first token is the prompt's prefill, each next one a step
    steps = generate_step(model, ids, make_cache(model.config), make_sampler())
    t0 = time.perf_counter()
    next(steps)
    t1 = time.perf_counter()
    for _ in range(gen):
        next(steps)
    t2 = time.perf_counter()
    steps.close()
    return {"load_s": load_s, "first_prompt_s": first_s, "ttft_s": t1 - t0, "prefill_tps": len(ids) / (t1 - t0),
            "decode_tps": gen / (t2 - t1),
            "bytes_per_token": _weight_bytes(model), "label": loaded.quantization}


def llama_speed(spec, ids, gen):
    from llama_cpp import Llama

    t = time.perf_counter()
    llm = Llama(model_path=spec["model"], n_threads=spec["threads"], n_threads_batch=spec["threads"],
                n_ctx=len(ids) + gen + 16, n_batch=512, n_ubatch=512, verbose=False)
    load_s = time.perf_counter() - t
    llm.eval(ids[:16])  # warm-up, as for the others
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    first_s = time.perf_counter() - t
    llm.reset()
    it = llm.generate(ids, top_k=1, temp=0.0, reset=True)
    t0 = time.perf_counter()
    next(it)
    t1 = time.perf_counter()
    for _ in range(gen):
        next(it)
    t2 = time.perf_counter()
    size = os.path.getsize(spec["model"])
    return {"load_s": load_s, "first_prompt_s": first_s, "ttft_s": t1 - t0, "prefill_tps": len(ids) / (t1 - t0),
            "decode_tps": gen / (t2 - t1),
            "bytes_per_token": size, "label": "gguf"}


def transformers_speed(spec, ids, gen):
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(spec["threads"])
    dtype = torch.bfloat16 if spec["precision"] == "bfloat16" else torch.float32
    folder, name = os.path.split(os.path.abspath(spec["model"]))
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype).eval()
    load_s = time.perf_counter() - t
    with torch.inference_mode():
        model(torch.tensor([ids[:16]]))
        t = time.perf_counter()
        model(torch.tensor([ids]), logits_to_keep=1)
        first_s = time.perf_counter() - t
        cache = DynamicCache(config=model.config)
        t0 = time.perf_counter()
        out = model(torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        tok = int(out.logits[0, -1].argmax())
        t1 = time.perf_counter()
        for _ in range(gen):
            out = model(torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
            tok = int(out.logits[0, -1].argmax())
        t2 = time.perf_counter()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"load_s": load_s, "first_prompt_s": first_s, "ttft_s": t1 - t0, "prefill_tps": len(ids) / (t1 - t0),
            "decode_tps": gen / (t2 - t1),
            "bytes_per_token": nbytes, "label": str(dtype).replace("torch.", "")}


def mmsdk_quality(spec, ids):
    """Negative log-likelihood and top-1 predictions of the corpus ids under `Assistant.score`."""
    from mmsdk.assistant import Assistant

    loaded, _ = _mmsdk_load(spec)
    s = Assistant(loaded, path=spec["model"]).score(ids, window=QUALITY_WINDOW)
    return {"nll": -sum(s.logprobs), "tokens": len(s.logprobs), "top1": s.predicted, "label": loaded.quantization}


def mmsdk_tokens(spec):
    """Token ids of the corpus, shared by every engine so all see the same sequence."""
    loaded, _ = _mmsdk_load(spec)
    return {"ids": loaded.tokenizer.encode(corpus_text(), add_bos=False)}


def main(argv=None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    task = spec.get("task", "speed")
    ids = json.load(open(spec["ids"])) if spec.get("ids") else None
    if task == "tokens":
        out = mmsdk_tokens(spec)
    elif task == "quality":
        out = mmsdk_quality(spec, ids)
    else:
        fn = {"mmsdk": mmsdk_speed, "llama.cpp": llama_speed, "transformers": transformers_speed}[spec["engine"]]
        out = fn(spec, ids, spec["gen_tokens"])
    out["peak_rss_mb"] = peak_rss_mb()
    print("BENCH_RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
