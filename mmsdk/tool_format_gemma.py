"""Gemma 3's tool-use format, as Google documents it: the functions are shown as Python definitions
in the prompt, the model calls them in a fenced ```tool_code block in Python call syntax, and the
results come back in a ```tool_output block in the next user turn.

This module renders that prompt, turns tool messages into plain turns, builds the grammar that
constrains a reply to text or a valid call block, and parses calls back out of any reply,
constrained or not (Python calls or JSON objects, fenced or bare)."""
import ast
import json
import re

from .constrained import json_value_grammar
from .tool_schema import ToolSpec
from .types import ToolCall

CALL_OPEN, CALL_CLOSE = "```tool_code\n", "\n```"
MAX_CALLS = 4  # per reply: bounds the length of a constrained call block

_INSTRUCTIONS = """You can call the Python functions defined below. To call one, reply with only a \
```tool_code block holding the call, with keyword arguments:
```tool_code
function_name(argument="value")
```
The result comes back in a ```tool_output block. Use it to call another function, or answer the user \
in plain text. Call only the functions defined here."""


# ---- prompt ----------------------------------------------------------------------------------
def render_tools(specs: list[ToolSpec]) -> str:
    """The system text that defines the tools."""
    classes = {}
    defs = [_render_def(spec, classes) for spec in specs]  # fills `classes` with the models they use
    body = "\n\n".join([*(c for c in classes.values() if c), *defs])
    return f"{_INSTRUCTIONS}\n\n```python\n{body}\n```"


def render_schema_instruction(schema: dict) -> str:
    return ("Reply with only a JSON value that follows this JSON schema:\n"
            + json.dumps(schema, ensure_ascii=False))


def render_call(call: ToolCall) -> str:
    args = ", ".join(f"{k}={_py_literal(v)}" for k, v in call.arguments.items())
    return f"{call.name}({args})"


