"""Errors the SDK raises: `MMSDKError` and its four kinds."""
from .decoder.errors import (
    ContextLengthError,
    InputError,
    MMSDKError,
    ModelLoadError,
    UnsupportedModalityError,
)

__all__ = ["MMSDKError", "ModelLoadError", "InputError", "UnsupportedModalityError", "ContextLengthError"]
