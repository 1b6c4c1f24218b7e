"""Benchmark of per-layer parameter offload: resident memory and decode speed, each run in its own process.

    python tests/eval/bench_offload.py [--dir DIR] [--tokens 64] [--repeats 5]

1. `offload="ple"`: a Gemma 3n checkpoint with an E2B-shaped per-layer embedding table at real size
   (262144 × 30 × 256, random bfloat16, 4.03 GB) and a small decoder; decode with the table in
   memory vs memory-mapped. Targets: RSS during decode < 1/10 of the table, tok/s within 10%.
2. `offload="layers"`: a Gemma 3 checkpoint of ~2 GB (float32) decoded in memory vs streamed under
   `--max-memory` (default 1 GB). Target: RSS within budget + 25%; reports the tok/s cost.

3. `--real FOLDER` (a folder from `make_real_size_gemma3n.py`): `offload="ple"` at 4 bits on a
   real-size Gemma 3n, through `load_quantized` (what `mmsdk.load(folder, quantize=, offload=)`
   runs) and the public `Assistant`: first load (weight cache cleared), cached load, decode tok/s
   and the whole process's peak RSS (VmHWM, `import torch` included). `--text-only` leaves the
   vision and audio towers unread (in float32 they alone are ~3.9 GB on E2B).

    python tests/eval/bench_offload.py --real /work/realsize/gemma-3n-E2B-it --text-only [--quantize int4]

Speeds are medians over `--repeats` runs, in-memory and offloaded runs alternating.
RSS is sampled from /proc/self/status after every decode step. `import torch` alone is ~0.5 GB of
RSS on this build (mostly shared libraries), so the report gives the total and the part above the
process's RSS just before loading the model ("model RSS"). Decode feeds random token ids over the
whole PLE vocabulary (the worst case for the mapped table's page reuse).
"""
import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLE_TEXT = dict(model_type="gemma3n_text", vocab_size=262400, vocab_size_per_layer_input=262144,
                hidden_size_per_layer_input=256, num_hidden_layers=30, hidden_size=64, intermediate_size=256,
                num_attention_heads=2, num_key_value_heads=1, head_dim=32, laurel_rank=16, num_kv_shared_layers=10,
                sliding_window=512, final_logit_softcapping=30.0, dtype="bfloat16")
LAYERS_TEXT = dict(model_type="gemma3_text", vocab_size=4096, hidden_size=1024, intermediate_size=4096,
                   num_hidden_layers=32, num_attention_heads=8, num_key_value_heads=4, head_dim=128,
                   query_pre_attn_scalar=128, sliding_window=512, dtype="float32")


def rss() -> dict:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssFile")}


# ---- writing checkpoints without holding them in memory --------------------------------------

def write_safetensors(path: Path, specs: dict, fill) -> None:
    """specs: name -> (dtype "BF16"/"F32", shape); fill(name, file) writes the tensor's bytes."""
    sizes = {"BF16": 2, "F32": 4}
    header, offset = {}, 0
    for name, (dt, shape) in specs.items():
        n = sizes[dt]
        for s in shape:
            n *= s
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name in specs:
            fill(name, f)
    os.replace(tmp, path)


def _random_bytes(shape, dtype, f, seed, chunk_rows=4096, std=0.05):
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = shape[0]
    for r in range(0, rows, chunk_rows):
        n = min(chunk_rows, rows - r)
        t = (torch.randn((n, *shape[1:]), generator=g) * std).to(dtype)
        f.write(t.reshape(-1).view(torch.uint8).numpy().data)


def _hf_names(model, key_map) -> dict:
    native_to_hf = {v: k for k, v in key_map.items()}
    return {native_to_hf[n]: tuple(p.shape) for n, p in model.named_parameters()}


def write_ple_checkpoint(folder: Path) -> None:
    import torch

    from mmsdk.decoder.gemma3n import Gemma3nText
    from mmsdk.decoder.gemma3n_config import Gemma3nTextConfig
    from mmsdk.decoder.gemma3n_loader import key_map

    cfg = Gemma3nTextConfig.from_hf(PLE_TEXT)
    with torch.device("meta"):
        model = Gemma3nText(cfg)
    names = _hf_names(model, key_map(cfg))
    specs = {"model." + k: ("BF16", s) for k, s in names.items()}
    _write_folder(folder, PLE_TEXT, specs, torch.bfloat16)


