"""The SDK's error hierarchy. It lives in the lowest layer so every layer raises the same types;
`mmsdk.errors` re-exports it."""


class MMSDKError(Exception):
    """Base of every error the SDK raises on purpose."""


class ModelLoadError(MMSDKError):
    """A model file or folder is missing, unreadable, corrupt or of an unsupported kind."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot load model {self.path!r}: {reason}")


class InputError(MMSDKError, ValueError):
    """An input (image, audio, document, prompt) cannot be used."""


class UnsupportedModalityError(MMSDKError):
    """The loaded model has no encoder for this kind of input."""


class ContextLengthError(MMSDKError, ValueError):
    """A prompt does not fit in the model's context."""

    def __init__(self, n_tokens: int, context_length: int, what: str = "prompt"):
        self.n_tokens, self.context_length = n_tokens, context_length
        super().__init__(
            f"{what} is {n_tokens} tokens but the model's context holds {context_length}; "
            f"shorten it or lower max_tokens"
        )
