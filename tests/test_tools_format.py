"""The Gemma tool-use format: prompt rendering, tool messages, the call grammar and the parser."""
import json
from typing import Literal, Optional

import pytest

from mmsdk import tool_format_gemma as fmt
from mmsdk.tool_schema import tool_spec
from mmsdk.types import ToolCall


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius", days: Optional[int] = None,
                verbose: bool = False) -> dict:
    """Current weather for a city.

    Args:
        city: The city name.
    """


def ping() -> str:
    """Check the service."""


SPECS = [tool_spec(get_weather), tool_spec(ping)]


def test_prompt_shows_python_definitions_and_the_call_block():
    text = fmt.render_tools(SPECS)
    assert "```tool_code" in text and "```tool_output" in text
    assert ('def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius", '
            'days: int | None = None, verbose: bool = False):') in text
    assert "city: The city name." in text and "def ping():" in text


def test_tool_messages_become_alternating_turns():
    msgs = [{"role": "user", "content": "Weather in Oslo and Rome?"},
            {"role": "assistant", "content": "", "tool_calls": [ToolCall("get_weather", {"city": "Oslo"}),
                                                                {"name": "get_weather", "arguments": '{"city": "Rome"}'}]},
            {"role": "tool", "content": {"temp": 3}}, {"role": "tool", "content": "sunny"}]
    out = fmt.prepare_messages(msgs, SPECS)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[2]["content"] == '```tool_code\nget_weather(city="Oslo")\nget_weather(city="Rome")\n```'
    assert out[3]["content"] == '```tool_output\n{"temp": 3}\n```\n```tool_output\nsunny\n```'


@pytest.mark.parametrize("text,calls", [
    ('```tool_code\nget_weather(city="Paris", days=3)\n```', [("get_weather", {"city": "Paris", "days": 3})]),
    ("```tool_code\nget_weather(city='Paris', verbose=True)\nping()\n```",
     [("get_weather", {"city": "Paris", "verbose": True}), ("ping", {})]),
    ('```python\nprint(functions.get_weather("Paris"))\n```', [("get_weather", {"city": "Paris"})]),
    ('get_weather(city="Paris", days=null)', [("get_weather", {"city": "Paris", "days": None})]),
    ('[get_weather(city="A"), ping()]', [("get_weather", {"city": "A"}), ("ping", {})]),
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}', [("get_weather", {"city": "Paris"})]),
    ('```json\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n```', [("get_weather", {"city": "Paris"})]),
    ('[{"function": {"name": "ping", "arguments": "{}"}}]', [("ping", {})]),
    ('Sure! ```tool_code\nget_weather(city="Paris")\n```', [("get_weather", {"city": "Paris"})]),
    ('```tool_code\nget_weather(city="Paris"', [("get_weather", {"city": "Paris"})]),  # unclosed fence
])
def test_parser_reads_python_and_json_calls(text, calls):
    _, got = fmt.parse_tool_calls(text, SPECS)
    assert [(c.name, c.arguments) for c in got] == calls


@pytest.mark.parametrize("text", [
    "It is sunny in Paris.", "print the report", "x = 3", "```tool_code\nnot a call(\n```", "{broken json",
    "```python\nimport os\n```", "",
])
def test_parser_finds_no_call_in_prose_or_garbage(text):
    rest, calls = fmt.parse_tool_calls(text, SPECS)
    assert calls == []


def test_parser_keeps_the_text_around_calls():
    rest, calls = fmt.parse_tool_calls('Let me check.\n```tool_code\nping()\n```', SPECS)
    assert rest == "Let me check." and calls == [ToolCall("ping", {})]


def test_render_call_round_trips_through_the_parser():
    call = ToolCall("get_weather", {"city": 'Pa"ris\n', "days": 2, "verbose": False, "x": None, "l": [1, {"a": True}]})
    _, calls = fmt.parse_tool_calls(f"```tool_code\n{fmt.render_call(call)}\n```")
    assert calls == [call]


def test_grammar_lists_each_tool_and_choice():
    g = fmt.call_grammar(SPECS, "auto")
    assert g.startswith("start: calls | TEXT") and '"get_weather("' in g and '"ping("' in g
    assert fmt.call_grammar(SPECS, "required").startswith("start: calls\n")
    only = fmt.call_grammar(SPECS, "ping")
    assert '"ping("' in only and "get_weather" not in only
    with pytest.raises(ValueError):
        fmt.call_grammar(SPECS, "nope")


def test_schema_instruction_is_json():
    text = fmt.render_schema_instruction({"type": "object"})
    assert json.loads(text.split("\n", 1)[1]) == {"type": "object"}
