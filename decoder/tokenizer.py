"""Gemma's tokenizer: SentencePiece for GGUF files, `tokenizers` for a folder's `tokenizer.json`.

A GGUF carries Gemma's SentencePiece vocabulary (pieces, scores, types). Written back as a
SentencePiece model (once, to the user cache) it loads in ~0.06 s; the same vocabulary as a
`tokenizers` BPE needs its 515k merges parsed, ~1.2 s on every load.
"""
import hashlib
import json
import re
from pathlib import Path

import sentencepiece
from sentencepiece import sentencepiece_model_pb2 as spm_proto
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

from .cache import atomic_path, cache_dir

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6  # llama.cpp's and SentencePiece's token types
_FORMAT = 2  # bump when the conversion changes, so stale cached files are rebuilt
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")
# Tokens the chat format and the media encoders insert by id. Not control tokens in every vocabulary
# (Gemma's GGUF stores <start_of_image> as user-defined), but never read out of plain text either.
MEDIA_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_audio>", "<end_of_audio>",
                "<audio_soft_token>")
_SPELLING = re.compile(r"<[^<>]{1,64}>")  # how Gemma's control tokens are spelled


class GemmaTokenizer:
    """Text <-> ids. `encode` adds BOS when asked; decoding of a stream is left to `StreamDecoder`.
    Control tokens written in the text (`<start_of_turn>`) are read as themselves unless
    `parse_special=False`; `decode` leaves them out unless asked. Subclasses supply the vocabulary
    and the two directions."""

    bos_id: int
    eos_ids: tuple[int, ...]
    special_ids: frozenset[int]  # control tokens
    vocab_size: int
    _token_bytes: list[bytes] | None = None
    _controls: frozenset[str] | None = None

    def encode(self, text: str, add_bos: bool = True, parse_special: bool = True) -> list[int]:
        """Ids of `text`. With `parse_special=False` control-token spellings (`<end_of_turn>`, the
        media markers) are plain characters: text from users, documents and tools never becomes one."""
        ids = self._encode(text) if parse_special else self._encode_plain(text)
        return [self.bos_id, *ids] if add_bos else ids

    def split_controls(self, text: str) -> list[str]:
        """`text` cut around the control-token spellings in it: [text, control, text, ..., text]."""
        if self._controls is None:
            media = {t for t in MEDIA_TOKENS if self.token_id(t) is not None}
            self._controls = frozenset({self.piece(i) for i in self.special_ids} | media)
        out, last = [], 0
        for m in _SPELLING.finditer(text):
            if m[0] in self._controls:
                out += [text[last:m.start()], m[0]]
                last = m.end()
        return out + [text[last:]]

    def add_controls(self, spellings) -> None:
        """Read these vocabulary entries as format tokens too (a chat template's own, such as
        FunctionGemma's `<escape>`): by id in markup, as plain characters in content."""
        self.split_controls("")  # the base set, built once
        self._controls = self._controls | {s for s in spellings if self.token_id(s) is not None}

    def _encode_plain(self, text: str) -> list[int]:
        ids = []
        for i, piece in enumerate(self.split_controls(text)):
            if i % 2:  # a control spelling: its "<" alone, then the rest, so no control token can match
                ids += self._encode(piece[:1]) + self._encode(piece[1:])
            elif piece:
                ids += self._encode(piece)
        return ids

    def decode(self, ids, skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        return self._decode([i for i in ids if i not in self.special_ids] if skip_special else ids)

    def token_id(self, token: str) -> int | None:
        raise NotImplementedError

    def piece(self, token_id: int) -> str:
        """The vocabulary entry, spaces spelled U+2581 and raw bytes `<0xNN>`, as SentencePiece does."""
        raise NotImplementedError

    def token_bytes(self) -> list[bytes]:
        """Each id's bytes, control tokens marked with a leading 0xFF (as llguidance takes them);
        built once (~0.4 s for 262k tokens)."""
        if self._token_bytes is None:
            self._token_bytes = self._spell_tokens()
        return self._token_bytes

    def _spell_tokens(self) -> list[bytes]:
        out = []
        for i in range(self.vocab_size):
            p = self.piece(i)
            byte = _BYTE_PIECE.fullmatch(p)
            if i in self.special_ids:
                out.append(b"\xff" + p.encode())
            elif byte:
                out.append(bytes([int(byte[1], 16)]))
            else:
                out.append(p.replace("\u2581", " ").encode())
        return out

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError


class JsonTokenizer(GemmaTokenizer):
    """A `tokenizers` tokenizer (a Hugging Face folder's `tokenizer.json`)."""

    def __init__(self, tok: Tokenizer, bos_id: int = 2, eos_ids=(1, 106)):
        self.tok, self.bos_id, self.eos_ids = tok, bos_id, tuple(eos_ids)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.special_ids = frozenset(i for i, t in tok.get_added_tokens_decoder().items() if t.special)

    def _encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def _decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False)

    def token_id(self, token):
        return self.tok.token_to_id(token)

    def piece(self, token_id):
        return self.tok.id_to_token(token_id)


