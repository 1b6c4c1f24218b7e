"""Tools from plain Python callables: a JSON schema from type hints and docstrings, and argument
validation against it (pydantic does both the schema of each type and the validation)."""
import inspect
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

import pydantic


@dataclass(frozen=True)
class ToolSpec:
    """One tool: what the model sees (`name`, `description`, `parameters` as a JSON schema) and,
    for a Python callable, how to validate arguments and run it."""
    name: str
    description: str
    parameters: dict
    fn: Callable | None = None
    _model: type | None = None

    def validate(self, arguments: dict) -> dict:
        """Keyword arguments converted to the annotated types; `pydantic.ValidationError` if they don't fit."""
        if not isinstance(arguments, dict):
            raise TypeError(f"arguments of {self.name} must be an object, got {type(arguments).__name__}")
        if self._model is None:
            return dict(arguments)
        obj = self._model.model_validate(arguments)
        return {k: getattr(obj, k) for k in obj.model_fields_set | _required(self.parameters)}

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


def tool_spec(tool) -> ToolSpec:
    """A `ToolSpec` from a callable, a `ToolSpec`, or a dict in the OpenAI function format."""
    if isinstance(tool, ToolSpec):
        return tool
    if isinstance(tool, dict):
        fn = tool.get("function", tool)
        if "name" not in fn:
            raise ValueError(f"a tool given as a dict needs a 'name', got {tool!r}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        return ToolSpec(fn["name"], fn.get("description", ""), params)
    if callable(tool):
        return _from_callable(tool)
    raise TypeError(f"a tool must be a function, a ToolSpec or a dict, got {type(tool).__name__}")


def _from_callable(fn: Callable) -> ToolSpec:
    name = getattr(fn, "__name__", None)
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"a tool needs a Python identifier as its name, got {name!r}")
    summary, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
    try:
        hints = get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = getattr(fn, "__annotations__", {})
    fields, props, required, defs = {}, {}, [], {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            warnings.warn(f"{name}: *{p.name} is not shown to the model", stacklevel=3)
            continue
        tp = hints.get(p.name, Any)
        if tp is Any and p.default not in (p.empty, None):  # unannotated: the default's type is the best guess
            tp = type(p.default)
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (tp, default)
        schema = type_schema(tp, defs)
        if p.name in arg_docs:
            schema["description"] = arg_docs[p.name]
        if default is ...:
            required.append(p.name)
        elif _jsonable(default):
            schema["default"] = default
        props[p.name] = schema
    params = {"type": "object", "properties": props, "required": required}
    if defs:
        params["$defs"] = defs
    model = pydantic.create_model(f"{name}_args", __config__=pydantic.ConfigDict(
        arbitrary_types_allowed=True, extra="forbid"), **fields)
    return ToolSpec(name, summary, params, fn, model)


def type_schema(tp, defs: dict | None = None) -> dict:
    """JSON schema of one type, titles dropped; nested models' definitions go into `defs`."""
    if tp is inspect.Parameter.empty or tp is Any:
        return {}
    schema = pydantic.TypeAdapter(tp).json_schema()
    schema = _strip_titles(schema)
    found = schema.pop("$defs", {})
    if defs is not None:
        defs.update(found)
    elif found:
        schema["$defs"] = found
    return schema


def output_schema(schema) -> tuple[dict, pydantic.TypeAdapter]:
    """(JSON schema, validator) for `chat(..., schema=...)`: a pydantic model, dataclass, TypedDict,
    any annotated type, or a plain JSON-schema dict (validated only by the grammar then)."""
    if isinstance(schema, dict):
        return schema, pydantic.TypeAdapter(dict)
    return type_schema(schema), pydantic.TypeAdapter(schema)


def _strip_titles(node):
    """pydantic adds a `title` to every schema; it only costs prompt tokens."""
    if isinstance(node, list):
        return [_strip_titles(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "title" and isinstance(v, str):
            continue
        if k in ("properties", "$defs", "definitions") and isinstance(v, dict):
            out[k] = {name: _strip_titles(s) for name, s in v.items()}
        else:
            out[k] = _strip_titles(v)
    return out


def _required(params: dict) -> set:
    return set(params.get("required", ()))


def _jsonable(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool)) or (
        isinstance(v, (list, tuple)) and all(_jsonable(x) for x in v))


# ---- docstrings ------------------------------------------------------------------------------
_GOOGLE_ARGS = re.compile(r"^(Args|Arguments|Parameters|Params)\s*:\s*$")
_SECTION = re.compile(r"^(Returns?|Raises|Yields?|Examples?|Notes?|See Also|Warnings?|Attributes|References)\s*:?\s*$")
_GOOGLE_ITEM = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_ITEM = re.compile(r"^(\w+)\s*(:.*)?$")
_SPHINX_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(summary, {argument: description}) from a Google, NumPy or Sphinx style docstring."""
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    summary, args, i = [], {}, 0
    while i < len(lines):
        line = lines[i]
        if _GOOGLE_ARGS.match(line.strip()) and not _is_underline(lines, i + 1):
            i = _google_args(lines, i + 1, args)
            continue
        if line.strip() in ("Parameters", "Arguments", "Args", "Other Parameters") and _is_underline(lines, i + 1):
            i = _numpy_args(lines, i + 2, args)
            continue
        m = _SPHINX_PARAM.match(line.strip())
        if m:
            args[m.group(1)] = m.group(2).strip()
        elif _is_underline(lines, i + 1):  # any other NumPy section: skip to the next header
            i += 2
            while i < len(lines) and not _is_underline(lines, i + 1):
                i += 1
            continue
        elif _SECTION.match(line.strip()):  # any other Google section: skip its indented body
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > 0):
                i += 1
            continue
        elif not args and not line.strip().startswith(":"):
            summary.append(line)
        i += 1
    return " ".join(" ".join(summary).split()), args


def _is_underline(lines, i) -> bool:
    return i < len(lines) and bool(re.fullmatch(r"\s*-{3,}\s*", lines[i]))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _google_args(lines, i, args) -> int:
    base, current = None, None
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if base is None:
            base = _indent(line)
        if _indent(line) < base or (_indent(line) == 0 and base == 0 and _SECTION.match(line.strip())):
            break
        m = _GOOGLE_ITEM.match(line.strip())
        if _indent(line) == base and m:
            current = m.group(1).lstrip("*")
            args[current] = m.group(3).strip()
        elif current:
            args[current] = f"{args[current]} {line.strip()}".strip()
        i += 1
    return i


def _numpy_args(lines, i, args) -> int:
    current = None
    while i < len(lines):
        line = lines[i]
        if line.strip() and _indent(line) == 0:
            if _is_underline(lines, i + 1):
                break
            m = _NUMPY_ITEM.match(line.strip())
            if not m:
                break
            current = m.group(1)
            args[current] = ""
        elif line.strip() and current:
            args[current] = f"{args[current]} {line.strip()}".strip()
        i += 1
    return i
