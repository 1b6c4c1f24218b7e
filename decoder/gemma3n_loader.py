"""Loading a Gemma 3n text decoder from a Hugging Face checkpoint in its real layout.

`google/gemma-3n-E2B-it` stores the decoder under `model.language_model.*` beside the audio tower,
the vision tower and their embedders (`model.audio_tower.*`, `model.vision_tower.*`,
`model.embed_audio.*`, `model.embed_vision.*`); those are handed back untouched in `extra_tensors`
for the encoders. Tensors are read one at a time, so loading never holds two copies of the model,
and with `offload="ple"` the per-layer embedding table is never read into memory at all.

Quantized (`quantize="int8"` / `"int4"`), the decoder never exists in float: `load_quantized`
rounds one checkpoint tensor at a time straight into the runtime layout and a weight-cache file,
then memory-maps that file, as every later load does. Gemma 4 (`gemma4_loader.GEMMA4`) loads the
same way: a `Family` names what differs (config, tensor names, model class, decode-time swaps).
"""
import functools
import json
import logging
import math
import os
import struct
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from . import weight_cache
from .cache import atomic_path
from .errors import InputError, ModelLoadError
from .gemma3n import Gemma3nText
from .gemma3n_config import Gemma3nTextConfig
from .gemma3n_fast import accelerate_
from .loaded import LoadedText
from .memory import drop_resident, map_large_allocations, release_free_memory, release_gpu_libraries
from .quant_plan import plan_bits
from .quantize import (Int4Embedding, Int4Linear, Int8Embedding, Int8Linear, int4_row_block, prepack, quantize_,
                       quantize_int8, rotate)
from .safetensors_folder import folder_tokenizer, index_safetensors, split_text_tensors, stored_dtype
from .weights import HF_TO_NATIVE, assign_strict, expand

log = logging.getLogger(__name__)


GEMMA3N_ARCHITECTURES = {"gemma3n", "gemma3n_text"}
NON_TEXT_PREFIXES = ("model.audio_tower.", "model.vision_tower.", "model.embed_audio.", "model.embed_vision.")
_TEXT_PREFIXES = ("model.language_model.", "model.")
PLE_KEY = "embed_tokens_per_layer.weight"

# Hugging Face Gemma3nTextModel names (relative to the text prefix) -> ours: Gemma 3's names plus
# the per-layer embeddings, AltUp and LAuReL.
HF_TO_NATIVE_3N = {
    **HF_TO_NATIVE,
    PLE_KEY: "ple.weight",
    "per_layer_model_projection.weight": "ple_projection.weight",
    "per_layer_projection_norm.weight": "ple_projection_norm.weight",
    "layers.{}.altup.correct_output_scale": "layers.{}.altup.correct_output_scale",
    "layers.{}.altup.correction_coefs.weight": "layers.{}.altup.correction_coefs.weight",
    "layers.{}.altup.prediction_coefs.weight": "layers.{}.altup.prediction_coefs.weight",
    "layers.{}.altup.modality_router.weight": "layers.{}.altup.modality_router.weight",
    "layers.{}.altup.router_norm.weight": "layers.{}.altup.router_norm.weight",
    "layers.{}.laurel.linear_left.weight": "layers.{}.laurel.linear_left.weight",
    "layers.{}.laurel.linear_right.weight": "layers.{}.laurel.linear_right.weight",
    "layers.{}.laurel.post_laurel_norm.weight": "layers.{}.laurel.norm.weight",
    "layers.{}.per_layer_input_gate.weight": "layers.{}.ple_gate.weight",
    "layers.{}.per_layer_projection.weight": "layers.{}.ple_proj.weight",
    "layers.{}.post_per_layer_input_norm.weight": "layers.{}.ple_norm.weight",
}
# Key/value weights of KV-shared layers: the released checkpoints still carry them, unused
# (transformers ignores them on load too); checkpoints saved by transformers 5 leave them out.
_SHARED_LAYER_UNUSED = ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_norm.weight")


