"""The chat template a checkpoint carries, rendered with jinja2 as transformers renders it
(`transformers/utils/chat_template_utils.py`: a sandboxed environment with trim_blocks and
lstrip_blocks, `raise_exception`, `tojson`, `strftime_now`), so a prompt is the text the model
was tuned on, not our copy of it.

Control tokens stay safe: the template is rendered with every content string (message text, tool
arguments and results, tool descriptions) replaced by a private-use sentinel, and the output is cut
at the sentinels into `Markup` (what the template wrote: its control-token spellings are tokens)
and plain `str` (the content: never parsed), which `chat_format.encode` turns into ids. The
sentinel keeps the content's leading and trailing whitespace outside it, so a template's `| trim`
acts on it as on the content. The same messages are rendered once more as they are, and the
parts must spell that text exactly: a template that rewrites content any other way is refused
rather than guessed at.
"""
import functools
import json
import logging
import re
from datetime import datetime
from pathlib import Path

from . import chat_format
from .chat_format import AUDIO_MARKER, IMAGE_MARKER, Markup
from .errors import InputError

log = logging.getLogger(__name__)

_SENTINEL = re.compile("\ue000(\\d+)\ue001")
_SPELLING = re.compile(r"<[^<>\s]{1,64}>")  # how Gemma's control tokens are spelled
# Keys whose string values the template reads as structure, not content: a sentinel there would
# change which branch it takes (`message['role'] == 'user'`, `item['type'] == 'image'`).
_STRUCTURE = frozenset({"role", "type", "id", "tool_call_id"})
_MEDIA_TYPES = {"image": "image", "image_url": "image", "audio": "audio", "input_audio": "audio"}
# Gemma 3n's template writes one soft token where a medium stands; our encoders expand the
# markers the built-in format writes into the same sequence (Gemma3nProcessor's full_image_sequence).
GEMMA3N_MEDIA = {"<image_soft_token>": IMAGE_MARKER, "<audio_soft_token>": AUDIO_MARKER}


_TUNED = re.compile(r"(^|[-_ ./])(it|instruct|chat)([-_ .]|$)", re.I)
_BASE = re.compile(r"(^|[-_ ./])(pt|base)([-_ .]|$)", re.I)


def instruction_tuned(path, name: str = "") -> bool:
    """Whether a checkpoint was tuned to follow chat turns: its name says so ("-it", "instruct"),
    or, unless the name says "pt"/"base", it ships a chat template (GGUF `tokenizer.chat_template`,
    a folder's tokenizer_config.json or chat_template.jinja). Gemma's base models ship none in GGUF."""
    label = f"{name} {Path(path).stem if path else ''}"
    if _TUNED.search(label):
        return True
    if _BASE.search(label) or not path:
        return False
    return find_template(path) is not None


def find_template(path) -> str | None:
    """The chat template a checkpoint carries: a folder's chat_template.jinja, chat_template.json or
    tokenizer_config.json["chat_template"] (a string, or named templates: "default"), or a GGUF's
    `tokenizer.chat_template`; None when it carries none."""
    path = Path(path)
    if not path.is_dir():
        from .decoder.gguf_file import GGUFFile

        return GGUFFile(path, arrays=False).meta.get("tokenizer.chat_template") or None
    if (path / "chat_template.jinja").exists():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        if (path / name).exists():
            found = json.loads((path / name).read_text(encoding="utf-8")).get("chat_template")
            if isinstance(found, list):  # [{"name": ..., "template": ...}, ...], as transformers stores them
                found = {t.get("name"): t.get("template") for t in found if isinstance(t, dict)}.get("default")
            if found:
                return found
    return None


def for_checkpoint(path, tokenizer, family: str) -> "ChatTemplate | None":
    """The template of the checkpoint at `path`, ready for `tokenizer` (which from now on also reads
    the template's own format tokens as such), or None where it carries none or one that does not parse."""
    source = find_template(path)
    if not source:
        return None
    try:
        template = ChatTemplate(source, bos_token=tokenizer.piece(tokenizer.bos_id),
                                eos_token=tokenizer.piece(tokenizer.eos_ids[0]),
                                media=GEMMA3N_MEDIA if family == "gemma3n" else None)
    except InputError as e:
        log.warning("%s; using the built-in %s chat format", e, family)
        return None
    tokenizer.add_controls(template.controls(tokenizer))
    return template


