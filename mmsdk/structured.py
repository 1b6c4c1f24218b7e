"""What `chat(..., tools=, schema=)` adds to a plain chat: the prompt additions, the grammar
constraint for decoding, and turning the constrained text back into tool calls or a validated object."""
import logging
import warnings
from dataclasses import dataclass, field

import pydantic

from . import tool_format_gemma
from .tool_format_functiongemma import FUNCTIONGEMMA
from .tool_format_gemma4 import GEMMA4
from .constrained import GrammarConstraint, json_grammar
from .errors import InputError
from .options import check_tool_choice
from .tool_retrieval import called_tools, select_tools
from .tool_schema import ToolSpec, output_schema, tool_spec
from .types import ToolCall

log = logging.getLogger(__name__)


@dataclass
class Plan:
    messages: list[dict]
    processors: list = field(default_factory=list)
    specs: list[ToolSpec] = field(default_factory=list)
    validator: pydantic.TypeAdapter | None = None
    fmt: object = tool_format_gemma  # the tool format (module or `CallFormat`) that parses the reply
    tools: list[dict] | None = None  # the tools as the chat template declares them, for formats the template writes

    def finish(self, text: str, finish_reason: str) -> tuple[str, list[ToolCall], object]:
        """(text, tool calls, parsed object) from the generated text."""
        calls, parsed = [], None
        if self.specs:
            text, calls = self.fmt.parse_tool_calls(text, self.specs)
        if self.validator is not None:
            try:
                parsed = self.validator.validate_json(text)
            except pydantic.ValidationError as e:
                # Unconstrained output may wrap its JSON in prose or a fence: take the first JSON value.
                parsed = self._validate_found(self.fmt.find_json(text))
                if parsed is None:
                    # Constrained, only a cut-off output (max_tokens) or a check JSON schema can't express gets here.
                    warnings.warn(f"output did not validate (finish_reason={finish_reason}): {e}", stacklevel=3)
        return text, calls, parsed

    def _validate_found(self, found):
        if found is None:
            return None
        try:
            return self.validator.validate_python(found)
        except pydantic.ValidationError:
            return None


def tool_format(template):
    """The tool format a checkpoint's chat template writes itself (FunctionGemma's, Gemma 4's), or None: then
    tools go in our own format (`tool_format_gemma`), as plain messages any template renders."""
    return next((f for f in (FUNCTIONGEMMA, GEMMA4) if template is not None and f.call_open in template.literal_text),
                None)


def plan(tokenizer, messages: list[dict], *, tools=None, schema=None, tool_choice: str = "auto",
         constrained: bool = True, max_tokens: int | None = None, fmt=None) -> Plan:
    """Messages ready for the chat template, and the constraint to decode them with (none when
    `constrained` is False: the reply is parsed as the model wrote it), closing the output within
    `max_tokens`. `fmt`: the tool format module (`tool_format` of the template; ours by default)."""
    fmt = fmt or tool_format_gemma
    specs = [tool_spec(t) for t in tools or ()]
    if specs and schema is not None:
        raise InputError("chat takes tools= or schema=, not both")
    if len({s.name for s in specs}) != len(specs):
        raise InputError(f"tool names must be unique, got {[s.name for s in specs]}")
    check_tool_choice(tool_choice, {s.name for s in specs})
    if schema is not None:
        json_schema, validator = output_schema(schema)
        msgs = fmt.prepare_messages(messages, [], fmt.render_schema_instruction(json_schema))
        grammar = [GrammarConstraint(tokenizer, json_grammar(json_schema), max_tokens)] if constrained else []
        return Plan(msgs, grammar, validator=validator, fmt=fmt)
    # Many tools: the prompt (and the grammar) get the few nearest the request, and any already called.
    specs = select_tools(specs, messages, keep={tool_choice, *called_tools(messages)})
    msgs = fmt.prepare_messages(messages, specs)
    if not specs:
        return Plan(msgs, fmt=fmt)
    grammar = [GrammarConstraint(tokenizer, fmt.call_grammar(specs, tool_choice), max_tokens)] if constrained else []
    # With tool_choice "none" the tools stay in the prompt (earlier turns call them) but none is parsed.
    declared = fmt.template_tools(specs) if hasattr(fmt, "template_tools") else None
    return Plan(msgs, grammar, specs if tool_choice != "none" else [], fmt=fmt, tools=declared)