def prepare_messages(messages: list[dict], specs: list[ToolSpec], extra_system: str | None = None) -> list[dict]:
    """Messages in plain user/assistant/system turns: the tool definitions (and `extra_system`) as a
    system message, assistant tool calls as ```tool_code blocks, tool results as ```tool_output blocks
    (consecutive results share one user turn, since Gemma's turns alternate)."""
    system = [s for s in (render_tools(specs) if specs else None, extra_system) if s]
    out = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    for msg in messages:
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "tool":
            block = f"```tool_output\n{_result_text(msg.get('content'))}\n```"
            if out and out[-1].get("_tool_output"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_output": True})
        elif role == "assistant" and msg.get("tool_calls"):
            calls = "\n".join(render_call(_as_call(c)) for c in msg["tool_calls"])
            text = msg.get("content") or ""
            out.append({"role": "assistant", "content": f"{text}\n{CALL_OPEN}{calls}{CALL_CLOSE}".lstrip()})
        else:
            out.append(msg)
    return [{k: v for k, v in m.items() if k != "_tool_output"} if isinstance(m, dict) else m for m in out]


def _render_def(spec: ToolSpec, classes: dict) -> str:
    params = spec.parameters
    defs = params.get("$defs", {})
    required = set(params.get("required", ()))
    args, docs = [], []
    props = params.get("properties", {})
    for name in sorted(props, key=lambda n: n not in required):  # Python wants required ones first
        schema = props[name]
        arg = f"{name}: {_py_type(schema, defs, classes)}"
        if name not in required:
            arg += f" = {_py_literal(schema['default'])}" if "default" in schema else " = None"
        args.append(arg)
        if schema.get("description"):
            docs.append(f"        {name}: {schema['description']}")
    doc = spec.description or spec.name
    if docs:
        doc += "\n\n    Args:\n" + "\n".join(docs)
    return f'def {spec.name}({", ".join(args)}):\n    """{doc}\n    """'


def _py_type(schema: dict, defs: dict, classes: dict) -> str:
    """A Python annotation for a JSON schema, for the prompt only; objects become small classes."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name not in classes and name in defs:
            classes[name] = ""  # placeholder first: a recursive model refers to itself
            classes[name] = _render_class(name, defs[name], defs, classes)
        return name
    if "enum" in schema:
        return f"Literal[{', '.join(_py_literal(v) for v in schema['enum'])}]"
    if "const" in schema:
        return f"Literal[{_py_literal(schema['const'])}]"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_py_type(s, defs, classes) for s in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_py_type({**schema, "type": k}, defs, classes) for k in kind)
    if kind == "array":
        return f"list[{_py_type(schema.get('items', {}), defs, classes)}]"
    if kind == "object":
        if schema.get("properties"):
            name = f"Object{len(classes) + 1}"
            classes[name] = _render_class(name, schema, defs, classes)
            return name
        extra = schema.get("additionalProperties")
        return f"dict[str, {_py_type(extra, defs, classes)}]" if isinstance(extra, dict) and extra else "dict"
    return {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}.get(kind, "Any")


def _render_class(name: str, schema: dict, defs: dict, classes: dict) -> str:
    required = set(schema.get("required", ()))
    lines = [f"class {name}:"]
    if schema.get("description"):
        lines.append(f'    """{schema["description"]}"""')
    for field, sub in schema.get("properties", {}).items():
        opt = "" if field in required else " = None"
        lines.append(f"    {field}: {_py_type(sub, defs, classes)}{opt}")
    return "\n".join(lines if len(lines) > 1 else [*lines, "    pass"])


def _py_literal(v) -> str:
    """A Python literal for a JSON value (strings with JSON escapes, which Python reads the same)."""
    if v is None or isinstance(v, bool):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_py_literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_py_literal(str(k))}: {_py_literal(x)}" for k, x in v.items()) + "}"
    if hasattr(v, "value"):  # an Enum member
        return _py_literal(v.value)
    return repr(v)


def _result_text(content) -> str:
    if isinstance(content, str):
        return content
    return json.dumps(content, ensure_ascii=False, default=str)


def _as_call(c) -> ToolCall:
    if isinstance(c, ToolCall):
        return c
    fn = c.get("function", c)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        args = json.loads(args or "{}")
    return ToolCall(fn["name"], args)


# ---- grammar ---------------------------------------------------------------------------------
def call_grammar(specs: list[ToolSpec], tool_choice: str = "auto") -> str:
    """A Lark grammar (llguidance dialect) for a reply: a ```tool_code block of 1..MAX_CALLS valid
    calls ("required", or a tool's name: calls of that tool only), plain text that does not open
    a fence ("none"), or either ("auto")."""
    if tool_choice == "none":
        return f"start: TEXT\n{_TEXT}"
    if tool_choice not in ("auto", "required") and tool_choice not in {s.name for s in specs}:
        raise ValueError(f"tool_choice must be 'auto', 'required', 'none' or a tool's name, got {tool_choice!r}")
    chosen = [s for s in specs if tool_choice in ("auto", "required") or s.name == tool_choice]
    rules = [f"call: {' | '.join(f'c{i}' for i in range(len(chosen)))}"]
    for i, spec in enumerate(chosen):
        rules.append(f"c{i}: {json.dumps(spec.name + '(')} {_args_expr(spec)} \")\"")
    calls = f'{json.dumps(CALL_OPEN)} call ("\\n" call){{0,{MAX_CALLS - 1}}} {json.dumps(CALL_CLOSE)}'
    start = f"start: calls | TEXT\n{_TEXT}" if tool_choice == "auto" else "start: calls"
    return "\n".join([start, f"calls: {calls}", *rules])


_TEXT = r"TEXT: /[^`\s](.|\n)*/"  # a plain-text reply: anything that does not open a fence


def _args_expr(spec: ToolSpec) -> str:
    """Keyword arguments in declaration order, each optional one may be left out; commas only between."""
    params = spec.parameters
    defs = params.get("$defs")
    required = set(params.get("required", ()))
    items = [(name, _value_expr(schema, defs), name in required)
             for name, schema in params.get("properties", {}).items()]

    def after(k: int) -> str:  # the rest, once something was written: each item needs a leading comma
        if k == len(items):
            return ""
        name, value, req = items[k]
        part = f'", {name}=" {value}'
        return f"{part if req else f'({part})?'} {after(k + 1)}".strip()

    def first(k: int) -> str:  # the rest, nothing written yet
        if k == len(items):
            return ""
        name, value, req = items[k]
        here = f'"{name}=" {value} {after(k + 1)}'.strip()
        if req:
            return f"({here})"
        rest = first(k + 1)
        return f"({here} | {rest})" if rest else f"({here})?"

    return first(0) or '""'


def _value_expr(schema: dict, defs: dict | None) -> str:
    """A Python literal for one argument: JSON for strings, numbers, lists and objects (Python reads
    them alike), Python spellings for the top-level True/False/None."""
    for key in ("anyOf", "oneOf"):
        if key in schema and len(schema) <= 3:  # a plain union (description/default aside)
            return "(" + " | ".join(_value_expr(s, defs) for s in schema[key]) + ")"
    kind = schema.get("type")
    if kind == "boolean":
        return '("True" | "False")'
    if kind == "null":
        return '"None"'
    if isinstance(kind, list) and len(kind) > 1:
        return "(" + " | ".join(_value_expr({**schema, "type": k}, defs) for k in kind) + ")"
    return json_value_grammar(schema, defs)


