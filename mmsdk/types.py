"""Result types of the public API."""
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ToolCall:
    name: str
    arguments: dict


@dataclass
class Reply:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"  # "stop" (end of turn or a stop string) or "length" (max_tokens)
    parsed: Any = None  # the validated object when chat(..., schema=...) was used


@dataclass
class ModelInfo:
    name: str
    family: str  # "gemma3" or "gemma3n"
    parameters: int
    modalities: frozenset
    context_length: int
    quantization: str
    path: str = ""
