"""The error the rag package raises for a document it cannot use."""


class DocumentError(ValueError):
    """A document cannot be read or holds no text. `path` names it so a batch can report which one."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")