def write_layers_checkpoint(folder: Path) -> None:
    import torch

    from mmsdk.decoder.config import TextConfig
    from mmsdk.decoder.weights import HF_TO_NATIVE, expand

    cfg = TextConfig.from_hf(LAYERS_TEXT)
    H, I, D = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    per_layer = {"input_layernorm.weight": (H,), "self_attn.q_proj.weight": (cfg.num_attention_heads * D, H),
                 "self_attn.k_proj.weight": (cfg.num_key_value_heads * D, H),
                 "self_attn.v_proj.weight": (cfg.num_key_value_heads * D, H),
                 "self_attn.o_proj.weight": (H, cfg.num_attention_heads * D), "self_attn.q_norm.weight": (D,),
                 "self_attn.k_norm.weight": (D,), "post_attention_layernorm.weight": (H,),
                 "pre_feedforward_layernorm.weight": (H,), "mlp.gate_proj.weight": (I, H), "mlp.up_proj.weight": (I, H),
                 "mlp.down_proj.weight": (H, I), "post_feedforward_layernorm.weight": (H,)}
    shapes = {"embed_tokens.weight": (cfg.vocab_size, H), "norm.weight": (H,)}
    for i in range(cfg.num_hidden_layers):
        shapes.update({f"layers.{i}.{k}": s for k, s in per_layer.items()})
    assert set(shapes) == set(expand(HF_TO_NATIVE, cfg.num_hidden_layers))
    _write_folder(folder, LAYERS_TEXT, {"model." + k: ("F32", s) for k, s in shapes.items()}, torch.float32)


def _write_folder(folder: Path, config: dict, specs: dict, dtype) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from gemma3n_fixtures import write_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    seeds = {name: i for i, name in enumerate(specs)}
    write_safetensors(folder / "model.safetensors", specs,
                      lambda name, f: _random_bytes(specs[name][1], dtype, f, seeds[name]))
    (folder / "config.json").write_text(json.dumps(config))
    write_tokenizer(folder, 512)


# ---- one measurement (child process) --------------------------------------------------------

def measure(folder: Path, offload: str | None, max_memory: int | None, dtype: str, tokens: int) -> dict:
    import torch

    from mmsdk.decoder.gemma3n_loader import load_gemma3n
    from mmsdk.decoder.kv_cache import make_cache
    from mmsdk.decoder.loader import load_text
    from mmsdk.decoder.offload import apply_offload

    torch.set_num_threads(2)
    before = rss()
    dt = getattr(torch, dtype)
    if json.loads((folder / "config.json").read_text())["model_type"].startswith("gemma3n"):
        model = load_gemma3n(folder, dtype=dt, offload=offload, max_memory=max_memory).model
    else:
        loaded = load_text(folder, dtype=dt)
        apply_offload(loaded, offload, max_memory=max_memory)
        model = loaded.model
    if offload is None:  # safetensors hands out file-backed tensors when no cast is needed: make them resident
        for prm in model.parameters():
            prm.data = prm.data.clone()
    vocab = getattr(model.config, "vocab_size_per_layer_input", model.config.vocab_size)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (tokens + 16,), generator=g)
    peak = rss()
    with torch.inference_mode():
        caches = make_cache(model.config, dtype=dt)
        model.logits(model(ids[None, :16], caches, torch.arange(16))[:, -1:])
        t0 = time.perf_counter()
        for i in range(16, 16 + tokens):
            model.logits(model(ids[None, i:i + 1], caches, torch.tensor([i])))
            now = rss()
            peak = {k: max(peak[k], now[k]) for k in peak}
        elapsed = time.perf_counter() - t0
    return {"offload": offload, "max_memory": max_memory, "tok_s": tokens / elapsed, "rss_decode_max": peak["VmRSS"],
            "rss_anon_max": peak["RssAnon"], "rss_file_max": peak["RssFile"], "rss_before_load": before["VmRSS"],
            "model_rss": peak["VmRSS"] - before["VmRSS"]}


def measure_real(folder: Path, quantize: str, offload: str | None, tokens: int, text_only: bool,
                 minmax: bool = False) -> dict:
    """One load and decode of a real-size Gemma 3n through the streamed quantized loader."""
    import torch

    if minmax:  # one clip candidate (plain min-max) instead of 49: only to reach the cached load sooner
        from mmsdk.decoder import quantize as q

        q._CLIP_GRID = (1.0,)

    from mmsdk.assistant import Assistant
    from mmsdk.decoder import weight_cache
    from mmsdk.decoder.gemma3n_loader import load_quantized
    from mmsdk.decoder.kv_cache import make_cache

    torch.set_num_threads(2)
    before = rss()
    cached = any(weight_cache.cache_dir("weights").glob(f"{folder.name}-*.safetensors"))
    t0 = time.perf_counter()
    loaded = load_quantized(folder, quantize, offload=offload, encoders=not text_only)
    asst = Assistant(loaded, path=str(folder))
    load_s = time.perf_counter() - t0
    after_load = rss()
    model = asst.model
    ids = torch.randint(0, model.config.vocab_size_per_layer_input, (tokens + 16,),
                        generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        caches = make_cache(model.config)
        model.logits(model(ids[None, :16], caches, torch.arange(16))[:, -1:])
        times = []
        for i in range(16, 16 + tokens):
            t = time.perf_counter()
            model.logits(model(ids[None, i:i + 1], caches, torch.tensor([i])))
            times.append(time.perf_counter() - t)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {"folder": str(folder), "quantize": quantize, "offload": offload, "text_only": text_only,
            "cache_hit": cached, "load_s": round(load_s, 1), "rss_after_load": after_load["VmRSS"],
            "tok_s": round(1 / statistics.median(times), 2), "rss_before_load": before["VmRSS"],
            "peak_rss_vmhwm": int(status["VmHWM"].split()[0]) * 1024,
            "threads": torch.get_num_threads(), "rounding": "min-max" if minmax else "clip search"}


def run_real(folder: Path, quantize: str, offloads, tokens: int, text_only: bool, minmax: bool = False) -> list:
    """First (cache cleared) and cached loads, each in its own process."""
    from mmsdk.decoder import weight_cache

    out = []
    for off in offloads:
        for f in weight_cache.cache_dir("weights").glob(f"{folder.name}-*.safetensors"):
            f.unlink()
        for _ in range(2):
            cmd = [sys.executable, __file__, "--real", str(folder), "--child", "real", "--offload", str(off),
                   "--quantize", quantize, "--tokens", str(tokens)] + (["--text-only"] if text_only else []) + (
                ["--minmax"] if minmax else [])
            res = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONWARNINGS": "ignore"})
            out.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(out[-1]), flush=True)
    if minmax:  # not the weights a normal load rounds: never leave them for one to find
        for f in weight_cache.cache_dir("weights").glob(f"{folder.name}-*.safetensors"):
            f.unlink()
    return out


