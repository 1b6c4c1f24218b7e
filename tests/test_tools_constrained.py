"""Constrained decoding on the bundled model: tool calls and schema outputs always parse and validate."""
import enum
from typing import Literal, Optional

import pydantic
import pytest
import torch

from mmsdk.constrained import GrammarConstraint, bounded, json_grammar


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Person(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=0, le=150)
    mood: Mood
    email: Optional[str] = None
    tags: list[str]


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius", days: Optional[int] = None) -> dict:
    """Current weather for a city."""
    return {"city": city, "temp": 21}


def test_bounded_closes_objects_and_caps_strings_without_touching_set_bounds():
    s = bounded({"type": "object", "properties": {"a": {"type": "string", "maxLength": 5},
                                                  "b": {"type": "array", "items": {"type": "string", "enum": ["x"]}}}})
    assert s["additionalProperties"] is False and s["properties"]["a"]["maxLength"] == 5
    assert s["properties"]["b"]["maxItems"] == 16 and "maxLength" not in s["properties"]["b"]["items"]
    n = bounded({"type": "integer", "minimum": 0})
    assert n["minimum"] == 0 and n["maximum"] == 10**15
    assert bounded({"type": "number"})["multipleOf"] == 1e-6
    assert bounded({"type": "object", "additionalProperties": {"type": "integer"}})["maxProperties"] == 16


@pytest.fixture(scope="module")
def asst():
    import mmsdk

    return mmsdk.load(threads=1)


@pytest.mark.slow
def test_mask_forces_a_valid_document_even_from_uniform_logits(asst):
    """With every logit equal, only the mask decides: the result must still be a valid Person."""
    con = GrammarConstraint(asst.tokenizer, json_grammar(Person.model_json_schema()))
    ids, gen = [], torch.Generator().manual_seed(0)
    for _ in range(300):
        logits = con(torch.zeros(asst.tokenizer.vocab_size), ids)
        if torch.isinf(logits).all():
            break
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        if token in asst.tokenizer.eos_ids:
            break
        ids.append(token)
    assert con.is_complete()
    Person.model_validate_json(asst.tokenizer.decode(ids))


@pytest.mark.slow
def test_schema_output_parses_and_validates(asst):
    reply = asst.chat([{"role": "user", "content": "Describe Ada, a happy mathematician."}], schema=Person)
    assert isinstance(reply.parsed, Person), reply.text


@pytest.mark.slow
def test_tool_call_parses_and_validates(asst):
    from mmsdk.tool_schema import tool_spec

    reply = asst.chat([{"role": "user", "content": "Weather in Lima?"}], tools=[get_weather], tool_choice="required")
    assert len(reply.tool_calls) >= 1 and reply.tool_calls[0].name == "get_weather"
    tool_spec(get_weather).validate(reply.tool_calls[0].arguments)


@pytest.mark.slow
def test_sampled_constrained_outputs_all_validate(asst):
    for seed in range(3):
        reply = asst.chat([{"role": "user", "content": "A person as JSON."}], schema=Person, temperature=1.0,
                          seed=seed)
        assert isinstance(reply.parsed, Person), reply.text


@pytest.mark.slow
def test_sampled_output_closes_within_a_small_budget(asst):
    """The budget's last tokens take closing quotes and brackets: a sampled reply still parses."""
    for seed in range(4):
        reply = asst.chat([{"role": "user", "content": "A person as JSON."}], schema=Person, temperature=1.0,
                          seed=seed, max_tokens=40)
        assert isinstance(reply.parsed, Person), reply.text
        assert reply.usage.completion_tokens <= 40
