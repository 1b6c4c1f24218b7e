"""Result types of the public API."""
import math
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
class TokenLogprob:
    """A token with its log-probability under the model (natural log, before temperature, top-k/p
    and grammar masks) and, for a generated token, the `top_logprobs` most likely ones, best first."""
    token_id: int
    text: str
    logprob: float
    top: list["TokenLogprob"] = field(default_factory=list)


@dataclass
class Reply:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"  # "stop" (end of turn or a stop string) or "length" (max_tokens)
    parsed: Any = None  # the validated object when chat(..., schema=...) was used
    logprobs: list[TokenLogprob] | None = None  # with logprobs=True: one per generated token, end of turn included
    thinking: str | None = None  # with chat(..., thinking=True) on a model that thinks (Gemma 4): the thought


class Piece(str):
    """A piece of streamed text; with `stream(..., logprobs=True)` it carries the `TokenLogprob`s of
    the tokens generated since the previous piece (a token's text may show up a piece later)."""
    logprobs: list[TokenLogprob]

    def __new__(cls, text: str, logprobs: list[TokenLogprob]):
        piece = super().__new__(cls, text)
        piece.logprobs = logprobs
        return piece


@dataclass
class Score:
    """`Assistant.score(text)`: each token of the text after BOS, its log-probability given the
    tokens before it, and the model's most likely token at that place."""
    tokens: list[int]
    logprobs: list[float]
    predicted: list[int] = field(default_factory=list)

    @property
    def perplexity(self) -> float:
        """exp of the mean negative log-probability per token."""
        return math.exp(-sum(self.logprobs) / len(self.logprobs))


@dataclass
class ModelInfo:
    name: str
    family: str  # "gemma3" or "gemma3n"
    parameters: int
    modalities: frozenset
    context_length: int
    quantization: str
    path: str = ""
