"""Gemma's chat format:

    <start_of_turn>user
    {system}\n\n{text}<end_of_turn>
    <start_of_turn>model
    {text}<end_of_turn>

Gemma has no system role: the system text opens the first user turn. Media parts become markers
(`IMAGE_MARKER`, `AUDIO_MARKER`) where they stand; the encoders expand them later.
"""
from .errors import InputError

START, END = "<start_of_turn>", "<end_of_turn>"
IMAGE_MARKER = "<start_of_image>"
AUDIO_MARKER = "<start_of_audio>"
_ROLES = {"user": "user", "assistant": "model", "model": "model", "tool": "user"}


def split_content(content) -> tuple[str, list, list]:
    """(text with media markers, images, audio clips) from a message's content."""
    if isinstance(content, str):
        return content, [], []
    text, images, audio = [], [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text.append(part["text"])
        elif kind in ("image", "image_url"):
            images.append(part.get("image", part.get("image_url")))
            text.append(IMAGE_MARKER)
        elif kind in ("audio", "input_audio"):
            audio.append(part.get("audio", part.get("input_audio")))
            text.append(AUDIO_MARKER)
        else:
            raise InputError(f"unknown message part {part!r}: expected type 'text', 'image' or 'audio'")
    return "".join(text), images, audio


def render_turn(role: str, text: str) -> str:
    if role not in _ROLES:
        raise InputError(f"unknown role {role!r}: expected one of system, user, assistant, tool")
    return f"{START}{_ROLES[role]}\n{text}{END}\n"


def render_messages(messages: list[dict], add_generation_prompt: bool = True) -> tuple[str, list, list]:
    """The prompt text (without BOS) for a whole conversation, plus its images and audio in order."""
    system, turns, images, audio = None, [], [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise InputError(f"message {i} must be a dict with 'role' and 'content', got {msg!r}")
        text, imgs, clips = split_content(msg.get("content", ""))
        images += imgs
        audio += clips
        if msg["role"] == "system":
            system = text if system is None else f"{system}\n\n{text}"
            continue
        if system is not None and msg["role"] == "user":
            text, system = f"{system}\n\n{text}", None
        turns.append(render_turn(msg["role"], text))
    if system is not None:  # a system message with no user turn after it
        turns.append(render_turn("user", system))
    prompt = "".join(turns)
    if add_generation_prompt:
        prompt += f"{START}model\n"
    return prompt, images, audio
