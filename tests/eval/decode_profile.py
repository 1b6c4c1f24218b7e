"""Where a decoded token's time goes, and a prompt's.

A decoded token, by ablation: the step timed as it is (one C call a layer where `decoder/fused.py`
applies), in the Python layers, and in those with one kind of work replaced by a single cheap op
(the output is then wrong; only the time matters). A profiler would add microseconds to every one
of the ~1,000 small ops and blur the answer. A prompt's parts take milliseconds each, so there
each part's calls are timed as they run, in the Python layers (where a layer is two C calls,
`fused.prompt`, its parts are not visible from Python).

    python tests/eval/decode_profile.py [--precision stored|int8|int4] [--rounds 12] [--prompt 512]

Variants alternate in one process so machine noise hits all alike; medians are reported.
"""
import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="stored", choices=["stored", "int8", "int4"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens for the prefill breakdown")
    a = ap.parse_args()

    from mmsdk.bundled import bundled_gguf
    from mmsdk.decoder import fused, gemma3, layers, quantize
    from mmsdk.decoder.generate import prefill
    from mmsdk.decoder.kv_cache import make_cache
    from mmsdk.decoder.loader import load_text

    model = load_text(bundled_gguf(), None, quantize=a.precision, threads=a.threads).model
    linear_kinds = (quantize.Int8Linear, quantize.Int4Linear, torch.nn.Linear)
    zeros = {}

    def no_linear(self, x):  # a preallocated output of the right shape
        key = (tuple(x.shape[:-1]), self.out_features)
        return zeros.setdefault(key, torch.zeros(*key[0], self.out_features))

    real = {"normalize": gemma3.normalize, "attend": gemma3.attend, "apply_rope": gemma3.apply_rope,
            "RMSNorm": layers.RMSNorm.forward, "linear": {k: k.forward for k in linear_kinds}, "plan": fused.plan}
    python = {"plan": lambda *a: None}  # the Python layers, which the parts below are taken out of
    variants = {
        "as is": {},
        "Python layers": python,
        "norms": {**python, "normalize": lambda x, s, e: x * 1e-3, "RMSNorm": lambda self, x: x * 1e-3},
        "attention": {**python, "attend": lambda q, k, v, m, s: q},
        "RoPE": {**python, "apply_rope": lambda x, c, s: x},
        "layer matmuls": {**python, "linear": {k: no_linear for k in linear_kinds}},
    }

    def use(v):
        gemma3.normalize, gemma3.attend = v.get("normalize", real["normalize"]), v.get("attend", real["attend"])
        gemma3.apply_rope = v.get("apply_rope", real["apply_rope"])
        layers.RMSNorm.forward = v.get("RMSNorm", real["RMSNorm"])
        for k, f in v.get("linear", real["linear"]).items():
            k.forward = f
        fused.plan = v.get("plan", real["plan"])

    ids = torch.randint(0, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    caches, pos = make_cache(model.config), [16]
    body, head, prompt = {k: [] for k in variants}, [], {k: [] for k in variants}
    # every layer matmul of a step called back to back on one row: what the layers cost with no other op
    rows = [(mod, torch.randn(1, 1, mod.in_features)) for mod in model.modules() if isinstance(mod, linear_kinds)]
    floor = []
    prompt_ids = torch.randint(0, model.config.vocab_size, (a.prompt,), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        h = model(ids[:, :16], caches, torch.arange(16))[:, -1:]
        for _ in range(a.rounds):
            for name, v in variants.items():
                use(v)
                t0 = time.perf_counter()
                for _ in range(4):
                    model(ids[:, 20:21], caches, torch.tensor([pos[0]]))
                    pos[0] += 1
                body[name].append((time.perf_counter() - t0) / 4 * 1e3)
                if name in ("as is", "Python layers"):
                    t0 = time.perf_counter()
                    prefill(model, prompt_ids.tolist(), make_cache(model.config), 0)
                    prompt[name].append(time.perf_counter() - t0)
            use({})
            t0 = time.perf_counter()
            model.logits(h)
            head.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            for mod, x in rows:
                mod(x)
            floor.append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(body["as is"])
    print(f"{a.precision}, {a.threads} threads: one decode step = layers {base:.1f} ms + LM head "
          f"{statistics.median(head):.1f} ms (medians of {a.rounds})")
    py = statistics.median(body["Python layers"])
    print(f"  the same layers in Python (torch ops a layer, not one C call): {py:.1f} ms; taken out of those:")
    for name in list(variants)[2:]:
        print(f"  {name:14s} {py - statistics.median(body[name]):5.1f} ms")
    print("  (time saved by taking each part out; the savings overlap, as each part also evicts cache for the next)")
    print(f"  the {len(rows)} layer matmuls alone, back to back: {statistics.median(floor):.1f} ms")
    first, py_first = statistics.median(prompt["as is"]), statistics.median(prompt["Python layers"])
    print(f"prefill of {a.prompt} tokens: {first:.3f} s ({a.prompt / first:.0f} tok/s); "
          f"in the Python layers (the same kernels called one by one): {py_first:.3f} s")
    use(python)
    whole, parts = prompt_parts(model, prompt_ids.tolist(), a.rounds)
    use({})
    print(f"  the Python layers again with each call timed: {whole:.3f} s, of which")
    for name, t in parts.items():
        print(f"  {name:16s} {t:6.3f} s")
    print(f"  {'the rest':16s} {whole - sum(parts.values()):6.3f} s (embedding, final norm, Python between the calls)")


def prompt_parts(model, ids: list[int], rounds: int) -> tuple[float, dict[str, float]]:
    """Seconds per prompt, and in each kind of call (medians over rounds), wrapping the functions a prompt
    runs through: the C row helpers where they apply, torch's ops where they do not."""
    from mmsdk.decoder import gemma3, kv_cache, layers, native, quantize
    from mmsdk.decoder.generate import prefill
    from mmsdk.decoder.kv_cache import make_cache

    spent: dict[str, float] = {}
    kinds = {"layer matmuls": [(m, "forward") for m in (quantize.Int8Linear, quantize.Int4Linear, torch.nn.Linear)],
             "attention": [(native, "attend_rows"), (gemma3, "attend")],
             "GeGLU": [(native, "geglu"), (torch.nn.functional, "gelu")],
             "norms": [(layers.RMSNorm, "forward"), (layers.RMSNorm, "add_to")],
             "QK-norm + RoPE": [(native, "qkv_heads"), (gemma3, "normalize"), (gemma3, "apply_rope")],
             "KV-cache writes": [(kv_cache.FullCache, "update"), (kv_cache.RingCache, "update")]}
    saved, inside = [], set()

    def timed(f, name):
        def g(*args, **kw):
            if name in inside:  # a call within one of its own kind (add_to calling forward): counted once
                return f(*args, **kw)
            inside.add(name)
            t = time.perf_counter()
            try:
                return f(*args, **kw)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
                inside.discard(name)
        return g

    for name, targets in kinds.items():
        for obj, attr in targets:
            saved.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, timed(getattr(obj, attr), name))
    per_round, whole = {name: [] for name in kinds}, []
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                spent.clear()
                t0 = time.perf_counter()
                prefill(model, ids, make_cache(model.config), 0)
                whole.append(time.perf_counter() - t0)
                for name in kinds:
                    per_round[name].append(spent.get(name, 0.0))
    finally:
        for obj, attr, f in saved:
            setattr(obj, attr, f)
    return statistics.median(whole), {name: statistics.median(v) for name, v in per_round.items()}

if __name__ == "__main__":
    main()
