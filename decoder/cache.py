"""The user cache folder and atomic writes into it."""
import contextlib
import os
import tempfile
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """`$MMSDK_CACHE`, else the platform's user cache folder (~/.cache/mmsdk on Linux)."""
    root = os.environ.get("MMSDK_CACHE")
    if root is None:
        from platformdirs import user_cache_dir

        root = user_cache_dir("mmsdk")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds,
    so a crash or kill mid-write never leaves a half-written file under the real name."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