def key_map(cfg: Gemma3nTextConfig) -> dict[str, str]:
    """HF name (relative to the text prefix) -> our parameter name, for every tensor this config has."""
    m = expand(HF_TO_NATIVE_3N, cfg.num_hidden_layers)
    for i in range(cfg.first_kv_shared_layer, cfg.num_hidden_layers):
        for name in _SHARED_LAYER_UNUSED:
            del m[f"layers.{i}.{name}"]
    for j in range(cfg.altup_num_inputs - 1):
        m[f"altup_projections.{j}.weight"] = f"altup_in.{j}.weight"
        m[f"altup_unembed_projections.{j}.weight"] = f"altup_out.{j}.weight"
    return m


def read_config(folder: Path, hf: dict) -> Gemma3nTextConfig:
    """The text decoder's config; unknown keys are reported in a warning."""
    text_hf = (hf.get("text_config") or {}) if hf.get("model_type") == "gemma3n" else hf
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            return Gemma3nTextConfig.from_hf(text_hf)
        except (TypeError, ValueError) as e:
            raise ModelLoadError(folder / "config.json", str(e)) from e


def load_gemma3n(folder, hf: dict | None = None, dtype: torch.dtype = torch.float32, *, offload: str | None = None,
                 max_memory: int | None = None):
    """A `LoadedText` for a Gemma 3n checkpoint folder. `offload` as in `offload.apply_offload`."""
    from .offload import apply_offload, offload_ple

    folder = Path(folder)
    if hf is None:
        hf = json.loads((folder / "config.json").read_text())
    cfg = read_config(folder, hf)
    text, extra = _text_tensors(folder, hf, cfg)

    with torch.device("meta"):
        model = Gemma3nText(cfg)
    model.to_empty(device="cpu")
    kmap = key_map(cfg)
    ple = take_ple(model, text, kmap, folder) if offload in ("ple", "layers") else None
    assign_strict(model, text, kmap, folder, dtype)
    n_params = sum(p.numel() for p in model.parameters())  # before the PLE table leaves the module
    for p in model.parameters():
        p.requires_grad_(False)
    if ple is not None:
        offload_ple(model, source=(ple.file, ple.name))
    tok, stored = folder_tokenizer(folder, hf), stored_dtype(hf)
    # The towers' tensors stay unread (`LazyTensor`s) until an encoder is built from them (`mmsdk.media`).
    loaded = LoadedText(model.eval(), tok, folder.name, "hf", stored, extra, hf)
    loaded.parameters = n_params
    if offload == "layers":
        apply_offload(loaded, "layers", max_memory=max_memory)
    return loaded


def take_ple(model, text: dict, kmap: dict, folder: Path):
    """The per-layer table's unread tensor, taken out of `text` and `kmap` so it is mapped straight
    from the checkpoint file, never read into memory; None where the checkpoint has none."""
    if PLE_KEY not in text:
        return None
    ple = text.pop(PLE_KEY)
    want = tuple(model.ple.weight.shape)
    if ple.shape != want:
        raise ModelLoadError(folder, f"tensor {ple.name!r} has shape {ple.shape}, the config implies {want}")
    del kmap[PLE_KEY]
    return ple


# ---- quantized: streamed from the checkpoint into the weight cache ----------------------------

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# Elements quantized at once: the int4 clip search's temporaries stay under the 4 MB from which
# allocations are fresh mappings (`memory.map_large_allocations`), each page faulted in anew.
_CHUNK = 1 << 19
# What quantize="int4" holds for Gemma 3n (the seed: E2B "runs in 2 GB", `offload="ple"`): every
# linear layer and the tied embedding / LM head at 4 bits in GGUF's Q4_K layout (asymmetric, 4.625
# bits a weight as held), rounded to nearest from the checkpoint (`quantize.quantize_int4_kquant`'s search, run
# in C where the kernels build: `quantize_q4.h`; E2B's whole first load took 81 s of CPU; torch's search, 0.5-3 us
# a weight on one core, 20-120 min for its 2.4 billion).
# E2B's sizes: layers 1.07 GB (pairs with Q4_K_M's 8-bit q/k/v and down_proj: 1.27 GB), head 311 MB
# (int8: 512 MB). The cost, measured on the bundled Gemma 3 270M (`tests/eval/eval_int4_layouts.py`,
# 2048 tokens): the tied head at 4 bits (symmetric) +11.2% perplexity, top-1 agreement with the float
# model 80.7% (int8: -0.03%, 98.2%); every layer at 4 bits (pairs, int8 head) +17.0%, 78.4%.
# Q4_K's weight error is pairs' (relative RMS 0.0728 vs 0.0719 on Gaussian weights, symmetric 0.0810).
INT4_LAYOUT = "kquant"
INT4_EMBEDDING_BITS = 4  # 8: +201 MB resident on E2B, the head as good as Q8_0


