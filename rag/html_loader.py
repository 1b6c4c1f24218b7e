"""HTML to sections with the stdlib parser: headings open sections, block tags break paragraphs,
`<pre>` keeps its layout, and non-content (script, style, nav, head) is dropped."""
import re
from html.parser import HTMLParser

from .section import Section

_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_SKIP = {"script", "style", "head", "nav", "noscript", "template", "svg", "footer"}
_BLOCKS = {"p", "div", "li", "ul", "ol", "pre", "tr", "table", "section", "article", "blockquote",
           "dd", "dt", "dl", "br", "hr", "main", "header", "figure", "figcaption"} | set(_HEADINGS)


class _Parser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self.stack: list[tuple[int, str]] = []  # (level, title) of the open headings
        self.paras: list[str] = []
        self.buf: list[str] = []
        self.skip = self.pre = 0
        self.heading_level, self.heading_buf = 0, []

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP:
            self.skip += 1
        elif tag in _HEADINGS:
            self.flush_section()
            self.heading_level, self.heading_buf = _HEADINGS[tag], []
        elif tag in _BLOCKS:
            self.break_para()
            self.pre += tag == "pre"

    def handle_endtag(self, tag):
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in _HEADINGS and self.heading_level:
            title = " ".join("".join(self.heading_buf).split())
            self.stack = [h for h in self.stack if h[0] < self.heading_level] + [(self.heading_level, title)]
            self.heading_level = 0
        elif tag in _BLOCKS:
            self.break_para()
            self.pre = max(0, self.pre - (tag == "pre"))

    def handle_data(self, data):
        if self.skip:
            return
        if self.heading_level:
            self.heading_buf.append(data)
        else:
            self.buf.append(data if self.pre else re.sub(r"\s+", " ", data))

    def break_para(self):
        text = "".join(self.buf)
        text = text.strip("\n") if self.pre else text.strip()
        if text.strip():
            self.paras.append(text)
        self.buf = []

    def flush_section(self):
        self.break_para()
        heading = " > ".join(t for _, t in self.stack)
        self.sections.append(Section("\n\n".join(self.paras), heading, heading))
        self.paras = []


def parse_html(html: str) -> list[Section]:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    parser.flush_section()
    return parser.sections
