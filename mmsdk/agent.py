"""The agent loop: the model calls tools, we run them and feed the results back, until it answers.

Only registered tools run, and only with arguments that validate against their signatures. An
unknown name, bad arguments, a declined approval or an exception in the tool become the tool's
result, so the model sees what went wrong and the loop goes on."""
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic

from .tool_schema import ToolSpec, tool_spec
from .types import ToolCall

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 2000  # a tool's result is cut to this before it goes back into the prompt


@dataclass
class AgentStep:
    call: ToolCall
    result: Any = None  # what the tool returned, when it ran and returned
    error: str | None = None  # why it did not run or what it raised
    approved: bool = True


@dataclass
class AgentResult:
    text: str
    steps: list[AgentStep] = field(default_factory=list)
    finish_reason: str = "answer"  # "answer" (the model replied in text) or "max_steps"


def run_agent(asst, task: str, tools, *, max_steps: int = 5, approve: Callable[[ToolCall], bool] | None = None,
              system: str | None = None, messages: list[dict] | None = None, tool_choice: str = "auto",
              call_once: bool = False, **sampling) -> AgentResult:
    """Run `task` with `tools` (callables or ToolSpecs with a function). Each of up to `max_steps`
    model turns may call tools (`tool_choice="required"`: must call one); `approve(call) -> bool`,
    when given, is asked before each call. With `call_once`, a tool that returned is not offered
    again (a small model otherwise repeats its first call). After `max_steps` tool turns, or once
    every tool was used, the model is asked for its answer without tools."""
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    specs = {s.name: s for s in (tool_spec(t) for t in tools)}
    for s in specs.values():
        if s.fn is None:
            raise ValueError(f"tool {s.name!r} has no function to run; pass the callable")
    history = [*(messages or [])]
    if system:
        history.insert(0, {"role": "system", "content": system})
    history.append({"role": "user", "content": task})
    steps: list[AgentStep] = []
    def offered() -> list[ToolSpec]:
        used = {s.call.name for s in steps if s.error is None} if call_once else set()
        return [s for name, s in specs.items() if name not in used]

    for _ in range(max_steps):
        if not offered():
            break
        reply = asst.chat(history, tools=offered(), tool_choice=tool_choice, **sampling)
        if not reply.tool_calls:
            return AgentResult(reply.text, steps, "answer")
        history.append({"role": "assistant", "content": reply.text, "tool_calls": reply.tool_calls})
        for call in reply.tool_calls:
            done = next((s for s in steps if s.call == call and s.error is None), None)
            # A small model loops on its last call: a repeat is answered from the first, not re-run.
            step = execute(call, specs, approve) if done is None else AgentStep(
                call, error=f"{call.name} was already called with these arguments and returned "
                            f"{_feedback(done)}; call another tool or answer")
            steps.append(step)
            history.append({"role": "tool", "name": call.name, "content": _feedback(step)})
    reply = asst.chat(history, tools=list(specs.values()), tool_choice="none", **sampling)
    return AgentResult(reply.text, steps, "max_steps" if offered() else "answer")


def execute(call: ToolCall, specs: dict[str, ToolSpec], approve=None) -> AgentStep:
    """Run one call if its tool is registered, its arguments validate and it is approved; never raises."""
    spec = specs.get(call.name)
    if spec is None:
        return AgentStep(call, error=f"unknown tool {call.name!r}; available: {', '.join(specs) or 'none'}")
    try:
        kwargs = spec.validate(call.arguments)
    except (pydantic.ValidationError, TypeError) as e:
        return AgentStep(call, error=f"invalid arguments for {call.name}: {_short_validation(e)}")
    if approve is not None:
        try:
            ok = bool(approve(call))
        except Exception as e:  # a failing approval callback declines the call
            log.warning("approve(%s) raised %r; call declined", call.name, e)
            ok = False
        if not ok:
            return AgentStep(call, error="the user declined this call", approved=False)
    try:
        result = spec.fn(**kwargs)
    except Exception as e:
        log.info("tool %s raised %r", call.name, e)
        return AgentStep(call, error=f"{type(e).__name__}: {e}")
    return AgentStep(call, result=result)


def _feedback(step: AgentStep) -> str:
    if step.error is not None:
        return f"Error: {step.error}"
    r = step.result
    text = r if isinstance(r, str) else json.dumps(r, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + " ...(cut)"


def _short_validation(e: Exception) -> str:
    if isinstance(e, pydantic.ValidationError):
        return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'arguments'}: {err['msg']}" for err in e.errors())
    return str(e)
