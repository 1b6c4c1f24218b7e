"""Models by name: a Hugging Face model id ("google/gemma-3n-E2B-it") resolved in the local
Hugging Face cache, offline. Only `pull` (the `mmsdk pull` command) ever downloads.

A GGUF repository holds one file per quantization: "org/name:Q4_0" picks the file whose name carries
the tag, as llama.cpp's `-hf` does; llama.cpp's `mmproj*.gguf` beside it is found by the loader.
"""
from __future__ import annotations

import re
from pathlib import Path

from .decoder.errors import ModelLoadError
from .errors import InputError

# "org/name" or "org/name:TAG"; a path on disk always wins over a name that looks the same
_MODEL_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")


def is_model_id(name) -> bool:
    return isinstance(name, str) and bool(_MODEL_ID.match(name)) and not Path(name).exists()


def resolve(name) -> Path:
    """The local path of `name`: as given when it is a path, else a model id found in the local
    Hugging Face cache (the checkpoint folder, or the one .gguf file matching the tag)."""
    if not is_model_id(name):
        return Path(name)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, _, tag = name.partition(":")
    try:
        folder = Path(snapshot_download(repo, local_files_only=True))
    except LocalEntryNotFoundError:
        raise ModelLoadError(name, f"not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
                                   f"`mmsdk pull {name}` downloads it (it needs the network)") from None
    return _pick(folder, name, tag)


def _pick(folder: Path, name: str, tag: str) -> Path:
    """A snapshot's model: the folder itself when it is a checkpoint, else its one (tagged) GGUF."""
    ggufs = sorted(p for p in folder.glob("*.gguf") if not p.name.lower().startswith("mmproj"))
    if (folder / "config.json").is_file() and not tag:
        return folder
    if tag:
        ggufs = [p for p in ggufs if tag.lower() in p.name.lower()]
    if len(ggufs) == 1:
        return ggufs[0]
    if not ggufs:
        raise ModelLoadError(name, f"the cached snapshot {folder} holds no model "
                                   f"{'.gguf file tagged ' + repr(tag) if tag else 'checkpoint or .gguf file'}")
    raise ModelLoadError(name, "the cached snapshot holds several .gguf files: name one with a tag, "
                               + ", ".join(f"{name.partition(':')[0]}:{_tag(p)}" for p in ggufs))


def _tag(p: Path) -> str:
    """The quantization part of a GGUF file's name ("gemma-3-1b-it-q4_0.gguf" -> "q4_0")."""
    m = re.search(r"(i?q\d\w*|f16|bf16|f32)$", p.stem, re.IGNORECASE)
    return m.group(1) if m else p.stem


def pull(name: str) -> Path:
    """Download model `name` ("org/name" or "org/name:TAG") into the local Hugging Face cache and
    return its local path. The one call in mmsdk that uses the network."""
    if not isinstance(name, str) or not _MODEL_ID.match(name):
        raise InputError(f"model name {name!r}: expected a Hugging Face model id, 'org/name' or 'org/name:TAG'")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(name, "downloading needs the network, and HF_HUB_OFFLINE is set")
    repo, _, tag = name.partition(":")
    # A GGUF repository holds every quantization: with a tag, only that file (and any mmproj) comes.
    patterns = [f"*{tag}*.gguf", f"*{tag.upper()}*.gguf", "mmproj*", "*.json", "*.md"] if tag else None
    try:
        folder = Path(snapshot_download(repo, allow_patterns=patterns))
    except OfflineModeIsEnabled:
        raise ModelLoadError(name, "downloading needs the network, and HF_HUB_OFFLINE is set") from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        raise ModelLoadError(name, f"download failed (it needs the network): {' '.join(str(e).split())[:200]}") from None
    return _pick(folder, name, tag)
