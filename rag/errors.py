"""The error the rag package raises for a document it cannot use."""
from ..decoder.errors import InputError


class DocumentError(InputError):
    """A document cannot be read or holds no text. `path` names it so a batch can report which one.
    An `InputError` (so an `MMSDKError` and a `ValueError`) like every bad input the SDK reports."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")