def is_gemma3n_folder(path) -> bool:
    """Whether `path` is a Hugging Face folder holding a Gemma 3n checkpoint."""
    cfg = Path(path) / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") in GEMMA3N_ARCHITECTURES
    except (OSError, json.JSONDecodeError):
        return False


@dataclass(frozen=True)
class Family:
    """What a streamed quantized load needs to know of a model family with per-layer embeddings."""
    name: str  # in the weight cache's key: another family's file is never mapped
    model: type  # the decoder (its parameter names are `key_map`'s values)
    read_config: Callable  # (folder, hf dict) -> config
    text_tensors: Callable  # (folder, hf, cfg) -> (text tensors by HF name under the text prefix, tower tensors)
    key_map: Callable  # cfg -> {HF name: our parameter name}
    accelerate: Callable  # the decode-time module swaps, in place


def family_of(hf: dict) -> Family:
    """Gemma 3n's or Gemma 4's `Family`, by the config's model_type."""
    if hf.get("model_type") in GEMMA3N_ARCHITECTURES:
        return GEMMA3N
    from .gemma4_loader import GEMMA4, GEMMA4_ARCHITECTURES

    if hf.get("model_type") in GEMMA4_ARCHITECTURES:
        return GEMMA4
    raise ModelLoadError("config.json", f"model_type {hf.get('model_type')!r}: streamed quantized loads take "
                         "Gemma 3n and Gemma 4 checkpoints")


