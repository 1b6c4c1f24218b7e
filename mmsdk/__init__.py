"""mmsdk: a multimodal assistant that runs entirely on your device."""
from .errors import ContextLengthError, InputError, MMSDKError, ModelLoadError, UnsupportedModalityError

__all__ = ["MMSDKError", "ModelLoadError", "InputError", "UnsupportedModalityError", "ContextLengthError"]
