"""Images and audio in a Gemma 4 prompt: each `<|image|>` / `<|audio|>` the chat format placed becomes
`<|image>` / `<|audio>`, one placeholder per soft token, `<image|>` / `<audio|>`, as transformers'
processor expands them, and the placeholders' embeddings are the towers' soft tokens (the rest the
text table's). Image tokens are grouped so the decoder's sliding layers can see an image both ways."""
import logging

import numpy as np
import torch

from ..decoder.errors import InputError
from .audio_io import SAMPLE_RATE, load_audio
from .gemma4_audio import log_mel
from .gemma4_vision import preprocess

log = logging.getLogger(__name__)
IMAGE, BOI, EOI = "<|image|>", "<|image>", "<image|>"
AUDIO, BOA, EOA = "<|audio|>", "<|audio>", "<audio|>"
MAX_AUDIO_SAMPLES = 30 * SAMPLE_RATE  # the reference's feature extractor cuts clips at 30 s


@torch.inference_mode()
def build_prompt(ids: list[int], images=(), audio=(), *, model, tokenizer, vision=None, audio_tower=None,
                 image_tokens: int = 280):
    """(ids, embeddings, groups) of a prompt whose ids hold one `<|image|>` per image and one
    `<|audio|>` per clip; `groups` gives each position its image (-1 elsewhere)."""
    soft = {}  # placeholder id -> (open id, close id, soft tokens of each item)
    if images:
        patches, positions, counts = preprocess(images, image_tokens, vision.config)
        features = vision(patches.to(vision.embed_proj.weight.dtype), positions)
        soft[IMAGE] = (BOI, EOI, list(features.split(counts)))
    if audio:
        soft[AUDIO] = (BOA, EOA, [_encode_clip(audio_tower, clip) for clip in audio])
    out, groups, parts, n_images = [], [], [], 0
    marks = {_id(tokenizer, m): m for m in soft}
    cursor = {m: 0 for m in soft}
    for t in ids:
        mark = marks.get(t)
        if mark is None:
            out.append(t)
            groups.append(-1)
            continue
        open_, close, items = soft[mark]
        if cursor[mark] == len(items):
            raise InputError(f"the prompt has more {mark} markers than {'images' if mark == IMAGE else 'audio clips'}")
        item = items[cursor[mark]]
        cursor[mark] += 1
        out += [_id(tokenizer, open_), *[t] * len(item), _id(tokenizer, close)]
        group = n_images if mark == IMAGE else -1
        n_images += mark == IMAGE
        groups += [-1, *[group] * len(item), -1]
        parts.append(item)
    for mark, (_, _, items) in soft.items():
        if cursor[mark] != len(items):
            raise InputError(f"the prompt has {cursor[mark]} {mark} marker(s) but {len(items)} were given")
    ids_t = torch.tensor([out])
    is_soft = torch.isin(ids_t[0], torch.tensor(list(marks)))
    embeds = model.embed_tokens(ids_t.masked_fill(is_soft, model.config.pad_token_id))
    if parts:
        embeds[0, is_soft] = torch.cat(parts).to(embeds.dtype)
    return out, embeds, torch.tensor(groups)


def _encode_clip(tower, clip) -> torch.Tensor:
    """One clip's soft tokens (n, text width): 25 a second of its first 30 s."""
    samples = load_audio(clip)
    if len(samples) > MAX_AUDIO_SAMPLES:
        log.warning("audio of %.1f s cut to its first 30 s (transcribe_audio windows long audio)",
                    len(samples) / SAMPLE_RATE)
        samples = samples[:MAX_AUDIO_SAMPLES]
    mel, valid = log_mel(samples)
    mel = torch.from_numpy(mel)[None].to(tower.embed_proj.weight.dtype)
    x, keep = tower(mel, torch.from_numpy(np.asarray(valid))[None])
    return x[0, keep[0]]


def _id(tokenizer, token: str) -> int:
    i = tokenizer.token_id(token)
    if i is None:
        raise InputError(f"the tokenizer lacks Gemma 4's media token {token}")
    return i
