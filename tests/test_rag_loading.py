"""Loaders keep where text came from; chunking respects structure and its token cap. No model needed."""
import pytest

from mmsdk.rag.chunking import Chunk, chunk_sections, count_tokens
from mmsdk.rag.errors import DocumentError
from mmsdk.rag.loaders import Section, load


def make_pdf(path, pages):
    """A real PDF via fpdf2: one page per (heading, text), each heading an outline entry."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for heading, text in pages:
        pdf.add_page()
        pdf.start_section(heading)
        pdf.multi_cell(0, 6, f"{heading}\n{text}", new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    return path


def test_txt_underlined_headings_become_locations(tmp_path):
    f = tmp_path / "guide.txt"
    f.write_text("Guide\n*****\n\nIntro text.\n\nInstall\n=======\n\nRun the installer.\n\nLinux\n-----\n\nUse apt.\n")
    sections = load(f)
    assert [(s.location, s.text) for s in sections] == [
        ("Guide", "Intro text."), ("Guide > Install", "Run the installer."), ("Guide > Install > Linux", "Use apt.")]


def test_markdown_headings_and_fenced_code(tmp_path):
    f = tmp_path / "notes.md"
    f.write_text("# Title\n\nHello.\n\n## Usage\n\n```\n# not a heading\nx = 1\n```\n\n### Deep\n\nMore.\n")
    sections = load(f)
    assert [s.location for s in sections] == ["Title", "Title > Usage", "Title > Usage > Deep"]
    assert "# not a heading" in sections[1].text


def test_html_drops_scripts_and_navigation_keeps_headings(tmp_path):
    f = tmp_path / "page.html"
    f.write_text("<html><head><title>T</title><script>var secret = 1;</script></head><body>"
                 "<nav>Home | Next</nav><h1>Manual</h1><p>First   paragraph\nwraps.</p>"
                 "<h2>Setup</h2><p>Step one.</p><pre>  indented\n  code</pre></body></html>")
    sections = load(f)
    text = "\n".join(s.text for s in sections)
    assert "secret" not in text and "Home" not in text
    assert sections[0].location == "Manual" and sections[0].text == "First paragraph wraps."
    assert sections[1].location == "Manual > Setup" and "  indented\n  code" in sections[1].text


def test_pdf_pages_and_outline_headings(tmp_path):
    f = make_pdf(tmp_path / "manual.pdf", [("Intro", "Welcome to the tool."), ("Setup", "Plug in the cable.")])
    sections = load(f)
    assert [s.location for s in sections] == ["Intro, page 1", "Setup, page 2"]
    assert "Plug in the cable." in sections[1].text


@pytest.mark.parametrize("content", [b"%PDF-1.7\n this is not really a pdf \x00\x01", b"garbage"])
def test_corrupt_pdf_names_the_file(tmp_path, content):
    f = tmp_path / "broken.pdf"
    f.write_bytes(content)
    with pytest.raises(DocumentError) as err:
        load(f)
    assert err.value.path == str(f) and "broken.pdf" in str(err.value)


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(DocumentError, match="unsupported file type '.docx'"):
        load(tmp_path / "a.docx")
    with pytest.raises(DocumentError, match="no such file"):
        load(tmp_path / "missing.txt")
    (tmp_path / "empty.md").write_text("\n\n")
    with pytest.raises(DocumentError, match="no extractable text"):
        load(tmp_path / "empty.md")


def test_chunks_respect_cap_overlap_and_sections():
    para = " ".join(f"Sentence number {i} says something." for i in range(60))
    sections = [Section(para, "A", "A"), Section("Short one.", "B", "B")]
    chunks = chunk_sections(sections, max_tokens=50, overlap=10)
    assert all(count_tokens(c.text) <= 50 for c in chunks)
    assert chunks[-1] == Chunk("Short one.", "B", "B")  # a heading starts a new chunk
    a = [c for c in chunks if c.heading == "A"]
    assert len(a) > 5
    for prev, nxt in zip(a, a[1:]):  # each chunk starts with the last sentence(s) of the one before
        assert nxt.text.split(" says")[0] in prev.text
    words = {w for c in a for w in c.text.split()}
    assert {f"{i}" for i in range(60)} <= words  # nothing lost


def test_paragraphs_stay_whole_when_they_fit():
    text = "\n\n".join(f"Paragraph {i} " + "word " * 20 for i in range(5))
    chunks = chunk_sections([Section(text)], max_tokens=60, overlap=0)
    for c in chunks:
        for para in c.text.split("\n\n"):
            assert para.startswith("Paragraph") and para.rstrip().endswith("word")


def test_a_long_unbroken_run_is_windowed():
    chunks = chunk_sections([Section("x" * 10 + " y" * 500)], max_tokens=100, overlap=20)
    assert all(count_tokens(c.text) <= 100 for c in chunks) and len(chunks) >= 6


def test_bad_overlap_is_rejected():
    with pytest.raises(ValueError, match="overlap"):
        chunk_sections([Section("a")], max_tokens=10, overlap=10)
