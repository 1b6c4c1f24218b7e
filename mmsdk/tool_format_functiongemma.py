"""FunctionGemma's tool-call format, as its chat template (google/functiongemma-270m-it) writes it:
the template declares the tools in the developer turn, and the model calls them as

    <start_function_call>call:get_weather{city:<escape>Paris<escape>,days:3}<end_function_call>

(strings between `<escape>` tokens, other values bare, keys in sorted order), several calls in a
row for parallel calls, then `<start_function_response>`, after which the results come back as
`<start_function_response>response:get_weather{value:<escape>...<escape>}<end_function_response>`.

The template itself renders the declarations, earlier calls and results; this module puts the
messages into the shape it reads (OpenAI-style `tool_calls`, `tool` messages with a name), builds
the grammar that constrains a reply to text or calls, and parses calls back out of a reply.
Same interface as `tool_format_gemma`, which `structured.plan` takes instead where the template is FunctionGemma's."""
import json
import re

from .tool_format_gemma import find_json, render_schema_instruction  # noqa: F401  (the schema path is shared)
from .tool_schema import ToolSpec
from .types import ToolCall

CALL_OPEN, CALL_CLOSE, ESCAPE = "<start_function_call>", "<end_function_call>", "<escape>"
RESPONSE_OPEN = "<start_function_response>"  # the model writes it after its calls: the results go there
MARKERS = (CALL_OPEN, CALL_CLOSE, ESCAPE, RESPONSE_OPEN)
MAX_CALLS = 4  # per reply: bounds the length of a constrained reply
MAX_STRING_CHARS = 160


# ---- prompt ----------------------------------------------------------------------------------
def template_tools(specs: list[ToolSpec]) -> list[dict]:
    """The tools as the template declares them (OpenAI-style function schemas)."""
    return [{"type": "function", "function": {"name": s.name, "description": s.description or s.name,
                                              "parameters": s.parameters}} for s in specs]