class SentencePieceTokenizer(GemmaTokenizer):
    """A SentencePiece model as `sentencepiece_model(...)` writes it: control tokens are stored as
    user-defined pieces, so SentencePiece reads them in text; which ids they are is kept here."""

    def __init__(self, path, bos_id: int, eos_ids, special_ids):
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.bos_id, self.eos_ids, self.special_ids = bos_id, tuple(eos_ids), frozenset(special_ids)
        self.vocab_size = self.sp.get_piece_size()

    def _encode(self, text):
        return self.sp.encode(text)

    def _decode(self, ids):
        return self.sp.decode(ids)

    def token_id(self, token):
        i = self.sp.piece_to_id(token)
        return i if self.sp.id_to_piece(i) == token else None

    def piece(self, token_id):
        return self.sp.id_to_piece(token_id)

    def as_tokenizers(self) -> Tokenizer:
        """The same vocabulary as a `tokenizers` Tokenizer, for libraries that take one (grammar
        engines): each piece with its GGUF type again (control from `special_ids`; SentencePiece
        numbers piece types as GGUF does)."""
        m = spm_proto.ModelProto()
        m.ParseFromString(self.sp.serialized_model_proto())
        types = [_CONTROL if i in self.special_ids else p.type if p.type in (_USER_DEFINED, _BYTE) else _NORMAL
                 for i, p in enumerate(m.pieces)]
        return build_gemma_tokenizer([p.piece for p in m.pieces], types)


class StreamDecoder:
    """Turns a stream of ids into text pieces at a cost linear in the stream's length: each push
    decodes only a short window (the last emitted token, as context for spacing, plus the ids not
    yet emitted), never the whole reply (the approach of vLLM's and TGI's incremental detokenizers).
    Bytes of a character split across byte-fallback tokens are held back until it completes."""

    MAX_HELD = 8  # a UTF-8 character is at most 4 byte tokens; past this the bytes are invalid: let them out

    def __init__(self, tokenizer: GemmaTokenizer):
        self.tokenizer = tokenizer
        self.window: list[int] = []  # ids from the last emitted token on
        self.read = 0  # window[:read] is already emitted text

    def push(self, token_id: int) -> str:
        self.window.append(token_id)
        before = self.tokenizer.decode(self.window[:self.read])
        text = self.tokenizer.decode(self.window)
        if text.endswith("\ufffd") and len(self.window) - self.read < self.MAX_HELD:
            return ""  # a multi-byte character not complete yet
        piece = text[len(before):]
        if piece:  # the tokens just emitted are the next push's context; an empty piece (a skipped
            self.window = self.window[self.read:]  # control token) is none: keep the text before it
        self.read = len(self.window)
        return piece

    def flush(self) -> str:
        """The text of ids still held back (an incomplete character decodes to U+FFFD, as a full decode does)."""
        before = self.tokenizer.decode(self.window[:self.read])
        piece = self.tokenizer.decode(self.window)[len(before):]
        self.window, self.read = [], 0
        return piece