def load_quantized(folder, quantize: str, dtype: torch.dtype = torch.float32, *, offload: str | None = None,
                   group_size: int = 32, cache: bool = True, encoders: bool = True):
    """A `LoadedText` for a Gemma 3n or Gemma 4 folder with int8 or int4 weights (int4: every layer and the tied
    embedding / LM head in Q4_K's layout, `INT4_LAYOUT`, rounded to nearest; GPTQ needs the float model).

    The first load reads one checkpoint tensor at a time into memory, rounds it into the runtime
    layout and writes it to a weight-cache file, then maps that file as every later load does: the
    peak is the embedding's int8 copy plus one tensor, never the float model. The per-layer
    embedding table is mapped straight from the checkpoint (`offload="ple"`) or read into memory
    as stored (`offload=None`); `offload="layers"` streams float weights only and is refused here.
    `encoders=False` leaves the vision and audio towers' tensors unread (text only)."""
    from .offload import MappedPerLayerEmbedding, mapped_safetensor

    if quantize not in ("int8", "int4"):
        raise ValueError(f"quantize must be 'int8' or 'int4', got {quantize!r}")
    if offload not in (None, "ple"):
        raise InputError(f"offload={offload!r} with quantize={quantize!r}: offload='layers' streams float weights "
                         "only; use offload='ple' (the per-layer table stays on disk) or quantize=None")
    map_large_allocations()
    release_gpu_libraries()
    folder = Path(folder)
    hf = json.loads((folder / "config.json").read_text())
    family = family_of(hf)
    cfg = family.read_config(folder, hf)
    text, extra, ple = _split(folder, hf, cfg, family)
    tok = folder_tokenizer(folder, hf)
    release_free_memory()  # parsing the tokenizer's merges leaves ~280 MB of free heap; before the weights

    layout, embedding_bits = (INT4_LAYOUT, INT4_EMBEDDING_BITS) if quantize == "int4" else ("pairs", 8)
    options = {"dtype": str(dtype), "quantize": quantize, "group_size": group_size, "layout": family.name,
               "int4_layout": layout, "embedding_bits": embedding_bits}
    files = sorted({t.file for t in text.values()} | {folder / "config.json"})
    wpath = weight_cache.cache_path(folder.name, weight_cache.cache_key(files, options))
    hit = weight_cache.load(wpath) if cache else None
    if hit is None:
        model, n_params, plan = _quantized_skeleton(folder, cfg, text, dtype, quantize, group_size, plan_int4, family,
                                                    embedding_bits=embedding_bits, layout=layout)
        meta = {"name": folder.name, "parameters": n_params, "plan": plan, "embedding_bits": embedding_bits}
        specs = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
        sources = {ours: text[hf_name] for hf_name, ours in _text_map(cfg, family).items()}
        private = Path(tempfile.gettempdir()) / f"mmsdk-{os.getpid()}-{folder.name}.safetensors"
        try:
            made = _runtime_tensors(model, sources, dtype, group_size)
            _write_streamed(wpath if cache else private, specs, made, meta)
        except OSError as e:  # a read-only or full cache folder costs the next load's time, not correctness
            if not cache:
                raise
            log.warning("could not write the weight cache %s (%s); using a temporary file", wpath, e)
            cache = False
            _write_streamed(private, specs, _runtime_tensors(model, sources, dtype, group_size), meta)
        hit = weight_cache.load(wpath if cache else private)
        if not cache:
            os.unlink(private)  # nowhere to keep it: the mapping holds the data until the process ends
    tensors, meta = hit
    with torch.device("meta"):
        model = family.model(cfg)
        quantize_(model, meta["plan"].get, group_size, empty=True, embedding_bits=meta.get("embedding_bits", 8))
    if ple is not None:
        table = mapped_safetensor(ple.file, ple.name)
        model.ple = MappedPerLayerEmbedding(model.ple, table if offload == "ple" else table.clone())
    model.load_state_dict(tensors, strict=True, assign=True)
    model.requires_grad_(False)
    for mod in model.modules():
        if isinstance(mod, (Int8Embedding, Int4Embedding)):
            mod.dtype = dtype
    # each int8 weight's mapped pages leave RAM once its kernel holds a packed copy
    prepack(model, torch.get_num_threads(), done=drop_resident)
    family.accelerate(model)
    extra = extra if encoders else {}  # unread until a tower is built, as above
    loaded = LoadedText(model.eval(), tok, folder.name, "hf", quantize, extra, hf, parameters=meta["parameters"],
                        quantized=True)
    release_free_memory()
    return loaded


def _text_map(cfg, family: Family) -> dict[str, str]:
    """HF name -> ours, without the per-layer table (mapped, never part of the runtime weights)."""
    kmap = family.key_map(cfg)
    kmap.pop(PLE_KEY, None)
    return kmap


def _text_tensors(folder: Path, hf: dict, cfg: Gemma3nTextConfig):
    """(text tensors by native name, encoder tensors), all unread; stray names refused, and the
    unused K/V projections of KV-shared layers (released checkpoints carry them) left out."""
    tensors = index_safetensors(folder)
    text, extra = split_text_tensors(tensors, _TEXT_PREFIXES, folder, "model.language_model.embed_tokens.weight")
    stray = sorted(k for k in extra if hf.get("model_type") == "gemma3n_text" or not k.startswith(NON_TEXT_PREFIXES))
    if stray:
        raise ModelLoadError(folder, f"unexpected tensor {stray[0]!r}")
    for i in range(cfg.first_kv_shared_layer, cfg.num_hidden_layers):
        for name in _SHARED_LAYER_UNUSED:
            text.pop(f"layers.{i}.{name}", None)
    return text, extra


GEMMA3N = Family("gemma3n", Gemma3nText, read_config, _text_tensors, key_map, accelerate_)


