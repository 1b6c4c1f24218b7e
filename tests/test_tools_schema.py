"""Tool schemas from type hints and docstrings, and argument validation."""
import enum
from dataclasses import dataclass
from typing import Literal, Optional

import pydantic
import pytest

from mmsdk.tool_schema import output_schema, parse_docstring, tool_spec


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


@dataclass
class Point:
    x: float
    y: float


class Person(pydantic.BaseModel):
    name: str
    age: int = 0


def everything(city: str, count: int, ratio: float, flag: bool, maybe: Optional[int], mode: Literal["a", "b"],
               unit: Unit, tags: list[str], meta: dict[str, int], point: Point, who: Person, limit=10,
               note: str | None = None):
    """Do everything at once.

    Args:
        city (str): The city
            to look at.
        count: How many.
    """


def test_every_supported_type_maps_to_its_json_schema():
    spec = tool_spec(everything)
    p = spec.parameters["properties"]
    assert spec.name == "everything" and spec.description == "Do everything at once."
    assert p["city"] == {"type": "string", "description": "The city to look at."}
    assert p["count"] == {"type": "integer", "description": "How many."}
    assert p["ratio"] == {"type": "number"} and p["flag"] == {"type": "boolean"}
    assert p["maybe"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert p["mode"]["enum"] == ["a", "b"] and p["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert p["tags"] == {"type": "array", "items": {"type": "string"}}
    assert p["meta"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert p["point"]["required"] == ["x", "y"] and p["who"]["properties"]["age"] == {"type": "integer", "default": 0}
    assert p["limit"] == {"type": "integer", "default": 10}  # unannotated: typed from its default
    assert p["note"]["default"] is None
    assert spec.parameters["required"] == ["city", "count", "ratio", "flag", "maybe", "mode", "unit", "tags",
                                           "meta", "point", "who"]
    assert "title" not in str(spec.parameters)


def test_validate_converts_to_annotated_types_and_rejects_bad_ones():
    spec = tool_spec(everything)
    good = {"city": "Oslo", "count": 2, "ratio": 0.5, "flag": True, "maybe": None, "mode": "a", "unit": "celsius",
            "tags": ["x"], "meta": {"k": 1}, "point": {"x": 1, "y": 2}, "who": {"name": "Ada"}}
    kw = spec.validate(good)
    assert kw["unit"] is Unit.C and kw["point"] == Point(1.0, 2.0) and kw["who"] == Person(name="Ada")
    assert "limit" not in kw  # defaults stay the function's own
    with pytest.raises(pydantic.ValidationError):
        spec.validate({**good, "count": "many"})
    with pytest.raises(pydantic.ValidationError):
        spec.validate({**good, "unknown": 1})
    with pytest.raises(pydantic.ValidationError):
        spec.validate({k: v for k, v in good.items() if k != "city"})
    with pytest.raises(TypeError):
        spec.validate(["Oslo"])


def test_numpy_and_sphinx_docstrings():
    doc = """Add two numbers.

    Parameters
    ----------
    a : int
        First
        number.
    b : int
        Second number.

    Returns
    -------
    int
        The sum.
    """
    assert parse_docstring(doc) == ("Add two numbers.", {"a": "First number.", "b": "Second number."})
    assert parse_docstring("Go.\n\n:param str a: first\n:param b: second\n:returns: x") == (
        "Go.", {"a": "first", "b": "second"})
    assert parse_docstring("") == ("", {})


def test_google_docstring_sections_after_args_are_not_arguments():
    def f(path: str):
        """Read a file.

        Args:
            path: Where it is.

        Returns:
            text: the content.

        Raises:
            OSError: when missing.
        """
    spec = tool_spec(f)
    assert spec.description == "Read a file."
    assert spec.parameters["properties"]["path"]["description"] == "Where it is."


def test_dict_tools_and_bad_tools():
    spec = tool_spec({"type": "function", "function": {"name": "ping", "description": "Ping.",
                                                       "parameters": {"type": "object", "properties": {}}}})
    assert spec.name == "ping" and spec.fn is None and spec.validate({"a": 1}) == {"a": 1}
    with pytest.raises(TypeError):
        tool_spec(42)
    with pytest.raises(ValueError):
        tool_spec(lambda x: x)


def test_output_schema_for_models_dataclasses_and_dicts():
    schema, adapter = output_schema(Person)
    assert schema["required"] == ["name"] and adapter.validate_json('{"name": "A"}') == Person(name="A")
    schema, adapter = output_schema(Point)
    assert adapter.validate_json('{"x": 1, "y": 2.5}') == Point(1.0, 2.5)
    schema, adapter = output_schema({"type": "object"})
    assert schema == {"type": "object"} and adapter.validate_json('{"a": 1}') == {"a": 1}