class ChatTemplate:
    """A checkpoint's chat template. `render` gives transformers' text; `prompt_parts` the same
    text as `Markup` and content parts; `render_messages` is the Assistant's entry, like the
    built-in formats'."""

    def __init__(self, source: str, *, bos_token: str = "<bos>", eos_token: str = "<eos>",
                 media: dict[str, str] | None = None):
        self.source, self.template = source, _compile(source)
        self.special = {"bos_token": bos_token, "eos_token": eos_token}
        self.media = media or {}  # the template's media tokens -> the markers our encoders expand

    @functools.cached_property
    def literal_text(self) -> str:
        """The template's own text and string constants, as transformers' `_get_template_literal_text`
        reads them: the control tokens it writes are among the spellings here."""
        import jinja2.nodes

        tree = self.template.environment.parse(self.source)
        literals = {n.data for n in tree.find_all(jinja2.nodes.TemplateData)}
        literals |= {n.value for n in tree.find_all(jinja2.nodes.Const) if isinstance(n.value, str)}
        return "\0".join(literals)

    def controls(self, tokenizer) -> set[str]:
        """Vocabulary entries the template writes as format tokens (FunctionGemma's `<escape>`, Gemma 4's
        `<|"|>`): inserted by id from its markup, read as text in content."""
        return {s for s in _SPELLING.findall(self.literal_text) if tokenizer.token_id(s) is not None}

    def render(self, messages: list[dict], *, tools=None, add_generation_prompt: bool = True, **variables) -> str:
        """The prompt text, as `tokenizer.apply_chat_template(..., tokenize=False)` writes it."""
        return self._render(messages, tools, add_generation_prompt, variables)

    def prompt_parts(self, messages: list[dict], *, tools=None, add_generation_prompt: bool = True,
                     **variables) -> list[str]:
        """The prompt as parts, without the leading BOS (`chat_format.encode` adds it): `Markup` for what
        the template wrote, plain `str` for content, so no content ever becomes a control token."""
        contents: list[str] = []
        shielded = self._render(_shield(messages, contents, content=True), _shield(tools, contents, content=False),
                                add_generation_prompt, variables)
        plain = self.render(messages, tools=tools, add_generation_prompt=add_generation_prompt, **variables)
        parts = _join(_SENTINEL.split(shielded), contents, plain)
        bos = self.special["bos_token"]
        if parts and isinstance(parts[0], Markup) and parts[0].startswith(bos):
            parts[0] = Markup(parts[0][len(bos):])
        return [p for p in parts if p]

    def render_messages(self, messages: list[dict], add_generation_prompt: bool = True, *, tools=None,
                        thinking: bool = False) -> tuple[list[str], list, list]:
        """(prompt parts without BOS, images, audio in order), as the built-in formats return them;
        the template's media tokens become the markers our encoders expand."""
        messages, images, audio = _media(messages)
        extra = {"enable_thinking": True} if thinking else {}
        parts = self.prompt_parts(messages, tools=tools, add_generation_prompt=add_generation_prompt, **extra)
        for token, marker in self.media.items():
            parts = [Markup(p.replace(token, marker)) if isinstance(p, Markup) else p for p in parts]
        return parts, images, audio

    def continuation(self, before: list[dict], new: list[dict]) -> tuple[list[str], list, list]:
        """What `new` messages add to the conversation `before` (a session's next turn): the parts of
        the whole conversation with the generation prompt, less the text `before` renders to, and the
        media of `new`."""
        done = chat_format.as_text(self.render_messages(before, add_generation_prompt=False)[0]) if before else ""
        parts, images, audio = self.render_messages([*before, *new])
        if not chat_format.as_text(parts).startswith(done):
            raise InputError("the model's chat template does not extend a conversation's prompt when a turn is added, "
                             "so a session cannot keep its cache; use `chat` with the whole conversation")
        out, skip = [], len(done)
        for p in parts:
            if skip < len(p):
                out.append(type(p)(p[skip:]))
            skip = max(0, skip - len(p))
        return out, images, audio

    @functools.cached_property
    def turn_end(self) -> Markup:
        """What the template writes after a reply to close the model's turn (`<end_of_turn>\n` for
        Gemma 3, `<turn|>\n` for Gemma 4): a session adds it after each reply."""
        parts = self.prompt_parts([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
                                  add_generation_prompt=False)
        return parts[-1] if isinstance(parts[-1], Markup) else Markup("")

    def _render(self, messages, tools, add_generation_prompt, variables) -> str:
        import jinja2

        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise InputError(f"messages must be a list of dicts with 'role' and 'content', got {messages!r}")
        try:
            return self.template.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                        **self.special, **variables)
        except jinja2.TemplateError as e:  # raise_exception(...) in the template: the conversation breaks its rules
            raise InputError(f"the model's chat template refused the messages: {e}") from e


