"""Gemma's tokenizer on the `tokenizers` library, from `tokenizer.json` or from GGUF metadata.

A GGUF carries the SentencePiece vocabulary but no merges; rebuilding the BPE merges from the
vocabulary takes seconds, so the result is written once to the user cache as `tokenizer.json`.
"""
import hashlib
import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

from .cache import atomic_path, cache_dir

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
_FORMAT = 1  # bump when the conversion changes, so stale cached files are rebuilt


class GemmaTokenizer:
    """Text <-> ids. `encode` adds BOS when asked; decoding of a stream is left to `StreamDecoder`."""

    def __init__(self, tok: Tokenizer, bos_id: int = 2, eos_ids=(1, 106)):
        self.tok, self.bos_id, self.eos_ids = tok, bos_id, tuple(eos_ids)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_file(cls, path, **kw) -> "GemmaTokenizer":
        return cls(Tokenizer.from_file(str(path)), **kw)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids, skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)


class StreamDecoder:
    """Turns a stream of ids into text pieces, holding back bytes of a character not yet complete."""

    def __init__(self, tokenizer: GemmaTokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character split across byte-fallback tokens
            return ""
        piece, self.emitted = text[self.emitted:], len(text)
        return piece


def tokenizer_from_gguf(meta: dict, source_id: str) -> GemmaTokenizer:
    """The tokenizer a Gemma GGUF describes, built once and then read from the cache."""
    bos = int(meta.get("tokenizer.ggml.bos_token_id", 2))
    eos = [int(meta.get("tokenizer.ggml.eos_token_id", 1))]
    end_of_turn = None
    tokens = meta["tokenizer.ggml.tokens"]
    if "<end_of_turn>" in tokens:
        end_of_turn = tokens.index("<end_of_turn>")
        eos.append(end_of_turn)
    key = hashlib.sha256(f"{source_id}:{_FORMAT}".encode()).hexdigest()[:16]
    cached = cache_dir("tokenizers") / f"{key}.json"
    if not cached.exists():
        tok = build_gemma_tokenizer(tokens, meta.get("tokenizer.ggml.token_type"))
        with atomic_path(cached) as tmp:
            tok.save(str(tmp))
    return GemmaTokenizer.from_file(cached, bos_id=bos, eos_ids=eos)


def build_gemma_tokenizer(tokens: list[str], token_types: list[int] | None) -> Tokenizer:
    """BPE with byte fallback over the SentencePiece vocabulary; spaces become U+2581, no prefix
    space. Gemma's merge order is the order tokens appear in the vocabulary, not their scores."""
    # Runs of spaces are stored as real spaces in GGUF; the model spells them with U+2581.
    tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges_by_rank(vocab), unk_token="<unk>",
                               fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    types = token_types or []
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, ty in zip(tokens, types) if ty == _CONTROL])
    tok.add_tokens([AddedToken(t, normalized=False, special=False)
                    for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
    return tok


def _merges_by_rank(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every split of a token into two vocabulary pieces, ordered by the merged token's rank."""
    merges = []
    for token, rank in vocab.items():
        pairs = [(token[:i], token[i:]) for i in range(1, len(token))
                 if token[:i] in vocab and token[i:] in vocab]
        pairs.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        merges.extend((rank, -len(a), -len(b), a, b) for a, b in pairs)
    merges.sort(key=lambda m: m[:3])  # ties: the longer left piece first
    return [(a, b) for _, _, _, a, b in merges]


def load_tokenizer_json(folder: Path, config: dict) -> GemmaTokenizer:
    """A HF folder's `tokenizer.json`, with BOS/EOS from its config files."""
    special = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        p = folder / name
        if p.exists():
            special.update(json.loads(p.read_text()))
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bos = tok.token_to_id(_token_text(special.get("bos_token", "<bos>"))) or 2
    eos = [tok.token_to_id("<eos>") or 1]
    if tok.token_to_id("<end_of_turn>") is not None:
        eos.append(tok.token_to_id("<end_of_turn>"))
    return GemmaTokenizer(tok, bos_id=bos, eos_ids=eos)


def _token_text(t) -> str:
    return t["content"] if isinstance(t, dict) else str(t)
