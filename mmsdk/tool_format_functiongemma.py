"""FunctionGemma's tool-call format, as its chat template (google/functiongemma-270m-it) writes it:
the template declares the tools in the developer turn, and the model calls them as

    <start_function_call>call:get_weather{city:<escape>Paris<escape>,days:3}<end_function_call>

(strings between `<escape>` tokens, other values bare, keys in sorted order), several calls in a
row for parallel calls, then `<start_function_response>`, after which the results come back as
`<start_function_response>response:get_weather{value:<escape>...<escape>}<end_function_response>`.
Gemma 4 kept this syntax with other spellings (`tool_format_gemma4`): `CallFormat` holds them.

The template itself renders the declarations, earlier calls and results; a `CallFormat` puts the
messages into the shape the template reads (OpenAI-style `tool_calls`, `tool` messages with a name),
builds the grammar that constrains a reply to text or calls, and parses calls back out of a reply:
the interface of `tool_format_gemma`, which `structured.plan` takes instead where the template writes calls itself."""
import json
import re
from dataclasses import dataclass

from .tool_format_gemma import find_json, render_schema_instruction
from .tool_schema import ToolSpec
from .types import ToolCall

MAX_CALLS = 4  # per reply: bounds the length of a constrained reply
MAX_STRING_CHARS = 160
_CONSTS = {"true": True, "false": False, "null": None, "None": None, "True": True, "False": False}