def run_child(folder, offload, max_memory, dtype, tokens) -> dict:
    cmd = [sys.executable, __file__, "--child", str(folder), "--offload", str(offload), "--dtype", dtype,
           "--tokens", str(tokens)] + (["--max-memory", str(max_memory)] if max_memory else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/mmsdk-bench-offload")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-memory", type=int, default=1_000_000_000)
    ap.add_argument("--only", choices=["ple", "layers"])
    ap.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    ap.add_argument("--child")
    ap.add_argument("--offload")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--real", type=Path, help="a real-size Gemma 3n folder (make_real_size_gemma3n.py)")
    ap.add_argument("--quantize", default="int4", choices=["int4", "int8"])
    ap.add_argument("--text-only", action="store_true")
    ap.add_argument("--minmax", action="store_true",
                    help="--real: round int4 by plain min-max (1 clip candidate, not 49), then delete the cache: "
                         "cached-load, decode and RSS figures on a machine too busy for the first load's search")
    ap.add_argument("--no-offload", action="store_true", help="--real: also without offload (the table in RAM)")
    a = ap.parse_args()
    if a.real and a.child:
        off = None if a.offload == "None" else a.offload
        print(json.dumps(measure_real(a.real, a.quantize, off, a.tokens, a.text_only, a.minmax)))
        return
    if a.real:
        offloads = ["ple", None] if a.no_offload else ["ple"]
        print(json.dumps(run_real(a.real, a.quantize, offloads, a.tokens, a.text_only, a.minmax), indent=1))
        return
    if a.child:
        off = None if a.offload == "None" else a.offload
        print(json.dumps(measure(Path(a.child), off, a.max_memory, a.dtype, a.tokens)))
        return
    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MMSDK_CACHE", str(root / "cache"))
    free = shutil.disk_usage(root).free
    if free < 12e9:
        sys.exit(f"{root}: {free / 1e9:.1f} GB free; the benchmark writes ~10 GB")
    report = {}
    if a.only in (None, "ple"):
        folder = root / "gemma3n-e2b-ple"
        if not (folder / "model.safetensors").is_file():
            write_ple_checkpoint(folder)
        table = 262144 * 30 * 256 * 2
        # Alternate in-memory and mapped runs so load from other processes hits both alike.
        runs = [run_child(folder, off, None, "bfloat16", a.tokens) for _ in range(a.repeats) for off in (None, "ple")]
        mem = [r for r in runs if r["offload"] is None]
        ple = [r for r in runs if r["offload"] == "ple"]
        med = lambda rs: statistics.median(r["tok_s"] for r in rs)  # noqa: E731
        report["ple"] = {"table_bytes": table, "runs": runs,
                         "rss_decode_max_ple": max(r["rss_decode_max"] for r in ple),
                         "model_rss_ple": max(r["model_rss"] for r in ple),
                         "rss_target": table // 10, "tok_s_in_memory": med(mem), "tok_s_ple": med(ple),
                         "tok_s_ratio": med(ple) / med(mem)}
    if a.only in (None, "layers"):
        folder = root / "gemma3-2gb"
        if not (folder / "model.safetensors").is_file():
            write_layers_checkpoint(folder)
        tokens = max(8, a.tokens // 4)
        runs = [run_child(folder, off, a.max_memory if off else None, "float32", tokens)
                for _ in range(max(1, a.repeats - 1)) for off in (None, "layers")]
        mem = [r for r in runs if r["offload"] is None]
        lay = [r for r in runs if r["offload"] == "layers"]
        report["layers"] = {"weights_bytes": (folder / "model.safetensors").stat().st_size, "max_memory": a.max_memory,
                            "runs": runs, "rss_decode_max_layers": max(r["rss_decode_max"] for r in lay),
                            "model_rss_layers": max(r["model_rss"] for r in lay),
                            "rss_limit": int(a.max_memory * 1.25),
                            "tok_s_in_memory": statistics.median(r["tok_s"] for r in mem),
                            "tok_s_layers": statistics.median(r["tok_s"] for r in lay)}
    print(json.dumps(report, indent=1))
    if not a.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
