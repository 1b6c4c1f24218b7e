"""Gemma's chat format:

    <start_of_turn>user
    {system}\n\n{text}<end_of_turn>
    <start_of_turn>model
    {text}<end_of_turn>

Gemma has no system role: the system text opens the first user turn. Media parts become markers
(`IMAGE_MARKER`, `AUDIO_MARKER`) where they stand; the encoders expand them later.

A prompt is a list of parts: `Markup` is what the format writes itself (its control-token spellings
are tokens), plain `str` is content from users, documents and tools, always read as text, so a
message that spells `<end_of_turn>` cannot forge a turn. `encode` turns the parts into ids.
"""
from .errors import InputError

START, END = "<start_of_turn>", "<end_of_turn>"
IMAGE_MARKER = "<start_of_image>"
AUDIO_MARKER = "<start_of_audio>"
_ROLES = {"user": "user", "assistant": "model", "model": "model", "tool": "user"}


class Markup(str):
    """Prompt text written by the chat format: control tokens spelled in it are inserted by id."""


def as_text(parts) -> str:
    """The prompt as one string (control tokens spelled out), for display and counting."""
    return parts if isinstance(parts, str) else "".join(parts)


def encode(tokenizer, parts, add_bos: bool = True) -> list[int]:
    """Ids of a prompt: the control tokens of its `Markup` parts by id, the text between them
    (format text and content together, as Gemma's template tokenizes it) with none parsed.
    A bare `str` is a raw prompt, all of it markup."""
    parts = [Markup(parts)] if isinstance(parts, str) else parts
    ids, run = [tokenizer.bos_id] if add_bos else [], ""
    for part in parts:
        pieces = tokenizer.split_controls(part) if isinstance(part, Markup) else [part]
        for i, piece in enumerate(pieces):
            if i % 2:
                ids += tokenizer.encode(run, add_bos=False, parse_special=False) + [tokenizer.token_id(piece)]
                run = ""
            else:
                run += piece
    return ids + tokenizer.encode(run, add_bos=False, parse_special=False)


def count_markers(parts, marker: str) -> int:
    """Media markers the format placed (content that spells one is text, not a marker)."""
    parts = [Markup(parts)] if isinstance(parts, str) else parts
    return sum(p.count(marker) for p in parts if isinstance(p, Markup))


def split_content(content) -> tuple[list[str], list, list]:
    """(parts: text with media markers, images, audio clips) from a message's content."""
    if isinstance(content, str):
        return [content], [], []
    text, images, audio = [], [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text.append(str(part["text"]))
        elif kind in ("image", "image_url"):
            images.append(part.get("image", part.get("image_url")))
            text.append(Markup(IMAGE_MARKER))
        elif kind in ("audio", "input_audio"):
            audio.append(part.get("audio", part.get("input_audio")))
            text.append(Markup(AUDIO_MARKER))
        else:
            raise InputError(f"unknown message part {part!r}: expected type 'text', 'image' or 'audio'")
    return text, images, audio


def turn_parts(role: str, content) -> list[str]:
    """One turn's prompt parts; `content` is a str (read as text) or parts."""
    if role not in _ROLES:
        raise InputError(f"unknown role {role!r}: expected one of system, user, assistant, tool")
    body = [content] if isinstance(content, str) else list(content)
    return [Markup(f"{START}{_ROLES[role]}\n"), *body, Markup(f"{END}\n")]


def render_turn(role: str, text: str) -> str:
    """One turn as a string (for display; prompts are built from `turn_parts`)."""
    return as_text(turn_parts(role, text))


def generation_prompt() -> list[str]:
    """What opens the model's turn."""
    return [Markup(f"{START}model\n")]


def render_messages(messages: list[dict], add_generation_prompt: bool = True) -> tuple[list[str], list, list]:
    """The prompt parts (without BOS) for a whole conversation, plus its images and audio in order."""
    system, turns, images, audio = None, [], [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise InputError(f"message {i} must be a dict with 'role' and 'content', got {msg!r}")
        text, imgs, clips = split_content(msg.get("content") or "")
        images += imgs
        audio += clips
        if msg["role"] != "system":  # each text trimmed, as the template's `| trim` does (not the system text)
            text = [p if isinstance(p, Markup) else type(p)(p.strip()) for p in text]
        if msg["role"] == "system":
            system = text if system is None else [*system, "\n\n", *text]
            continue
        if system is not None and msg["role"] == "user":
            text, system = [*system, "\n\n", *text], None
        turns += turn_parts(msg["role"], text)
    if system is not None:  # a system message with no user turn after it
        turns += turn_parts("user", system)
    if add_generation_prompt:
        turns += generation_prompt()
    return turns, images, audio
