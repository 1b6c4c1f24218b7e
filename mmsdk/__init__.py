"""mmsdk: a multimodal assistant that runs entirely on your device."""
from .assistant import Assistant, Session, load
from .errors import ContextLengthError, InputError, MMSDKError, ModelLoadError, UnsupportedModalityError
from .types import ModelInfo, Reply, ToolCall, Usage

__all__ = [
    "load", "Assistant", "Session",
    "Reply", "ToolCall", "Usage", "ModelInfo",
    "MMSDKError", "ModelLoadError", "InputError", "UnsupportedModalityError", "ContextLengthError",
]