@dataclass(frozen=True)
class CallFormat:
    call_open: str  # opens a call: `{call_open}call:name{args}{call_close}`
    call_close: str
    quote: str  # both ends of a string value
    response_open: str  # the model writes it after its calls: the results go there
    string_results: bool = False  # tool results must be strings (Gemma 4's template reads no mapping)

    find_json = staticmethod(find_json)  # the schema= path is ours in every format
    render_schema_instruction = staticmethod(render_schema_instruction)

    # ---- prompt ------------------------------------------------------------------------------
    @staticmethod
    def template_tools(specs: list[ToolSpec]) -> list[dict]:
        """The tools as the template declares them (OpenAI-style function schemas)."""
        return [{"type": "function", "function": {"name": s.name, "description": s.description or s.name,
                                                  "parameters": s.parameters}} for s in specs]

    def prepare_messages(self, messages: list[dict], specs: list[ToolSpec],
                         extra_system: str | None = None) -> list[dict]:
        """Messages as the template reads them: assistant calls as `tool_calls` of {"function": {"name",
        "arguments"}}, each tool result named after its call (from the calls before it when the message
        names none), `extra_system` added to the system (developer) text."""
        out, calls, answered = [], [], 0
        for msg in messages:
            role = msg.get("role") if isinstance(msg, dict) else None
            if role == "assistant" and msg.get("tool_calls"):
                calls, answered = [_as_call(c) for c in msg["tool_calls"]], 0
                msg = {**msg, "tool_calls": [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                             for c in calls]}
                if not msg.get("content"):
                    msg.pop("content", None)
            elif role == "tool":
                if not msg.get("name") and answered < len(calls):
                    msg = {**msg, "name": calls[answered].name}
                if self.string_results and not isinstance(msg.get("content"), str):
                    msg = {**msg, "content": json.dumps(msg.get("content"), ensure_ascii=False, default=str)}
                answered += 1
            out.append(msg)
        if extra_system:
            if out and out[0].get("role") in ("system", "developer") and isinstance(out[0].get("content"), str):
                out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{extra_system}"}
            else:
                out.insert(0, {"role": "system", "content": extra_system})
        return out

    def render_call(self, call: ToolCall) -> str:
        """A call as the template writes it (keys sorted case-insensitively, as Jinja's `dictsort`)."""
        return f"{self.call_open}call:{call.name}{self._value(call.arguments)}{self.call_close}"

    def _value(self, v) -> str:
        """The template's `format_argument(v, escape_keys=False)`."""
        if isinstance(v, str):
            return f"{self.quote}{v}{self.quote}"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            items = sorted(v.items(), key=lambda kv: str(kv[0]).lower())
            return "{" + ",".join(f"{k}:{self._value(x)}" for k, x in items) + "}"
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(self._value(x) for x in v) + "]"
        return str(v)

    # ---- grammar -----------------------------------------------------------------------------
    def call_grammar(self, specs: list[ToolSpec], tool_choice: str = "auto") -> str:
        """A Lark grammar (llguidance dialect) for a reply: 1..MAX_CALLS calls with valid arguments,
        then optionally the response opener ("required", or a tool's name: calls of that tool only),
        plain text that opens no call ("none"), or either ("auto")."""
        text = r"TEXT: /[^<\s](.|\n)*/"  # a plain-text reply: anything that does not open a call
        if tool_choice == "none":
            return f"start: TEXT\n{text}"
        if tool_choice not in ("auto", "required") and tool_choice not in {s.name for s in specs}:
            raise ValueError(f"tool_choice must be 'auto', 'required', 'none' or a tool's name, got {tool_choice!r}")
        chosen = [s for s in specs if tool_choice in ("auto", "required") or s.name == tool_choice]
        q = json.dumps(self.quote)
        rules = [f"call: {' | '.join(f'c{i}' for i in range(len(chosen)))}",
                 f"string: {q} /[^<]{{0,{MAX_STRING_CHARS}}}/ {q}"]
        for i, spec in enumerate(chosen):
            open_, close = json.dumps(f"{self.call_open}call:{spec.name}{{"), json.dumps("}" + self.call_close)
            rules.append(f"c{i}: {open_} {self._args_expr(spec.parameters)} {close}")
        calls = f"calls: call{{1,{MAX_CALLS}}} {json.dumps(self.response_open)}?"
        start = f"start: calls | TEXT\n{text}" if tool_choice == "auto" else "start: calls"
        return "\n".join([start, calls, *rules])

    def _args_expr(self, params: dict, defs: dict | None = None) -> str:
        """Keys in the template's sorted order, optional ones may be left out, commas only between."""
        defs = params.get("$defs", defs or {})
        required = set(params.get("required", ()))
        items = [(name, self._value_expr(schema, defs), name in required)
                 for name, schema in sorted(params.get("properties", {}).items(), key=lambda kv: kv[0].lower())]

        def after(k: int) -> str:
            if k == len(items):
                return ""
            name, value, req = items[k]
            part = f'",{name}:" {value}'
            return f"{part if req else f'({part})?'} {after(k + 1)}".strip()

        def first(k: int) -> str:
            if k == len(items):
                return ""
            name, value, req = items[k]
            here = f'"{name}:" {value} {after(k + 1)}'.strip()
            if req:
                return f"({here})"
            rest = first(k + 1)
            return f"({here} | {rest})" if rest else f"({here})?"

        return first(0) or '""'

    def _value_expr(self, schema: dict, defs: dict) -> str:
        """One value as the template writes it: strings quoted, numbers and booleans bare, lists and
        objects in its bracket syntax (object keys sorted)."""
        if "$ref" in schema:
            return self._value_expr(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return "(" + " | ".join(self._value_expr(s, defs) for s in schema[key]) + ")"
        if "enum" in schema or "const" in schema:
            return "(" + " | ".join(json.dumps(self._value(v)) for v in schema.get("enum", [schema.get("const")])) + ")"
        kind = schema.get("type")
        if isinstance(kind, list):
            return "(" + " | ".join(self._value_expr({**schema, "type": k}, defs) for k in kind) + ")"
        number = r"/-?(0|[1-9][0-9]{0,14})(\.[0-9]{1,6})?/"
        if kind == "array":
            item = self._value_expr(schema.get("items", {}), defs)
            return f'("[" ({item} ("," {item}){{0,15}})? "]")'
        if kind == "object" and schema.get("properties"):
            return f'("{{" {self._args_expr(schema, defs)} "}}")'
        return {"string": "string", "integer": r"/-?(0|[1-9][0-9]{0,14})/", "number": number,
                "boolean": '("true" | "false")', "null": '"None"'}.get(kind, f'(string | {number} | "true" | "false")')

    # ---- parsing -----------------------------------------------------------------------------
    def parse_tool_calls(self, text: str, specs: list[ToolSpec] = ()) -> tuple[str, list[ToolCall]]:
        """(the text outside calls, the calls) from a reply; never raises. A call cut off at the end
        (max_tokens) is closed where it stops; a call whose markers were left out (a vocabulary that
        makes them control tokens, which decoding drops) still parses at the start of the reply."""
        calls, rest, last = [], [], 0
        for m in re.finditer(rf"(?:{re.escape(self.call_open)}|^)call:([A-Za-z_][\w.\-]*)\{{", text):
            if m.start() < last:
                continue
            args, end = _Reader(text, m.end(), self.quote).arguments()
            if args is None:
                continue
            calls.append(ToolCall(m.group(1), args))
            rest.append(text[last:m.start()])
            last = end + len(self.call_close) if text.startswith(self.call_close, end) else end
        out = "".join([*rest, text[last:]])
        for marker in (self.response_open, self.call_close):
            out = out.replace(marker, "")
        return out.strip(), calls


def _as_call(c) -> ToolCall:
    if isinstance(c, ToolCall):
        return c
    fn = c.get("function", c)
    args = fn.get("arguments", {})
    return ToolCall(fn["name"], json.loads(args or "{}") if isinstance(args, str) else dict(args))


class _Reader:
    """A reader of the call syntax's values from position `at` of `text` (just after a `{`)."""

    def __init__(self, text: str, at: int, quote: str):
        self.text, self.at, self.quote = text, at, quote

    def arguments(self) -> tuple[dict | None, int]:
        try:
            return self._pairs(), self.at
        except ValueError:
            return None, self.at

    def _pairs(self) -> dict:
        out = {}
        while self.at < len(self.text) and not self.text.startswith("}", self.at):
            colon = self.text.find(":", self.at)
            if colon < 0:
                raise ValueError("a key without a value")
            key = self.text[self.at:colon].strip().removeprefix(self.quote).removesuffix(self.quote)
            self.at = colon + 1
            out[key] = self._value()
            if self.text.startswith(",", self.at):
                self.at += 1
        self.at += 1
        return out

    def _value(self):
        t, i, q = self.text, self.at, self.quote
        if t.startswith(q, i):
            end = t.find(q, i + len(q))
            end = len(t) if end < 0 else end
            self.at = min(len(t), end + len(q))
            return t[i + len(q):end]
        if t.startswith("{", i):
            self.at = i + 1
            return self._pairs()
        if t.startswith("[", i):
            self.at, items = i + 1, []
            while self.at < len(t) and not t.startswith("]", self.at):
                items.append(self._value())
                if t.startswith(",", self.at):
                    self.at += 1
            self.at += 1
            return items
        m = re.compile(r"[^,}\]<]*").match(t, i)
        self.at = m.end()
        word = m.group(0).strip()
        if word in _CONSTS:
            return _CONSTS[word]
        try:
            return json.loads(word)
        except ValueError:
            return word


FUNCTIONGEMMA = CallFormat("<start_function_call>", "<end_function_call>", "<escape>", "<start_function_response>")