@functools.lru_cache(maxsize=8)
def _compile(source: str):
    """A template compiled as transformers compiles it (`_cached_compile_jinja_template`)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; transformers' does not
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise InputError(f"the model's chat template is not valid Jinja: {e}") from e


def _shield(value, contents: list[str], content: bool, key: str | None = None):
    """A copy of `value` with each content string replaced by a sentinel naming its index in
    `contents`. In messages every string is content but structural keys (`role`, `type`, ids); in
    tools only descriptions are (names, types and enums are the template's to read). Empty strings
    stay as they are: a template tests them for truth."""
    if isinstance(value, dict):
        return {k: _shield(v, contents, content, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shield(v, contents, content, key) for v in value]
    if not isinstance(value, str) or not value or key in _STRUCTURE or (not content and key != "description"):
        return value
    if "\ue000" in value or "\ue001" in value:
        raise InputError("message text holds U+E000 / U+E001, which the chat template renderer reserves")
    core = value.strip()
    start = value.index(core) if core else len(value)
    contents.append(core)
    return f"{value[:start]}\ue000{len(contents) - 1}\ue001{value[start + len(core):]}"


def _join(pieces: list[str], contents: list[str], plain: str) -> list[str]:
    """Parts from the shielded render cut at its sentinels ([markup, index, markup, ...]), checked to
    spell `plain`, the unshielded render. A content string the template wrote through `tojson` comes
    back JSON-escaped, as it stands in `plain`."""
    parts, at = [], 0
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if not plain.startswith(piece, at):
                raise _rewritten(plain, at)
            parts.append(Markup(piece))
            at += len(piece)
            continue
        text = contents[int(piece)]
        follows = pieces[i + 1] if i + 1 < len(pieces) else ""
        for candidate in (text, json.dumps(text, ensure_ascii=False)[1:-1]):
            if plain.startswith(candidate + follows, at):
                break
        else:
            raise _rewritten(plain, at)
        parts.append(candidate)
        at += len(candidate)
    if at != len(plain):
        raise _rewritten(plain, at)
    return parts


def _rewritten(plain: str, at: int) -> InputError:
    return InputError(f"the model's chat template rewrites message content (near {plain[at:at + 40]!r}), so its "
                      "markup and the content cannot be kept apart safely; set `asst.template = None` to write "
                      "prompts in the built-in format instead")


def _media(messages: list[dict]) -> tuple[list[dict], list, list]:
    """Messages with media parts named as the templates test them (`image`, `audio`), and the images
    and clips in the order the template places them."""
    out, images, audio = [], [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise InputError(f"message {i} must be a dict with 'role' and 'content', got {msg!r}")
        content = msg.get("content")
        if isinstance(content, list):
            items = []
            for part in content:
                kind = _MEDIA_TYPES.get(part.get("type")) if isinstance(part, dict) else None
                if kind is None:
                    items.append(part)
                    continue
                (images if kind == "image" else audio).append(part.get(part["type"], part.get(kind)))
                items.append({"type": kind})
            msg = {**msg, "content": items}
        out.append({k: v for k, v in msg.items() if v is not None})
    return out, images, audio
