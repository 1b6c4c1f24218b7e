"""Loaders: a file becomes `Section`s of text, each knowing where it came from (page, heading).

One loader per format; `load(path)` picks by extension. Any failure is a `DocumentError` naming the file.
"""
import re
from pathlib import Path

from .errors import DocumentError
from .section import Section


# A line underlined by a run of one punctuation character is a heading (reStructuredText, setext
# Markdown, plain-text manuals); the order in which underline characters first appear sets the level.
_UNDERLINE = re.compile(r"^([=\-~^*#+])\1{2,}\s*$")
_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def load(path) -> list[Section]:
    """Read a .txt, .md, .html/.htm or .pdf file into sections; raise `DocumentError` if it cannot."""
    path = Path(path)
    loader = loader_for(path)
    try:
        sections = loader(path)
    except DocumentError:
        raise
    except Exception as e:  # parsers raise many types on broken input; the caller needs the file name
        raise DocumentError(path, f"cannot parse {path.suffix.lstrip('.')} file ({type(e).__name__}: {e})") from e
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise DocumentError(path, "no extractable text (a scanned PDF needs OCR first)")
    return sections


def loader_for(path: Path):
    """The loader for this file, or a `DocumentError` if the type is unsupported or the file missing."""
    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DocumentError(path, f"unsupported file type {path.suffix!r}; use one of "
                                  f"{' '.join(sorted(_LOADERS))}, or pass the text with add_text()")
    if not path.is_file():
        raise DocumentError(path, "no such file")
    return loader


def read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise DocumentError(path, "binary data in a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def split_headings(text: str, *, atx: bool) -> list[Section]:
    """Split text at headings (underlined lines, and `#` lines when `atx`), skipping fenced code."""
    sections, stack, body, levels = [], [], [], []
    lines = text.splitlines()
    in_fence, i = False, 0

    def flush():
        heading = " > ".join(stack)
        sections.append(Section("\n".join(body).strip("\n"), heading, heading))
        body.clear()

    def open_heading(level: int, title: str):
        flush()
        del stack[level:]
        stack.append(title.strip())

    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if not in_fence and line.strip() and not line.startswith(" ") and _UNDERLINE.match(nxt) \
                and len(nxt.strip()) >= len(line.strip()) * 0.7:
            if nxt[0] not in levels:
                levels.append(nxt[0])
            open_heading(min(levels.index(nxt[0]), len(stack)), line)
            i += 2
            continue
        m = _ATX.match(line) if atx and not in_fence else None
        if m:
            open_heading(min(len(m.group(1)) - 1, len(stack)), m.group(2))
        else:
            body.append(line)
        i += 1
    flush()
    return sections


def load_text(path: Path) -> list[Section]:
    return split_headings(read_text(path), atx=False)


def load_markdown(path: Path) -> list[Section]:
    return split_headings(read_text(path), atx=True)


def load_html(path: Path) -> list[Section]:
    from .html_loader import parse_html

    return parse_html(read_text(path))


def load_pdf(path: Path) -> list[Section]:
    from .pdf_loader import parse_pdf

    return parse_pdf(path)


_LOADERS = {".txt": load_text, ".text": load_text, ".md": load_markdown, ".markdown": load_markdown,
            ".html": load_html, ".htm": load_html, ".pdf": load_pdf}
