"""PDF to one section per page with pypdf. The PDF outline (bookmarks), when present, names the
heading each page falls under, so a citation reads "Install > Linux, page 4"."""
import contextlib
import logging
from pathlib import Path

from pypdf import PdfReader

from .errors import DocumentError
from .section import Section


def _outline_starts(reader: PdfReader) -> list[tuple[int, str]]:
    """(first page index, heading path) for every outline entry, in page order."""
    starts = []

    def walk(items, parents):
        last = None
        for item in items:
            if isinstance(item, list):
                if last is not None:
                    walk(item, parents + [last])
                continue
            last = item.title
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # an outline entry pointing nowhere is harmless; skip it
                continue
            if page is not None and page >= 0:
                starts.append((page, " > ".join(parents + [item.title])))

    try:
        walk(reader.outline, [])
    except Exception:  # a broken outline must not lose the text
        return []
    return sorted(starts, key=lambda s: s[0])


@contextlib.contextmanager
def _pypdf_errors_only():
    """pypdf logs a warning for each oddity it works around (e.g. "fontTools is required ..." for a CFF
    font whose text it still extracts); they would print into the caller's output, so only errors
    pass while a PDF is read."""
    pypdf_log = logging.getLogger("pypdf")
    level = pypdf_log.level
    pypdf_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pypdf_log.setLevel(level)


def parse_pdf(path: Path) -> list[Section]:
    with _pypdf_errors_only():
        return _parse_pdf(path)


def _parse_pdf(path: Path) -> list[Section]:
    reader = PdfReader(path)
    if reader.is_encrypted and not reader.decrypt(""):
        raise DocumentError(path, "encrypted PDF; decrypt it first")
    starts = _outline_starts(reader)
    sections = []
    for index, page in enumerate(reader.pages):
        heading = ""
        for first, title in starts:
            if first > index:
                break
            heading = title
        where = f"page {index + 1}"
        sections.append(Section(page.extract_text() or "", heading, f"{heading}, {where}" if heading else where))
    return sections