def prepare_messages(messages: list[dict], specs: list[ToolSpec], extra_system: str | None = None) -> list[dict]:
    """Messages as the template reads them: assistant calls as `tool_calls` of {"function": {"name",
    "arguments"}}, each tool result named after its call (from the call before it when the message
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
            answered += 1
        out.append(msg)
    if extra_system:
        if out and out[0].get("role") in ("system", "developer") and isinstance(out[0].get("content"), str):
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{extra_system}"}
        else:
            out.insert(0, {"role": "system", "content": extra_system})
    return out


def _as_call(c) -> ToolCall:
    if isinstance(c, ToolCall):
        return c
    fn = c.get("function", c)
    args = fn.get("arguments", {})
    return ToolCall(fn["name"], json.loads(args or "{}") if isinstance(args, str) else dict(args))


def render_call(call: ToolCall) -> str:
    """A call as the template writes it (keys sorted case-insensitively, as Jinja's `dictsort`)."""
    args = ",".join(f"{k}:{_value(v)}" for k, v in sorted(call.arguments.items(), key=lambda kv: kv[0].lower()))
    return f"{CALL_OPEN}call:{call.name}{{{args}}}{CALL_CLOSE}"


def _value(v) -> str:
    """The template's `format_argument(v, escape_keys=False)`."""
    if isinstance(v, str):
        return f"{ESCAPE}{v}{ESCAPE}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in sorted(v.items(), key=lambda kv: str(kv[0]).lower())) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


# ---- grammar ---------------------------------------------------------------------------------
def call_grammar(specs: list[ToolSpec], tool_choice: str = "auto") -> str:
    """A Lark grammar (llguidance dialect) for a reply: 1..MAX_CALLS calls with valid arguments, then
    optionally `<start_function_response>` ("required", or a tool's name: calls of that tool only),
    plain text that opens no call ("none"), or either ("auto")."""
    if tool_choice == "none":
        return f"start: TEXT\n{_TEXT}"
    if tool_choice not in ("auto", "required") and tool_choice not in {s.name for s in specs}:
        raise ValueError(f"tool_choice must be 'auto', 'required', 'none' or a tool's name, got {tool_choice!r}")
    chosen = [s for s in specs if tool_choice in ("auto", "required") or s.name == tool_choice]
    rules = [f"call: {' | '.join(f'c{i}' for i in range(len(chosen)))}", _STRING]
    for i, spec in enumerate(chosen):
        rules.append(f'c{i}: {_lit(CALL_OPEN + "call:" + spec.name + "{")} {_args_expr(spec)} {_lit("}" + CALL_CLOSE)}')
    calls = f"calls: call{{1,{MAX_CALLS}}} {_lit(RESPONSE_OPEN)}?"
    start = f"start: calls | TEXT\n{_TEXT}" if tool_choice == "auto" else "start: calls"
    return "\n".join([start, calls, *rules])


_TEXT = r"TEXT: /[^<\s](.|\n)*/"  # a plain-text reply: anything that does not open a call
_STRING = f'string: {json.dumps(ESCAPE)} /[^<]{{0,{MAX_STRING_CHARS}}}/ {json.dumps(ESCAPE)}'


def _lit(s: str) -> str:
    return json.dumps(s)


def _args_expr(spec: ToolSpec) -> str:
    """The arguments in the template's (sorted) key order, optional ones may be left out, commas only between."""
    params = spec.parameters
    defs = params.get("$defs", {})
    required = set(params.get("required", ()))
    items = [(name, _value_expr(schema, defs), name in required)
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


def _value_expr(schema: dict, defs: dict) -> str:
    """One value as the template writes it: strings escaped, numbers and booleans bare, lists and
    objects in its bracket syntax (object keys sorted)."""
    if "$ref" in schema:
        return _value_expr(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return "(" + " | ".join(_value_expr(s, defs) for s in schema[key]) + ")"
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return "(" + " | ".join(_lit(_value(v)) for v in values) + ")"
    kind = schema.get("type")
    if isinstance(kind, list):
        return "(" + " | ".join(_value_expr({**schema, "type": k}, defs) for k in kind) + ")"
    if kind == "string":
        return "string"
    if kind == "integer":
        return r"/-?(0|[1-9][0-9]{0,14})/"
    if kind == "number":
        return r"/-?(0|[1-9][0-9]{0,14})(\.[0-9]{1,6})?/"
    if kind == "boolean":
        return '("true" | "false")'
    if kind == "null":
        return '"None"'
    if kind == "array":
        item = _value_expr(schema.get("items", {}), defs)
        return f'("[" ({item} ("," {item}){{0,15}})? "]")'
    if kind == "object" and schema.get("properties"):
        inner = ToolSpec("object", "", {**schema, "$defs": defs})
        return f'("{{" {_args_expr(inner)} "}}")'
    return f"(string | {_value_expr({'type': 'number'}, defs)} | (\"true\" | \"false\"))"  # untyped: a scalar


# ---- parsing ---------------------------------------------------------------------------------
_CALL = re.compile(rf"(?:{re.escape(CALL_OPEN)})?call:([A-Za-z_][\w.\-]*)\{{")


def parse_tool_calls(text: str, specs: list[ToolSpec] = ()) -> tuple[str, list[ToolCall]]:
    """(the text outside calls, the calls) from a reply; never raises. A call cut off at the end
    (max_tokens) is closed where it stops."""
    calls, rest, last = [], [], 0
    for m in _CALL.finditer(text):
        if m.start() < last or (not m.group(0).startswith(CALL_OPEN) and m.start() > 0 and text[m.start() - 1].isalnum()):
            continue
        args, end = _Reader(text, m.end()).arguments()
        if args is None:
            continue
        calls.append(ToolCall(m.group(1), args))
        rest.append(text[last:m.start()])
        last = end + len(CALL_CLOSE) if text.startswith(CALL_CLOSE, end) else end
    rest.append(text[last:])
    out = "".join(rest)
    for marker in (RESPONSE_OPEN, CALL_CLOSE):
        out = out.replace(marker, "")
    return out.strip(), calls


class _Reader:
    """A reader of the template's value syntax from position `at` of `text` (just after `{`)."""

    def __init__(self, text: str, at: int):
        self.text, self.at = text, at

    def arguments(self) -> tuple[dict | None, int]:
        try:
            args = self._pairs("}")
        except ValueError:
            return None, self.at
        return args, self.at

    def _pairs(self, close: str) -> dict:
        out = {}
        while self.at < len(self.text) and not self.text.startswith(close, self.at):
            colon = self.text.find(":", self.at)
            if colon < 0:
                raise ValueError("no key")
            key = self.text[self.at:colon].strip().removeprefix(ESCAPE).removesuffix(ESCAPE)
            self.at = colon + 1
            out[key] = self._value()
            if self.text.startswith(",", self.at):
                self.at += 1
        self.at += len(close) if self.at < len(self.text) else 0
        return out

    def _value(self):
        t, i = self.text, self.at
        if t.startswith(ESCAPE, i):
            end = t.find(ESCAPE, i + len(ESCAPE))
            end = len(t) if end < 0 else end
            self.at = min(len(t), end + len(ESCAPE))
            return t[i + len(ESCAPE):end]
        if t.startswith("{", i):
            self.at = i + 1
            return self._pairs("}")
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
        consts = {"true": True, "false": False, "null": None, "None": None, "True": True, "False": False}
        if word in consts:
            return consts[word]
        try:
            return json.loads(word)
        except ValueError:
            return word