# ---- parsing ---------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*(tool_code|tool_call|tool_calls|python|py|json)?[ \t]*\n?(.*?)(?:```|$)", re.S)


def parse_tool_calls(text: str, specs: list[ToolSpec] = ()) -> tuple[str, list[ToolCall]]:
    """(the text outside call blocks, the calls) from a reply; never raises. Reads ```tool_code
    (or ```python / ```json) blocks, or a bare call / JSON object making up the whole reply."""
    positional = {s.name: list(s.parameters.get("properties", {})) for s in specs}
    calls, rest, last = [], [], 0
    for m in _FENCE.finditer(text):
        found = _parse_block(m.group(2), positional)
        if found or m.group(1) in ("tool_code", "tool_call", "tool_calls"):
            calls += found
            rest.append(text[last:m.start()])
            last = m.end()
    rest.append(text[last:])
    if not calls:
        found = _parse_block(text, positional, bare=True)
        if found:
            return "", found
    return "".join(rest).strip(), calls


def _parse_block(body: str, positional: dict, bare: bool = False) -> list[ToolCall]:
    body = body.strip()
    if not body:
        return []
    if body[0] in "{[":
        try:
            return _calls_from_json(json.loads(body))
        except ValueError:
            pass
    tree = _parse_python(body)
    if tree is None:
        return [] if bare else _calls_from_json(find_json(body))
    calls = []
    for stmt in tree.body:
        found = [_call_from_ast(n, body, positional) for n in _call_nodes(getattr(stmt, "value", None))]
        found = [c for c in found if c] if isinstance(stmt, ast.Expr) else []
        if bare and not found:
            return []  # prose that happens to parse as Python is not a call
        calls += found
    return calls


def _parse_python(body: str):
    """The module `body` parses to, closing a call cut off at the end (a reply hit max_tokens)."""
    for tail in ("", ")", '")', "])", "})", '"])', '"})'):
        try:
            return ast.parse(body + tail)
        except SyntaxError:
            continue
    return None


def _call_nodes(node) -> list:
    if isinstance(node, (ast.List, ast.Tuple)):
        return [n for e in node.elts for n in _call_nodes(e)]
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id == "print" and len(node.args) == 1:
            return _call_nodes(node.args[0])
        return [node]
    return []


def _call_from_ast(node: ast.Call, src: str, positional: dict) -> ToolCall | None:
    name = ast.unparse(node.func).rsplit(".", 1)[-1]
    if not name.isidentifier():
        return None
    args = {}
    names = positional.get(name, [])
    try:
        for i, a in enumerate(node.args):
            args[names[i] if i < len(names) else f"arg{i}"] = _literal(a, src)
        for kw in node.keywords:
            if kw.arg is None:  # **{...}
                args.update(_literal(kw.value, src))
            else:
                args[kw.arg] = _literal(kw.value, src)
    except (ValueError, TypeError, SyntaxError):
        return None
    return ToolCall(name, args)


def _literal(node, src: str):
    """A value written in Python or JSON spelling (True or true, None or null)."""
    segment = ast.get_source_segment(src, node)
    if segment is not None:
        try:
            return json.loads(segment)
        except ValueError:
            pass
    return ast.literal_eval(_JsonNames().visit(node))


class _JsonNames(ast.NodeTransformer):
    def visit_Name(self, node):
        consts = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
        if node.id in consts:
            return ast.Constant(consts[node.id])
        raise ValueError(f"not a literal: {node.id}")


def _calls_from_json(obj) -> list[ToolCall]:
    if isinstance(obj, list):
        return [c for o in obj for c in _calls_from_json(o)]
    if not isinstance(obj, dict):
        return []
    for key in ("tool_call", "function_call", "function"):
        if isinstance(obj.get(key), dict) and "name" in obj[key]:
            return _calls_from_json(obj[key])
    if isinstance(obj.get("tool_calls"), list):
        return _calls_from_json(obj["tool_calls"])
    name = obj.get("name")
    if not isinstance(name, str):
        return []
    args = next((obj[k] for k in ("arguments", "parameters", "args", "kwargs") if k in obj), {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return []
    return [ToolCall(name, args)] if isinstance(args, dict) else []


def find_json(text: str):
    """The first JSON object or array in `text`, or None."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"[{\[]", text):
        try:
            return dec.raw_decode(text, m.start())[0]
        except ValueError:
            continue
    return None
