"""Tiny random Gemma 3n checkpoints in the real Hugging Face layout, written by transformers itself."""
import json
from pathlib import Path

import torch

TEXT = dict(vocab_size=512, vocab_size_per_layer_input=384, hidden_size=64, num_hidden_layers=10,
            intermediate_size=[128, 96, 128, 96, 128, 96, 128, 96, 128, 96], num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, hidden_size_per_layer_input=8, laurel_rank=8, num_kv_shared_layers=5,
            sliding_window=4, activation_sparsity_pattern=[0.95] * 3 + [0.0] * 7, altup_num_inputs=4)
# The real towers are large; tiny stand-ins keep the tensor layout (`model.audio_tower.*`, ...) at test size.
AUDIO = dict(hidden_size=32, conf_num_hidden_layers=1, conf_num_attention_heads=2, input_feat_size=16,
             sscp_conv_channel_size=[8, 4], vocab_offset=384 + 128)
VISION = dict(architecture="test_efficientnet", hidden_size=32, vocab_offset=384)


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random (transformers' init zeroes AltUp's output scale, which would hide PLE)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.15 * noise)


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(vocab_size - len(specials))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))


def hf_text_model(seed: int = 0, **changes):
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    model = Gemma3nForCausalLM(Gemma3nTextConfig(**{**TEXT, **changes})).eval()
    randomize(model, seed)
    return model


def hf_full_model(seed: int = 0):
    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration

    model = Gemma3nForConditionalGeneration(Gemma3nConfig(text_config=TEXT, audio_config=AUDIO, vision_config=VISION))
    randomize(model.eval(), seed)
    return model


def save(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    write_tokenizer(folder, TEXT["vocab_size"])
    return folder


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    text.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@torch.inference_mode()
def prefill_then_steps(model, *, steps: int, seed: int, stride: int, n: int = 9, vocab: int = 384) -> torch.Tensor:
    """Logits of an n-token random prompt, then of `steps` cached decode steps (token s * stride), in one tensor."""
    from mmsdk.decoder.kv_cache import make_cache

    ids = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))
    caches = make_cache(model.config)
    out = [model.logits(model(ids, caches, torch.arange(n)))]
    for s in range(steps):
        out.append(model.logits(model(torch.tensor([[s * stride % vocab]]), caches, torch.tensor([n + s]))))
    return torch.cat(out, 1)


def assert_layers_match(ref, fast, run, *, decoded: int = 4, rtol: float = 1e-4) -> None:
    """Each of `fast`'s layers against `ref`'s on the same input (the reference's, replayed) and caches,
    for every decoded step of `run(model)` (a prompt, then `decoded` tokens): within `rtol` of the
    output's size. Layer by layer, so that one layer's rounding is not grown by the next ones."""
    seen = {}

    def record(tag, i):
        def hook(mod, args, out):
            seen.setdefault((tag, i), []).append((args[0], out))
        return hook

    def replay(i):  # the reference's input for this layer and step
        def hook(mod, args):
            return (seen[("ref", i)][len(seen.get(("fast", i), []))][0], *args[1:])
        return hook

    hooks = []
    for i, (a, b) in enumerate(zip(ref.layers, fast.layers)):
        hooks += [a.register_forward_hook(record("ref", i)), b.register_forward_pre_hook(replay(i)),
                  b.register_forward_hook(record("fast", i))]
    try:
        run(ref)
        run(fast)
    finally:
        for h in hooks:
            h.remove()
    for i in range(len(ref.layers)):
        steps = list(zip(seen[("ref", i)], seen[("fast", i)]))
        assert len(steps) == 1 + decoded  # the prompt, then the decoded tokens
        for (_, want), (_, got) in steps[1:]:
            assert got.shape == want.shape
            assert (got - want).abs().max() <= rtol * want.abs().max(), (i, (got - want).abs().max())
