"""Builds the evaluation corpus from the CPython documentation text that ships with Python
(`pydoc_data.topics`): each topic becomes a .txt, .md, .html or .pdf file, in turn."""
import html
import re
from pathlib import Path

from pydoc_data.topics import topics

FORMATS = (".txt", ".md", ".html", ".pdf")
_LEVEL = {"*": 1, "=": 2, "-": 3, "~": 4}
# The PDF core fonts are Latin-1; map the few typographic characters the docs use.
_LATIN1 = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'", "…": "...", "—": "--", "–": "-",
                         "→": "->", "×": "x", "•": "*", "≤": "<=", "≥": ">=", "≠": "!="})


def _is_code(lines: list[str]) -> bool:
    """Indented blocks are code (grammar, examples) unless they read as prose (method descriptions)."""
    body = " ".join(lines)
    prose = body.rstrip().endswith((".", ":")) and len(body.split()) >= 8
    return lines[0].startswith("   ") and ("::=" in body or ">>>" in body or not prose)


def blocks(text: str):
    """(kind, level, text) with kind "heading", "code" (indented) or "para"."""
    lines, out, i = text.splitlines(), [], 0
    para: list[str] = []

    def flush():
        if para:
            body = "\n".join(para)
            out.append(("code" if _is_code(para) else "para", 0, body))
            para.clear()

    while i < len(lines):
        line, nxt = lines[i], lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and nxt and set(nxt) <= set(_LEVEL) and len(set(nxt)) == 1 and len(nxt) == len(line):
            flush()
            out.append(("heading", _LEVEL[nxt[0]], line.strip()))
            i += 2
            continue
        if not line.strip():
            flush()
        else:
            para.append(line)
        i += 1
    flush()
    return out


def to_markdown(text: str) -> str:
    parts = []
    for kind, level, body in blocks(text):
        if kind == "heading":
            parts.append("#" * level + " " + body)
        elif kind == "code":
            parts.append("```\n" + "\n".join(line[3:] for line in body.splitlines()) + "\n```")
        else:
            parts.append("\n".join(line.strip() for line in body.splitlines()))
    return "\n\n".join(parts) + "\n"


def to_html(name: str, text: str) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title>",
             "<style>body{font-family:sans-serif}</style><script>var analytics = 1;</script></head><body>",
             "<nav><a href='index.html'>Index</a> | <a href='next.html'>Next topic</a></nav><main>"]
    for kind, level, body in blocks(text):
        if kind == "heading":
            parts.append(f"<h{level}>{html.escape(body)}</h{level}>")
        elif kind == "code":
            parts.append(f"<pre>{html.escape(body)}</pre>")
        else:
            parts.append(f"<p>{html.escape(body)}</p>")
    parts.append("</main><footer>Copyright the Python Software Foundation.</footer></body></html>")
    return "\n".join(parts)


def to_pdf(path: Path, text: str):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    depth = 0
    for kind, level, body in blocks(text):
        body = body.translate(_LATIN1).encode("latin-1", "replace").decode("latin-1")
        if kind == "heading":
            depth = min(level, depth + 1)  # outline levels may only go one deeper at a time
            pdf.start_section(body, level=depth - 1)
            pdf.set_font("Helvetica", "B", 16 - 2 * depth)
            pdf.multi_cell(0, 8, body, new_x="LMARGIN", new_y="NEXT")
        elif kind == "code":
            pdf.set_font("Courier", size=8)
            pdf.multi_cell(0, 4, body, new_x="LMARGIN", new_y="NEXT")
        else:
            pdf.set_font("Helvetica", size=10)
            pdf.multi_cell(0, 5, re.sub(r"\s*\n\s*", " ", body), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
    pdf.output(str(path))


def build(folder) -> list[Path]:
    """Write one file per topic into `folder`, cycling through the four formats."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, text) in enumerate(sorted(topics.items())):
        path = folder / f"{name}{FORMATS[i % len(FORMATS)]}"
        if path.suffix == ".txt":
            path.write_text(text, encoding="utf-8")
        elif path.suffix == ".md":
            path.write_text(to_markdown(text), encoding="utf-8")
        elif path.suffix == ".html":
            path.write_text(to_html(name, text), encoding="utf-8")
        else:
            to_pdf(path, text)
        paths.append(path)
    return paths
