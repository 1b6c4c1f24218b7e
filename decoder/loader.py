"""Loading a Gemma 3 text decoder and its tokenizer from a HF folder or a GGUF file (Gemma 3n and
Gemma 4 folders: `gemma3n_loader`, `gemma4_loader`; Gemma 4 GGUFs here, with `gemma4_loader`'s names)."""
import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import TextConfig
from .errors import ModelLoadError
from .safetensors_folder import folder_tokenizer, read_safetensors, split_text_tensors, stored_dtype
from .gemma3 import Gemma3Text
from .gemma4 import Gemma4Text
from .gemma4_config import Gemma4TextConfig
from . import native, weight_cache
from .cache import atomic_path
from .gguf_file import EXACT_4BIT, GGUFFile, is_gguf, q4_codes, q4_k_parts
from .memory import drop_resident, map_large_allocations, release_free_memory, release_gpu_libraries
from .gptq import gptq_quantize_
from .loaded import LoadedText
from .quant_plan import GGUF_4BIT, GGUF_FLOAT, plan_bits
from .quantize import (Int4Linear, Int8Embedding, int4_supported, prepack, quantize_, quantize_int8,
                       quantized_linear, rotate, rotation_block)
from .tokenizer import load_sentencepiece, tokenizer_from_gguf
from .weights import FUSED, GGUF_TO_NATIVE, HF_TO_NATIVE, assign_strict, check_names, check_shape, expand

log = logging.getLogger(__name__)
TEXT_ARCHITECTURES = {"gemma3_text", "gemma3"}
# Where the text model's tensors sit in each HF layout (text-only, 4.x multimodal, 5.x multimodal).
_TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.")


def load_text(path, dtype=torch.float32, *, quantize: str | None = None, group_size: int = 32,
              threads: int | None = None, cache: bool = True, offload: str | None = None) -> LoadedText:
    """Load a Gemma 3 text decoder and its tokenizer.

    `dtype`: the float compute precision (a torch dtype, "float32", "bfloat16"), or None for the
    runtime's fastest faithful choice: float32 activations, weights as the file stores them.
    `quantize`: None (float weights; with `dtype=None` a quantized GGUF keeps about its stored
    precision, "stored"), "int8", "int4" (llama.cpp's Q4_K_M mix, `int4_bits`: the 4-bit layers rounded
    by GPTQ on a calibration text, ~1 min on a first load; int8 tied embedding / LM head) or "stored".
    `dtype="float32", quantize=None` computes what transformers' float32 reference computes.
    A GGUF's runtime layout is written to the weight cache once (`cache=False` skips it) and
    memory-mapped on later loads. `threads` sets torch's intra-op threads. Allocations of 4 MB and
    more are served from their own mappings from here on (`memory.map_large_allocations`), and the
    GPU libraries of torch's CUDA build leave resident memory (`memory.release_gpu_libraries`).
    `offload="ple"`: a Gemma 3n / Gemma 4 folder's per-layer table is mapped from the checkpoint,
    never read into memory, a Gemma 4 GGUF's from the file in its own blocks (other modes:
    `offload.apply_offload` on the loaded model).
    """
    if threads:
        torch.set_num_threads(int(threads))
    map_large_allocations()
    release_gpu_libraries()
    if quantize not in (None, "int8", "int4", "stored"):
        raise ValueError(f"quantize must be None, 'int8', 'int4' or 'stored', got {quantize!r}")
    auto = dtype is None
    dtype = _DTYPES.get(dtype, dtype) if not isinstance(dtype, torch.dtype) else dtype
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be None, 'float32' or 'bfloat16', got {dtype!r}")
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(path, "no such file or folder")
    if path.is_dir():
        loaded = _load_hf(path, dtype, "ple" if offload == "ple" else None)
        if quantize in ("int8", "int4"):
            _quantize(loaded.model, plan_bits(loaded.model, quantize), group_size, dtype,
                      tokenizer=loaded.tokenizer if quantize == "int4" else None)
            prepack(loaded.model, torch.get_num_threads())
            loaded.quantization, loaded.quantized = quantize, True
    elif path.suffix == ".gguf" or is_gguf(path):
        mode = quantize or ("stored" if auto else None)
        loaded = _load_gguf(path, dtype, mode, group_size, cache, offload)
    else:
        raise ModelLoadError(path, "expected a Hugging Face checkpoint folder (config.json + *.safetensors) or a .gguf file")
    release_free_memory()  # what parsing and conversion freed (a tokenizer.json's merges alone: ~280 MB)
    return loaded


