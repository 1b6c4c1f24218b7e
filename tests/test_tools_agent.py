"""The agent loop's error paths with real tools, driven by a scripted model: nothing unregistered
runs, bad arguments and raising tools go back to the model as errors, approval is asked."""
from pathlib import Path

import pytest

from mmsdk.agent import AgentResult, execute, run_agent
from mmsdk.tool_schema import tool_spec
from mmsdk.types import Reply, ToolCall

RAN = []


def count_lines(path: str) -> int:
    """Number of lines in a text file."""
    RAN.append(("count_lines", path))
    return len(Path(path).read_text().splitlines())


def divide(a: float, b: float) -> float:
    """a divided by b."""
    RAN.append(("divide", a, b))
    return a / b


def shutdown() -> str:
    """Never registered: must never run."""
    RAN.append(("shutdown",))
    return "down"


class ScriptedModel:
    """Stands in for the Assistant: replies with the scripted tool calls, then with text."""

    def __init__(self, *turns):
        self.turns, self.seen = list(turns), []

    def chat(self, messages, tools=None, tool_choice="auto", **kw):
        self.seen.append((list(messages), tool_choice))
        turn = self.turns.pop(0) if self.turns and tool_choice != "none" else "final answer"
        if isinstance(turn, str):
            return Reply(text=turn)
        return Reply(text="", tool_calls=turn)


@pytest.fixture(autouse=True)
def _clear():
    RAN.clear()


def _tool_messages(model):
    return [m["content"] for m in model.seen[-1][0] if m["role"] == "tool"]


def test_two_step_task_runs_the_tools_and_feeds_results_back(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x\ny\nz\n")
    model = ScriptedModel([ToolCall("count_lines", {"path": str(f)})], [ToolCall("divide", {"a": 3, "b": 2})],
                          "It has 3 lines; half is 1.5.")
    res = run_agent(model, "count and halve", [count_lines, divide])
    assert isinstance(res, AgentResult) and res.finish_reason == "answer"
    assert res.text == "It has 3 lines; half is 1.5."
    assert [s.result for s in res.steps] == [3, 1.5]
    assert _tool_messages(model) == ["3", "1.5"]


def test_unknown_tool_never_runs_and_the_error_goes_back():
    model = ScriptedModel([ToolCall("shutdown", {})], "ok")
    res = run_agent(model, "stop it", [count_lines])
    assert RAN == [] and res.steps[0].error.startswith("unknown tool 'shutdown'")
    assert "available: count_lines" in _tool_messages(model)[0]


def test_wrong_argument_types_are_rejected_before_the_tool_runs():
    model = ScriptedModel([ToolCall("divide", {"a": "three", "b": 2}), ToolCall("divide", {"a": 1})],
                          [ToolCall("divide", {"a": 1, "b": 2, "c": 3})], "done")
    res = run_agent(model, "divide", [divide])
    assert RAN == [] and len(res.steps) == 3
    errors = [s.error for s in res.steps]
    assert "a: Input should be a valid number" in errors[0]
    assert "b: Field required" in errors[1] and "c: Extra inputs are not permitted" in errors[2]
    assert all(m.startswith("Error: invalid arguments for divide") for m in _tool_messages(model))


def test_a_raising_tool_does_not_stop_the_loop(tmp_path):
    model = ScriptedModel([ToolCall("divide", {"a": 1, "b": 0})],
                          [ToolCall("count_lines", {"path": str(tmp_path / "missing.txt")})], "gave up")
    res = run_agent(model, "try", [divide, count_lines])
    assert res.text == "gave up"
    assert res.steps[0].error == "ZeroDivisionError: float division by zero"
    assert res.steps[1].error.startswith("FileNotFoundError")
    assert _tool_messages(model)[0] == "Error: ZeroDivisionError: float division by zero"


def test_approval_is_asked_before_each_call_and_a_no_blocks_it():
    asked = []

    def approve(call):
        asked.append(call.name)
        return call.arguments.get("b") != 0

    model = ScriptedModel([ToolCall("divide", {"a": 1, "b": 0}), ToolCall("divide", {"a": 1, "b": 4})], "ok")
    res = run_agent(model, "divide", [divide], approve=approve)
    assert asked == ["divide", "divide"] and RAN == [("divide", 1.0, 4.0)]
    assert not res.steps[0].approved and res.steps[0].error == "the user declined this call"
    assert res.steps[1].result == 0.25


def test_a_raising_approval_callback_declines():
    def approve(call):
        raise RuntimeError("no UI")

    step = execute(ToolCall("divide", {"a": 1, "b": 2}), {"divide": tool_spec(divide)}, approve)
    assert RAN == [] and not step.approved


def test_max_steps_ends_with_a_turn_without_tools():
    model = ScriptedModel(*([[ToolCall("divide", {"a": 1, "b": 1})]] * 10))
    res = run_agent(model, "loop", [divide], max_steps=3)
    assert res.finish_reason == "max_steps" and len(res.steps) == 3 and res.text == "final answer"
    assert model.seen[-1][1] == "none"


def test_tools_without_a_function_are_refused():
    with pytest.raises(ValueError, match="no function"):
        run_agent(ScriptedModel(), "x", [{"name": "remote", "parameters": {"type": "object"}}])


def test_call_once_stops_offering_a_used_tool_and_repeats_are_not_rerun(tmp_path):
    model = ScriptedModel([ToolCall("divide", {"a": 1, "b": 2}), ToolCall("divide", {"a": 1, "b": 2})])
    res = run_agent(model, "x", [divide], call_once=True)
    assert RAN == [("divide", 1.0, 2.0)] and "already called" in res.steps[1].error
    assert res.finish_reason == "answer" and res.text == "final answer" and model.seen[-1][1] == "none"


@pytest.mark.slow
def test_the_bundled_model_runs_a_real_tool_end_to_end(bundled_asst, tmp_path, monkeypatch):
    """`Assistant.run_agent` on the real 270M model, no script: the model must write a call that parses,
    name the tool and copy the file's path into it; the tool really reads the file; its result goes
    back and the model answers. A wrong path makes the tool raise, so the step records an error."""
    monkeypatch.chdir(tmp_path)  # a short path to copy: the 270M model cuts pytest's 70-character ones
    f = "shopping.txt"
    (tmp_path / f).write_text("milk\neggs\nbread\nbutter\ntea\n")
    result = bundled_asst.run_agent(f"How many lines does the file {f} have?", [count_lines], max_steps=2,
                                    tool_choice="required", call_once=True, max_tokens=48)
    assert [s.call.name for s in result.steps] == ["count_lines"], result
    step = result.steps[0]
    assert step.error is None and step.call.arguments == {"path": f}, step
    assert RAN == [("count_lines", f)] and step.result == 5  # it ran, once, on the real file
    assert isinstance(result, AgentResult) and result.finish_reason == "answer" and result.text.strip()
