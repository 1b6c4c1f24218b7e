"""mmsdk: a multimodal assistant that runs entirely on your device."""
from .agent import AgentResult, AgentStep
from .assistant import Assistant, Session, load
from .documents import Answer, DocumentIndex, Hit
from .errors import ContextLengthError, InputError, MMSDKError, ModelLoadError, UnsupportedModalityError
from .speech import Transcript
from .tool_schema import ToolSpec, tool_spec
from .types import ModelInfo, Piece, Reply, Score, TokenLogprob, ToolCall, Usage

__all__ = [
    "load", "Assistant", "Session",
    "Reply", "ToolCall", "Usage", "ModelInfo", "Transcript", "Score", "TokenLogprob", "Piece",
    "DocumentIndex", "Hit", "Answer",
    "ToolSpec", "tool_spec", "AgentResult", "AgentStep",
    "MMSDKError", "ModelLoadError", "InputError", "UnsupportedModalityError", "ContextLengthError",
]