_DTYPES = {None: torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}
_GGUF_FTYPES = {15: "Q4_K_M", 14: "Q4_K_S", 2: "Q4_0", 7: "Q8_0", 1: "F16", 0: "F32", 32: "BF16"}


def _load_gguf(path: Path, dtype, mode: str | None, group_size: int, use_cache: bool,
               offload: str | None = None) -> LoadedText:
    """A GGUF's decoder (Gemma 3 or Gemma 4) converted once into the weight cache, then mapped from
    it. Gemma 4's per-layer table is not cached: it stays in the GGUF's blocks (`GGUFPerLayerEmbedding`)."""
    options = {"dtype": str(dtype), "quantize": mode, "group_size": group_size if mode else None}
    key = weight_cache.cache_key([path], options)
    wpath = weight_cache.cache_path(path.stem, key)
    hit = weight_cache.load(wpath) if use_cache else None
    tok_path = wpath.with_suffix(".tokenizer.model")
    if hit is not None and "quantized" not in hit[1]:  # written before the meta said it: convert again
        hit = None
    if hit is not None:
        if tok_path.is_file():
            return _from_cache(hit, tok_path, dtype, group_size, path, offload)
    loaded, plan, tok_meta = _load_gguf_source(path, dtype, mode, group_size, offload)
    if use_cache:
        try:
            with atomic_path(tok_path) as tmp:  # before the weights: a weights file implies a tokenizer
                tmp.write_bytes(loaded.tokenizer.sp.serialized_model_proto())
            cfg = loaded.model.config
            config = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}
            meta = {"config": config, "name": loaded.name, "quantization": loaded.quantization,
                    "quantized": loaded.quantized, "plan": plan,
                    "tokenizer": tok_meta, "parameters": loaded.parameters,
                    "arch": loaded.hf_config.get("model_type", "gemma3")}
            weight_cache.save(wpath, loaded.model.state_dict(), meta)
            hit = weight_cache.load(wpath)
        except OSError as e:  # a read-only or full cache folder costs speed, not correctness
            log.warning("could not write the weight cache %s (%s)", wpath, e)
    if hit is not None:  # run from the mapped cache, as every later load does: the converted copy goes
        loaded = None
        release_free_memory()
        return _from_cache(hit, tok_path, dtype, group_size, path, offload)
    if mode:
        prepack(loaded.model, torch.get_num_threads())
        _accelerate(loaded.model)
    return loaded


def _accelerate(model) -> None:
    """Gemma 4's decode step as one C call per layer (`gemma4_fast`), for quantized weights."""
    if isinstance(model.config, Gemma4TextConfig):
        from .gemma4_fast import accelerate_

        accelerate_(model)


