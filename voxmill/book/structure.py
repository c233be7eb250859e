"""Structure that survives a coarse table of contents: split TOC entries at the headings found in the text.

Some EPUBs (often ones built from a plain-text edition) have a table of contents with a handful of entries,
each running many chapters together, the first one titled after the licence. Trusting it loses chapters and
skips real text as "licence". So each TOC entry is split again at the headings its text holds:

- boilerplate markers always split: Project Gutenberg's ``*** START OF …`` (everything up to it is the
  header) and ``*** END OF …`` (everything from it is the licence), and a short heading such as
  "Contents", "Index" or "The Full Project Gutenberg License";
- chapter headings (``Chapter 7``, ``CHAPTER VII. — The Storm``, ``Part Two``, ``IV.``, ``Preface``,
  ``Introduction``, ``Afterword``…) split when the entry runs several headed sections together (two or
  more of them), or when it is far longer than the book's other entries;
- a heading with nothing after it (a contents line, ``BOOK ONE`` just before ``CHAPTER I``) is folded into
  the contents page or the section that follows.

Bare numerals (``IV.``, ``7``) inside an entry that opens with a ``Chapter`` heading are sub-sections, not
chapters, and are left alone.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from voxmill.book.chapters import FRONT_MATTER, Section, skip_reason
from voxmill.book.html_text import Block

_NUMBER_WORDS = (r"one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
                 r"sixteen|seventeen|eighteen|nineteen|twenty(?:[- ](?:one|two|three|four|five|six|seven|eight|"
                 r"nine))?|thirty|forty|fifty|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last")
_NUMBER = rf"(?:[ivxlcdm]+|\d{{1,3}}|{_NUMBER_WORDS})"
#: "Chapter 7", "CHAPTER VII.", "Chapter the Third", "Part Two — The Sea", "Book 3: …", "Letter 4"
_CHAPTER = re.compile(rf"^(?:chapter|chap\.|book|part|volume|vol\.|letter|canto|stave)\s+(?:the\s+)?{_NUMBER}\b"
                      r"[.:]?(?:\s*[—–:.\-]?\s*.{0,80})?$", re.IGNORECASE)
#: "VII", "VII.", "VII. The Storm", "VII — The Storm", "7.", "— 7 —" (bare numerals)
_NUMERAL = re.compile(r"^[—–\-]?\s*(?:[IVXLCDM]{1,7}|\d{1,3})\s*[.:]?\s*(?:[—–\-]\s*)?(?:[A-Z\"“‘'].{0,80})?$")
#: named parts of a book
_NAMED = re.compile(r"^(?:the\s+)?(?:preface|foreword|introduction|prologue|epilogue|afterword|postscript|"
                    r"conclusion|appendix|author'?s note|translator'?s note|a note on the text|proem|envoi)\b"
                    r"[.:]?(?:\s*[—–:.\-]?\s*.{0,60})?$", re.IGNORECASE)
_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG", re.IGNORECASE)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG", re.IGNORECASE)
_LICENCE_HEADING = re.compile(r"^(?:start:\s*)?(?:the\s+)?full project gutenberg licen[cs]e", re.IGNORECASE)
#: the structural type given to a piece that starts at a boilerplate heading
_KIND_OF_REASON = {"licence": "copyright-page", "contents": "toc", "index": "index", "colophon": "colophon"}
#: a heading is short
_HEADING_WORDS = 14
#: an entry this many times the median entry's length (and at least LONG_WORDS) is "far longer"
LONG_FACTOR, LONG_WORDS = 3.0, 2000


@dataclass(frozen=True)
class RawSection:
    """One table-of-contents entry as located in the reading order: its title, blocks, depth and type."""

    title: str
    blocks: list[Block]
    depth: int = 0
    kind: str | None = None

    @property
    def words(self) -> int:
        return sum(len(b.text.split()) for b in self.blocks)


def heading_family(block: Block) -> str | None:
    """``chapter``, ``numeral``, ``named`` or ``boilerplate`` when ``block`` reads as such a heading, else None."""
    text = " ".join(block.text.split())
    if _GUTENBERG_START.match(text) or _GUTENBERG_END.match(text):
        return "boilerplate"
    if not text or len(text.split()) > _HEADING_WORDS:
        return None
    if _LICENCE_HEADING.match(text) or (skip_reason(text, None) and (block.heading or len(text.split()) <= 3)):
        return "boilerplate"
    if _CHAPTER.match(text):
        return "chapter"
    if _NAMED.match(text):
        return "named"
    if _NUMERAL.match(text) and (block.heading or not re.search(r"\d", text) or len(text.split()) <= 2):
        return "numeral"
    return None


#: a section of one paragraph this short is a heading that lost its chapter (a chapter of one long paragraph is not)
HEADING_WORDS = 15


def refine_sections(entries: Sequence[RawSection]) -> list[Section]:
    """The entries split at the headings their text holds (see the module docstring), as sections."""
    sizes = [e.words for e in entries if e.words]
    median = statistics.median(sizes) if sizes else 0
    sections: list[Section] = []
    for entry in entries:
        far_longer = entry.words >= LONG_WORDS and entry.words > LONG_FACTOR * median and len(entries) > 1
        sections.extend(_split(entry, far_longer or len(entries) == 1))
    return _fold_heading_only(sections)


def _split(entry: RawSection, long: bool) -> list[Section]:
    blocks = entry.blocks
    families = [heading_family(b) for b in blocks]
    opens_with_chapter = bool(families and families[0] == "chapter") or bool(_CHAPTER.match(entry.title.strip()))
    headed = [i for i, f in enumerate(families) if f in ("chapter", "named")
              or (f == "numeral" and not opens_with_chapter)]
    split_headings = len(headed) >= 2 or (long and bool(headed))
    cuts: list[tuple[int, str | None]] = []  # (block index, kind of the piece that starts there)
    header_end = 0  # blocks before this are Project Gutenberg's header
    in_licence = False
    for i, family in enumerate(families):
        text = " ".join(blocks[i].text.split())
        if in_licence:
            continue  # a licence runs to the end of the entry, its own headings included
        if family == "boilerplate":
            if _GUTENBERG_START.match(text):
                header_end = i + 1
                cuts.append((i + 1, FRONT_MATTER))
                continue
            in_licence = bool(_GUTENBERG_END.match(text) or _LICENCE_HEADING.match(text))
            reason = "licence" if in_licence else skip_reason(text, None)
            in_licence = in_licence or reason == "licence"
            cuts.append((i, _KIND_OF_REASON.get(reason or "")))
        elif split_headings and i in headed:
            cuts.append((i, None))
    cuts = [(i, kind) for i, kind in cuts if 0 < i < len(blocks) and (i >= header_end)]
    if not cuts and not header_end:
        return [_section(entry.title, blocks, entry.depth, entry.kind)]
    bounds = [(0, entry.kind, entry.title), *((i, kind, None) for i, kind in cuts)]
    pieces: list[Section] = []
    for position, (start, kind, title) in enumerate(bounds):
        end = bounds[position + 1][0] if position + 1 < len(bounds) else len(blocks)
        if end <= start:
            continue
        own = blocks[start:end]
        if end <= header_end:
            kind, title = "copyright-page", title or "Project Gutenberg header"
        elif kind == FRONT_MATTER and sum(len(b.text.split()) for b in own) > 300:
            kind, title = None, ""  # no heading after the marker: the text itself, untitled
        elif title is None and _GUTENBERG_END.match(" ".join(own[0].text.split())):
            title = "Project Gutenberg licence"
        elif title is None:
            title = "" if kind == FRONT_MATTER else _title_of(own)
        pieces.append(_section(title, own, entry.depth, kind))
    return [p for p in pieces if p.paragraphs]


def _title_of(blocks: Sequence[Block]) -> str:
    """A piece's title: its heading, with the next line when that is a heading too ("CHAPTER I." "The Keeper")."""
    first = " ".join(blocks[0].text.split())
    second = blocks[1] if len(blocks) > 1 else None
    if second is not None and second.heading and len(second.text.split()) <= 10 and heading_family(second) is None:
        return f"{first.rstrip()} {' '.join(blocks[1].text.split())}"
    return first


def _section(title: str, blocks: Sequence[Block], depth: int, kind: str | None) -> Section:
    return Section(title, [b.text for b in blocks if b.text], depth=depth, kind=kind)


def _fold_heading_only(sections: list[Section]) -> list[Section]:
    """Heading-only sections: into the contents page they follow, else into the section after them."""
    folded: list[Section] = []
    carried: list[str] = []
    for section in sections:
        heading_only = (section.kind is None and len(section.paragraphs) <= 1
                        and sum(len(p.split()) for p in section.paragraphs) <= HEADING_WORDS)
        if heading_only and folded and skip_reason(folded[-1].title, folded[-1].kind) == "contents":
            folded[-1].paragraphs.extend(section.paragraphs)
            continue
        if heading_only and section.paragraphs:
            carried.extend(section.paragraphs)
            continue
        if carried:
            section.paragraphs[:0] = carried
            carried = []
        folded.append(section)
    if carried:
        folded.append(Section("", carried))
    return folded


__all__ = ["RawSection", "heading_family", "refine_sections"]
