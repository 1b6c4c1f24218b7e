"""Reading a Hugging Face checkpoint: a dataclass config from its config dict (unknown keys reported),
and modules built empty so that loading the checkpoint's tensors is the only initialization."""
from __future__ import annotations

import dataclasses
import warnings

import torch

# Keys every transformers `PreTrainedConfig` may carry that say nothing about an encoder's math.
HF_GENERIC_KEYS = frozenset({
    "model_type", "architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "initializer_range", "initializer_factor", "output_attentions", "output_hidden_states", "return_dict",
    "id2label", "label2id", "chunk_size_feed_forward", "is_encoder_decoder", "problem_type", "torchscript",
    "pruned_heads", "tie_encoder_decoder", "add_cross_attention", "finetuning_task", "prefix", "is_decoder",
    "sep_token_id", "decoder_start_token_id", "task_specific_params", "cross_attention_hidden_size",
    "max_length", "tokenizer_class", "pad_token_id", "bos_token_id", "eos_token_id", "use_cache",
    "tie_word_embeddings",
})


def hf_fields(cls, d: dict, ignored: frozenset = frozenset()) -> dict:
    """The entries of `d` that are fields of dataclass `cls` (None values dropped, so defaults apply).
    Keys that are neither fields, generic, nor in `ignored` are reported with a warning, never dropped silently."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names - HF_GENERIC_KEYS - ignored)
    if unknown:
        warnings.warn(f"{cls.__name__}: ignoring unknown config keys {unknown}", stacklevel=3)
    return {k: v for k, v in d.items() if k in names and v is not None}


def empty_module(module_cls, cfg) -> torch.nn.Module:
    """`module_cls(cfg)` with uninitialized CPU weights: built on the meta device, so no time goes into a
    random init the checkpoint overwrites anyway."""
    with torch.device("meta"):
        module = module_cls(cfg)
    return module.to_empty(device="cpu")