def _gemma4_skeleton(gg: GGUFFile, offload: str | None):
    """(Gemma4Text on the meta device but its per-layer table, float parameter count, GGUF name -> ours)."""
    from .gemma4_loader import gguf_config, gguf_key_map, gguf_unused

    cfg = gguf_config(gg)
    with torch.device("meta"):
        model = Gemma4Text(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    key_map = gguf_key_map(cfg)
    check_names(set(gg.tensors) - gguf_unused(cfg, gg.tensors), key_map, gg.path)
    _gemma4_mapped_parts(model, gg, offload)
    key_map = {name: ours for name, ours in key_map.items() if not ours.startswith("ple.")}
    return model, n_params, key_map


def _gemma4_mapped_parts(model, gg: GGUFFile, offload: str | None) -> None:
    """What a Gemma 4 model built on the meta device reads from the GGUF itself: the per-layer table in
    the file's blocks (`GGUFPerLayerEmbedding`, mapped with `offload="ple"`); no media placeholders."""
    from .gemma4_loader import PLE_GGUF, GGUFPerLayerEmbedding

    model.soft_token_ids = torch.empty(0, dtype=torch.long)
    if model.config.hidden_size_per_layer_input:
        check_shape(gg.path, repr(PLE_GGUF), gg.tensors[PLE_GGUF].shape, model.ple.weight.shape)
        model.ple = GGUFPerLayerEmbedding(model.ple, gg, PLE_GGUF, mapped=offload == "ple")


def _load_gguf_source(path: Path, dtype, mode: str | None, group_size: int, offload: str | None = None):
    gg = GGUFFile(path)
    meta = gg.meta
    arch = meta.get("general.architecture")
    if arch not in ("gemma3", "gemma4"):
        raise ModelLoadError(path, f"unsupported architecture {arch!r} (supported: gemma3, gemma4)")
    if arch == "gemma4":
        model, n_params, key_map = _gemma4_skeleton(gg, offload)
        fused, hf_config = {}, {"model_type": "gemma4_text"}  # the family `Assistant` reports
    else:
        try:
            cfg = TextConfig.from_gguf(meta)
        except (KeyError, ValueError) as e:
            raise ModelLoadError(path, f"incomplete gemma3 metadata: {e}") from e
        with torch.device("meta"):
            model = Gemma3Text(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        key_map, fused = expand(GGUF_TO_NATIVE, cfg.num_hidden_layers), expand(FUSED, cfg.num_hidden_layers)
        check_names(gg.tensors, key_map, path)
        hf_config = {}
    stored = {dst: gg.tensors[name].kind for name, dst in key_map.items()}
    for dst, parts in fused.items():  # a stacked matrix keeps the widest type of its parts
        kinds = [stored.pop(p) for p in parts]
        stored[dst] = next((k for k in kinds if k not in GGUF_4BIT), kinds[0])
    plan = plan_bits(model, mode, stored) if mode else {}
    stat = os.stat(path)
    tok = tokenizer_from_gguf(meta, f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    if mode == "int4":  # GPTQ rounds the float weights on a calibration run: it needs the float model
        _stream_gguf(gg, model, key_map, fused, {}, torch.float32, group_size, int8_embedding=False)
        _quantize(model, plan, group_size, dtype, tokenizer=tok)
    else:
        _stream_gguf(gg, model, key_map, fused, plan, dtype, group_size, int8_embedding=mode is not None)
    ftype = _GGUF_FTYPES.get(meta.get("general.file_type"), "gguf")
    label = ftype if mode in (None, "stored") else mode
    quantized = mode in ("int8", "int4") or any(kind not in GGUF_FLOAT for kind in stored.values())
    loaded = LoadedText(model.eval(), tok, meta.get("general.name", path.stem), "gguf", label, hf_config=hf_config,
                        parameters=n_params, quantized=quantized)
    return loaded, plan, {"bos": tok.bos_id, "eos": list(tok.eos_ids), "special": sorted(tok.special_ids)}


@torch.no_grad()
def _stream_gguf(gg: GGUFFile, model: nn.Module, key_map: dict, fused: dict, plan: dict, dtype,
                 group_size: int, int8_embedding: bool) -> None:
    """Fill `model`, built on the meta device, tensor by tensor from `gg`: each linear layer becomes
    its runtime module by `plan` straight from its source blocks (4-bit codes taken as they are where
    they map exactly, `q4_codes`), the tied embedding is converted in row chunks, and each source
    tensor's pages are dropped once converted. No float copy of the whole model ever exists."""
    src = {dst: name for name, dst in key_map.items()}
    targets = {dst: [src[p] for p in parts] for dst, parts in fused.items()}
    stacked = {p for parts in fused.values() for p in parts}
    targets.update({dst: [name] for dst, name in src.items() if dst not in stacked})
    for pname, p in list(model.named_parameters()):
        names = targets[pname]
        shapes = [gg.tensors[n].shape for n in names]
        shape = (sum(s[0] for s in shapes), *shapes[0][1:]) if all(s[1:] == shapes[0][1:] for s in shapes) else shapes
        check_shape(gg.path, " + ".join(repr(n) for n in names), shape, p.shape)
        mod_name, _, attr = pname.rpartition(".")
        parent_name, _, child = mod_name.rpartition(".")
        mod, parent = model.get_submodule(mod_name), model.get_submodule(parent_name)
        if isinstance(mod, nn.Embedding):
            setattr(parent, child, _embedding(gg, names[0], mod, dtype, int8_embedding))
        elif isinstance(mod, nn.Linear):
            setattr(parent, child, _linear(gg, names, mod, plan.get(mod_name), group_size, child, dtype))
        else:  # norms
            setattr(mod, attr, nn.Parameter(gg.dequantize(names[0]).to(dtype), requires_grad=False))
        for n in names:
            gg.drop(n)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left unfilled by the GGUF conversion: {left[:3]}")


def _linear(gg: GGUFFile, names: list[str], mod: nn.Linear, bits: int | None, group_size: int, child: str, dtype):
    """The runtime module of a linear layer stacked from the GGUF tensors `names`."""
    kinds = {gg.tensors[n].kind for n in names}
    if bits == 4 and group_size == 32 and kinds <= set(EXACT_4BIT) and int4_supported(*mod.weight.shape, 32):
        if kinds == {"Q4_0"}:  # w = (q - 8) d: the file's codes and float16 d as they are (4.5 bits a weight)
            raw = np.concatenate([gg.raw(n) for n in names])
            if native.available("q4_0_to_int4pack"):  # straight into the packed layout, one pass
                return Int4Linear.from_packed_symmetric(*native.q4_0_to_int4pack(raw, mod.in_features), 32)
            q, d, _ = q4_codes(raw, "Q4_0")
            return Int4Linear.from_symmetric(q, d.half(), 32)  # d came from float16: exact
        if kinds == {"Q4_K"}:  # w = q d sc - dmin m: the file's codes and numbers as they are (4.625 bits a weight)
            return Int4Linear.from_kquant(*q4_k_parts(np.concatenate([gg.raw(n) for n in names])))
        if len(kinds) == 1:  # stack the blocks, then decode once
            return Int4Linear.from_codes(*q4_codes(np.concatenate([gg.raw(n) for n in names]), kinds.pop()), 32)
        parts = [q4_codes(gg.raw(n), gg.tensors[n].kind) for n in names]
        return Int4Linear.from_codes(*(torch.cat(x) for x in zip(*parts)), 32)
    w = torch.cat([gg.dequantize(n) for n in names]) if len(names) > 1 else gg.dequantize(names[0])
    if bits is None:
        mod.weight = nn.Parameter(w.to(dtype), requires_grad=False)
        return mod
    return quantized_linear(w, bits, group_size, child)


def _embedding(gg: GGUFFile, name: str, mod: nn.Embedding, dtype, int8: bool, chunk: int = 8192):
    """The tied embedding, converted `chunk` rows at a time (Gemma 3 4B's as float32: 2.7 GB)."""
    V, H = gg.tensors[name].shape
    if int8:
        block = rotation_block(H)
        out = Int8Embedding(V, H, dtype, block)
    else:
        mod.weight = nn.Parameter(torch.empty(V, H, dtype=dtype), requires_grad=False)
        out = mod
    one_pass = int8 and gg.tensors[name].kind == "Q8_0" and native.available("q8_0_to_int8_rows")
    for a in range(0, V, chunk):
        rows = slice(a, min(a + chunk, V))
        if one_pass:  # the same rounding without float32 temporaries (`native.q8_0_to_int8`)
            out.weight[rows], out.scales[rows] = native.q8_0_to_int8(gg.raw(name, rows), H, block)
        elif int8:
            w = gg.dequantize(name, rows)
            out.weight[rows], out.scales[rows] = quantize_int8(rotate(w, block) if block else w)
        else:
            out.weight[rows] = gg.dequantize(name, rows)
        gg.drop(name, rows)
    return out


def _quantize(model, plan: dict, group_size: int, dtype, empty: bool = False, tokenizer=None) -> None:
    """Quantize by `plan`; with a `tokenizer`, the int4 layers are GPTQ-rounded on a calibration text."""
    if tokenizer is not None:
        int4 = [n for n, b in plan.items() if b == 4 and int4_supported(*model.get_submodule(n).weight.shape, group_size)]
        gptq_quantize_(model, int4, tokenizer, group_size)
    quantize_(model, lambda name, m: plan.get(name), group_size, empty=empty)
    for mod in model.modules():  # float leftovers (norms) in the compute dtype
        for name, p in mod.named_parameters(recurse=False):
            setattr(mod, name, torch.nn.Parameter(p.data.to(dtype), requires_grad=False))
        if isinstance(mod, Int8Embedding):
            mod.dtype = dtype


def _from_cache(hit, tok_path: Path, dtype, group_size: int, path: Path, offload: str | None = None) -> LoadedText:
    tensors, meta = hit
    gemma4 = meta.get("arch") == "gemma4_text"
    config, model_class = (Gemma4TextConfig, Gemma4Text) if gemma4 else (TextConfig, Gemma3Text)
    cfg = config(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
    with torch.device("meta"):
        model = model_class(cfg)
    if gemma4:
        _gemma4_mapped_parts(model, GGUFFile(path, arrays=False), offload)
    with torch.device("meta"):
        if meta["plan"]:
            _quantize(model, meta["plan"], group_size, dtype, empty=True)
    model.load_state_dict(tensors, strict=True, assign=True)
    model.requires_grad_(False)
    for mod in model.modules():
        if isinstance(mod, Int8Embedding):
            mod.dtype = dtype
    tok = load_sentencepiece(tok_path, meta["tokenizer"])
    # each weight's mapped pages leave RAM once its kernel holds a packed copy, so the two never add up
    prepack(model, torch.get_num_threads(), done=drop_resident)
    if meta["plan"]:
        _accelerate(model)
    return LoadedText(model.eval(), tok, meta["name"], "gguf", meta["quantization"], parameters=meta["parameters"],
                      hf_config={"model_type": meta["arch"]} if gemma4 else {}, quantized=meta["quantized"])


def _load_hf(folder: Path, dtype, offload: str | None = None) -> LoadedText:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(folder, "no config.json in the folder")
    try:
        hf = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(cfg_path, f"config.json is not valid JSON ({e})") from e
    arch = hf.get("model_type")
    if arch in ("gemma3n", "gemma3n_text"):
        from .gemma3n_loader import load_gemma3n

        return load_gemma3n(folder, hf, dtype, offload=offload)
    if arch in ("gemma4", "gemma4_text"):
        from .gemma4_loader import load_gemma4

        return load_gemma4(folder, hf, dtype, offload=offload)
    if arch not in TEXT_ARCHITECTURES:
        supported = sorted(TEXT_ARCHITECTURES | {"gemma3n", "gemma3n_text", "gemma4", "gemma4_text"})
        raise ModelLoadError(cfg_path, f"unsupported architecture {arch!r} (supported: {', '.join(supported)})")
    text_hf = hf.get("text_config", hf) if arch == "gemma3" else hf
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            cfg = TextConfig.from_hf(text_hf)
        except (TypeError, ValueError) as e:
            raise ModelLoadError(cfg_path, str(e)) from e
    tensors = read_safetensors(folder)
    text, extra = split_text_tensors(tensors, _TEXT_PREFIXES, folder, "model.embed_tokens.weight")
    if arch == "gemma3_text" and extra:
        raise ModelLoadError(folder, f"unexpected tensor {sorted(extra)[0]!r}")
    with torch.device("meta"):
        model = Gemma3Text(cfg)
    model.to_empty(device="cpu")
    assign_strict(model, text, expand(HF_TO_NATIVE, cfg.num_hidden_layers), folder, dtype,
                  fused=expand(FUSED, cfg.num_hidden_layers))
    return LoadedText(model.eval(), folder_tokenizer(folder, hf), folder.name, "hf", stored_dtype(hf), extra, hf,
                      parameters=sum(p.numel() for p in model.parameters()))
