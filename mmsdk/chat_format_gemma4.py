"""Gemma 4's chat format, as its checkpoint's chat template writes it (llama.cpp keeps a copy in
`models/ggml-vocab-gemma-4.gguf`):

    <|turn>system
    {<|think|> when thinking}{system}<turn|>
    <|turn>user
    {text}<turn|>
    <|turn>model
    <|channel>thought
    <channel|>{text}<turn|>

Unlike Gemma 3, a system turn of its own. With thinking off (the default) the model's turn opens
with an empty thought channel; with thinking on, the system turn starts with `<|think|>` and the
model writes `<|channel>thought\n...<channel|>` before its answer (`split_thinking`).
Text parts are trimmed as the template trims them. Prompts are parts as in `chat_format`: `Markup`
is the format's own text, plain `str` is content, never read as control tokens.
"""
from .chat_format import AUDIO_MARKER, IMAGE_MARKER, Markup, split_content
from .errors import InputError

START, END = "<|turn>", "<turn|>"
THINK = "<|think|>"
CHANNEL, CHANNEL_END = "<|channel>", "<channel|>"
IMAGE, AUDIO = "\n\n<|image|>\n\n", "<|audio|>"  # where media go, as the template writes them (expanded later)
_ROLES = {"system": "system", "user": "user", "assistant": "model", "model": "model"}


def turn_parts(role: str, content) -> list[str]:
    """One turn's prompt parts; `content` is a str (read as text) or parts."""
    if role not in _ROLES:
        raise InputError(f"unknown role {role!r} for Gemma 4: expected one of system, user, assistant")
    body = [content] if isinstance(content, str) else list(content)
    body = [Markup(p.replace(IMAGE_MARKER, IMAGE).replace(AUDIO_MARKER, AUDIO)) if isinstance(p, Markup) else p
            for p in body]
    return [Markup(f"{START}{_ROLES[role]}\n"), *_trimmed(body), Markup(f"{END}\n")]


def generation_prompt(thinking: bool = False) -> list[str]:
    """What opens the model's turn: with thinking off, an empty thought channel it skips."""
    return [Markup(f"{START}model\n" + ("" if thinking else f"{CHANNEL}thought\n{CHANNEL_END}"))]


def render_messages(messages: list[dict], add_generation_prompt: bool = True, *,
                    thinking: bool = False) -> tuple[list[str], list, list]:
    """The prompt parts (without BOS) for a whole conversation, plus its images and audio in order."""
    turns, images, audio = [], [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise InputError(f"message {i} must be a dict with 'role' and 'content', got {msg!r}")
        text, imgs, clips = split_content(msg.get("content") or "")
        images += imgs
        audio += clips
        if msg["role"] == "system" and i > 0:
            raise InputError("a system message comes first in a Gemma 4 conversation")
        if thinking and i == 0:  # the think switch opens the system turn, made for it if need be
            text = [Markup(THINK), *_trimmed(text)] if msg["role"] == "system" else text
            if msg["role"] != "system":
                turns += turn_parts("system", [Markup(THINK)])
        turns += turn_parts(msg["role"], text)
    if add_generation_prompt:
        turns += generation_prompt(thinking)
    return turns, images, audio


def split_thinking(tokenizer, ids: list[int]) -> tuple[str | None, list[int]]:
    """(the thought, the answer's ids) of a reply generated with thinking on: the text between
    `<|channel>thought` and `<channel|>`, and what follows. No channel: no thought."""
    open_id, close_id = tokenizer.token_id(CHANNEL), tokenizer.token_id(CHANNEL_END)
    if open_id not in ids:
        return None, ids
    start = ids.index(open_id) + 1
    end = ids.index(close_id, start) if close_id in ids[start:] else len(ids)
    thought = tokenizer.decode(ids[start:end])
    return thought.removeprefix("thought").lstrip("\n").strip(), ids[end + 1:]


def _trimmed(parts: list) -> list:
    """Content text trimmed at both ends, as the template's `| trim` does (markers kept)."""
    parts = list(parts)
    if parts and not isinstance(parts[0], Markup):
        parts[0] = type(parts[0])(parts[0].lstrip())
    if parts and not isinstance(parts[-1], Markup):
        parts[-1] = type(parts[-1])(parts[-1].rstrip())
    return parts