def _gguf_tokenizer_meta(meta: dict) -> dict:
    """BOS, EOS (with `<end_of_turn>` / `<turn|>`) and control ids of a Gemma GGUF, as `tokenizer_from_gguf` takes them."""
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    eos = [int(meta.get("tokenizer.ggml.eos_token_id", 1))]
    for end_of_turn in ("<end_of_turn>", "<turn|>"):  # Gemma 3 / 3n, Gemma 4
        if end_of_turn in tokens:
            eos.append(tokens.index(end_of_turn))
    return {"bos": int(meta.get("tokenizer.ggml.bos_token_id", 2)), "eos": eos,
            "special": [i for i, t in enumerate(types) if t == _CONTROL]}


def tokenizer_from_gguf(meta: dict, source_id: str) -> SentencePieceTokenizer:
    """The tokenizer a Gemma GGUF describes, written once as a SentencePiece model to the cache."""
    key = hashlib.sha256(f"{source_id}:{_FORMAT}".encode()).hexdigest()[:16]
    cached = cache_dir("tokenizers") / f"{key}.model"
    if not cached.exists():
        proto = sentencepiece_model(meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type"),
                                    int(meta.get("tokenizer.ggml.unknown_token_id", 3)))
        with atomic_path(cached) as tmp:
            tmp.write_bytes(proto)
    return load_sentencepiece(cached, _gguf_tokenizer_meta(meta))


def load_sentencepiece(path: Path, meta: dict) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(path, meta["bos"], meta["eos"], meta["special"])


def sentencepiece_model(tokens: list[str], token_types: list[int] | None, unk_id: int = 3) -> bytes:
    """A serialized SentencePiece BPE model over a GGUF vocabulary. Gemma merges by vocabulary
    order, so a piece's score is minus its id; no normalization, no prefix space, byte fallback."""
    m = spm_proto.ModelProto()
    m.trainer_spec.model_type = spm_proto.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    # BOS/EOS/PAD ids stay ours to add; only <unk> must keep SentencePiece's unknown type.
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = unk_id, -1, -1, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    types = token_types or [_NORMAL] * len(tokens)
    for i, (t, ty) in enumerate(zip(tokens, types)):
        kind = _UNKNOWN if i == unk_id else _USER_DEFINED if ty in (_CONTROL, _USER_DEFINED) else ty
        # Runs of spaces are stored as real spaces in GGUF; SentencePiece spells them with U+2581.
        m.pieces.add(piece="\u2581" * len(t) if " " in t and not t.strip() else t, score=-float(i),
                     type=kind if kind in (_NORMAL, _UNKNOWN, _USER_DEFINED, _BYTE) else _NORMAL)
    return m.SerializeToString()


def build_gemma_tokenizer(tokens: list[str], token_types: list[int] | None) -> Tokenizer:
    """The same vocabulary as a `tokenizers` BPE with byte fallback: spaces become U+2581, no prefix
    space. Gemma's merge order is the order tokens appear in the vocabulary, not their scores."""
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


def load_tokenizer_json(folder: Path, config: dict) -> JsonTokenizer:
    """A HF folder's `tokenizer.json`, with BOS/EOS from its config files."""
    special = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        p = folder / name
        if p.exists():
            special.update(json.loads(p.read_text()))
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bos = tok.token_to_id(_token_text(special.get("bos_token", "<bos>"))) or 2
    eos = [tok.token_to_id("<eos>") or 1]
    for end_of_turn in ("<end_of_turn>", "<turn|>"):  # Gemma 3 / 3n, Gemma 4
        if tok.token_to_id(end_of_turn) is not None:
            eos.append(tok.token_to_id(end_of_turn))
    return JsonTokenizer(tok, bos_id=bos, eos_ids=eos)


def _token_text(t) -> str:
    return t["content"] if isinstance(t, dict) else str(t)