def _split(folder: Path, hf: dict, cfg, family: Family):
    """(text tensors but the PLE table, encoder tensors, the PLE table or None where the config has
    none: Gemma 4's larger models), all unread."""
    text, extra = family.text_tensors(folder, hf, cfg)
    if not cfg.hidden_size_per_layer_input:
        return text, extra, None
    if PLE_KEY not in text:
        raise ModelLoadError(folder, f"missing tensor {PLE_KEY!r}")
    ple = text.pop(PLE_KEY)
    want = (cfg.vocab_size_per_layer_input, cfg.num_hidden_layers * cfg.hidden_size_per_layer_input)
    if ple.shape != want:
        raise ModelLoadError(folder, f"tensor {ple.name!r} has shape {ple.shape}, the config implies {want}")
    return text, extra, ple


def plan_int4(model, mode: str) -> dict[str, int | None]:
    """Bits per linear layer: `quant_plan.plan_bits`'s, but every layer at 4 bits under "int4" (see
    `INT4_LAYOUT`); AltUp's 4-wide maps stay float under both (64 KB in all, and `gemma3n_fast`
    runs them as broadcast sums)."""
    plan = plan_bits(model, "int8" if mode == "int4" else mode)
    return {name: None if ".altup." in f".{name}" else 4 if mode == "int4" else bits for name, bits in plan.items()}


def _quantized_skeleton(folder, cfg, text, dtype, quantize, group_size, plan_of, family: Family,
                        **quantize_options):
    """The quantized model on the meta device (shapes and dtypes only), its float parameter count
    and its plan, after checking the checkpoint's names and shapes against the config."""
    with torch.device("meta"):
        model = family.model(cfg)
        # meta stand-ins: assign_strict's checks (missing, unexpected, shapes) without reading a byte
        assign_strict(model, {k: torch.empty(v.shape) for k, v in text.items()}, _text_map(cfg, family), folder, dtype)
        n_params = sum(p.numel() for p in model.parameters())
        plan = plan_of(model, quantize)
        quantize_(model, plan.get, group_size, empty=True, **quantize_options)
    if hasattr(model, "ple"):
        del model.ple  # mapped from the checkpoint, not part of the cache
    return model, n_params, plan


def _runtime_tensors(model, sources: dict, dtype: torch.dtype, group_size: int):
    """(name, tensor) for every entry of the quantized `model`'s state dict, each made from its
    checkpoint tensor (`sources`: our parameter name -> LazyTensor) when its module comes up.
    Blocks of rows are rounded on a pool of torch's thread count, one intra-op thread each: ops on
    cache-sized blocks gain less from splitting than they lose to synchronisation (a 256-row block
    of E2B's embedding on a busy 2-core host: 190 ms on one thread, 910 ms on two)."""
    from tqdm import tqdm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    total = sum(math.prod(t.shape) for t in sources.values())
    try:  # a bar on a terminal (stderr): E2B's first load rounds 2.4 billion weights
        with ThreadPoolExecutor(threads) as pool, tqdm(total=total, desc="rounding weights (first load)", unit="w",
                                                        unit_scale=True, leave=False, disable=None) as bar:
            yield from _made(model, sources, dtype, group_size, pool, bar.update)
    finally:
        torch.set_num_threads(threads)


