"""A document's unit of text: what every loader (text, Markdown, HTML, PDF) gives the chunker."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    text: str
    heading: str = ""   # heading path ("Guide > Install"), prepended to chunks when embedding
    location: str = ""  # what a citation shows: heading path and/or page