def _made(model, sources, dtype, group_size, pool, done=lambda weights: None):
    for prefix, mod in model.named_modules():
        pre = f"{prefix}." if prefix else ""
        if isinstance(mod, Int4Linear):  # the 4-bit embedding too (262400 rows): a block of rows at a time
            src, (N, K) = sources[pre + "weight"], (mod.out_features, mod.in_features)
            q = Int4Linear(K, N, group_size)
            q._set_layout(mod.layout, "cpu")
            step = int4_row_block(K, _CHUNK)

            def block(i, q=q, src=src, N=N):
                w = read_rows(src, i, min(i + step, N))  # as stored: the C rounding reads bfloat16 itself
                q.fill_rows(i, Int4Linear.from_float(w, group_size, q.layout))
                return w.numel()

            for n in pool.map(block, range(0, N, step)):
                done(n)
            yield from ((pre + k, v) for k, v in q.state_dict().items())
        elif isinstance(mod, Int8Linear):
            q = Int8Linear.from_float(read_rows(sources[pre + "weight"]), mod.int8_inputs, mod.rotation)
            done(q.weight.numel())
            yield from ((pre + k, v) for k, v in q.state_dict().items())
        elif isinstance(mod, Int8Embedding):  # 262400 rows: a block of rows at a time
            src = sources[pre + "weight"]
            weight = torch.empty(mod.num_embeddings, mod.embedding_dim, dtype=torch.int8)
            scales = torch.empty(mod.num_embeddings)
            step = max(1, _CHUNK // mod.embedding_dim)

            def block(i):
                w = read_rows(src, i, min(i + step, mod.num_embeddings)).float()
                w = rotate(w, mod.rotation) if mod.rotation else w
                weight[i:i + len(w)], scales[i:i + len(w)] = quantize_int8(w)
                return w.numel()

            for n in pool.map(block, range(0, mod.num_embeddings, step)):
                done(n)
            yield pre + "weight", weight
            yield pre + "scales", scales
        else:
            for name, p in mod.named_parameters(recurse=False):
                done(p.numel())
                yield pre + name, read_rows(sources[pre + name]).to(dtype)


def read_rows(t, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Rows start:stop of a checkpoint tensor (a `LazyTensor`), read with pread into fresh memory:
    unlike a mapping, reading leaves none of the checkpoint's pages in this process's RSS."""
    from .offload import pread_exact

    st = os.stat(t.file)
    n, header = _header(str(t.file), st.st_size, st.st_mtime_ns)
    info = header[t.name]
    with open(t.file, "rb") as f:
        if info["dtype"] not in _ST_DTYPES:
            raise ModelLoadError(t.file, f"tensor {t.name!r} is {info['dtype']}; expected a float type")
        shape, (a, b) = info["shape"], info["data_offsets"]
        rows = shape[0] if shape else 1
        stop = rows if stop is None else stop
        row_bytes = (b - a) // max(rows, 1)
        out = torch.empty((stop - start) * row_bytes, dtype=torch.uint8)
        pread_exact(f.fileno(), memoryview(out.numpy()), 8 + n + a + start * row_bytes)
    return out.view(_ST_DTYPES[info["dtype"]]).view(stop - start, *shape[1:]) if shape else out.view(
        _ST_DTYPES[info["dtype"]]).view(())


@functools.lru_cache(maxsize=16)
def _header(path: str, size: int, mtime_ns: int) -> tuple[int, dict]:
    """A safetensors file's header length and header (parsed once per file version)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


def _write_streamed(path: Path, specs: dict, chunks, meta: dict) -> None:
    """A weight-cache file (`weight_cache`'s format) written as `chunks` yields its tensors: the
    header is laid out from `specs` (name -> (shape, dtype)) first, so no two tensors are ever held."""
    weight_cache._remove_stale_parts(path)  # as weight_cache.save: killed writers' files, older formats
    weight_cache._remove_old_formats(path)
    header = {"__metadata__": {"mmsdk": json.dumps(meta), "format": str(weight_cache.FORMAT_VERSION)}}
    offset = 0
    for i, (name, (shape, dt)) in enumerate(specs.items()):
        if offset % weight_cache._ALIGN:  # aligned for the packed kernels' loads, as weight_cache.save pads
            pad = weight_cache._ALIGN - offset % weight_cache._ALIGN
            header[f"{weight_cache._PAD}{i}"] = {"dtype": "U8", "shape": [pad], "data_offsets": [offset, offset + pad]}
            offset += pad
        n = dt.itemsize
        for s in shape:
            n *= s
        header[name] = {"dtype": weight_cache._NAMES[dt], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % weight_cache._ALIGN)
    written = set()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            f.truncate(8 + len(blob) + offset)  # pads read as zeros
            for name, t in chunks:
                shape, dt = specs[name]
                if tuple(t.shape) != shape or t.dtype != dt:
                    raise AssertionError(f"{name}: made {tuple(t.shape)} {t.dtype}, laid out {shape} {dt}")
                f.seek(8 + len(blob) + header[name]["data_offsets"][0])
                if t.numel():
                    f.write(memoryview(t.contiguous().view(torch.uint8).reshape(-1).numpy()))
                written.add(name)
            if written != set(specs):
                raise AssertionError(f"weights never made: {sorted(set(specs) - written)[:3]}")
            f.flush()
            os.fsync(f.fileno())
