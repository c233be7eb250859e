"""Chapters: sections → numbered chapters with normalised text, what is skipped by default, and selection.

Obvious non-narrative parts are skipped unless asked for: the contents page, publishers' licence and
copyright pages, indexes, colophons, title/cover pages, and untitled front matter. ``--chapters 1,3-5``
selects exactly those indices (a skipped chapter is included when named); ``--exclude`` drops any.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from voxmill.book.model import Chapter
from voxmill.errors import ConfigError

#: title patterns of non-narrative sections and the reason shown for skipping them
_SKIP_TITLES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), reason)
    for pattern, reason in (
        (r"^\s*(table of )?contents\s*$|^\s*toc\s*$", "contents"),
        (r"licen[cs]e|copyright|legal notice|terms of use|project gutenberg|all rights reserved", "licence"),
        (r"^\s*(general |subject )?index\s*$", "index"),
        (r"^\s*colophon\s*$|about the publisher|^\s*imprint\s*$", "colophon"),
        (r"^\s*(title page|half[- ]title|cover)\s*$", "title page"),
    )
)
#: EPUB structural types (landmarks, guide, epub:type) of the same parts
_SKIP_TYPES = {
    "toc": "contents", "index": "index", "copyright-page": "licence", "colophon": "colophon",
    "cover": "title page", "titlepage": "title page", "title-page": "title page", "halftitlepage": "title page",
}
#: words a licence or copyright page is made of (their density tells boilerplate from prose)
_BOILERPLATE_WORDS = re.compile(r"project gutenberg|licen[cs]|copyright|trademark|redistribut|royalt|warrant|"
                                r"all rights reserved|terms of use|permission|liabilit|donation|e-?book",
                                re.IGNORECASE)
#: a section titled like boilerplate but larger than this must also read like it to be skipped
BOILERPLATE_MAX_WORDS = 1500
_FOOTNOTE_MARK = re.compile(r"\[\d{1,3}\]")
FRONT_MATTER = "front matter"


@dataclass
class Section:
    """A titled run of paragraphs found by a reader, before it is numbered and classified."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    depth: int = 0
    #: a structural type from the source (EPUB landmarks/guide), or ``front matter`` for untitled openings
    kind: str | None = None


def normalise_paragraph(text: str) -> str:
    """One paragraph as it is spoken: bracketed footnote numbers out, whitespace folded to single spaces."""
    return " ".join(_FOOTNOTE_MARK.sub(" ", text).split())


def skip_reason(title: str, kind: str | None) -> str | None:
    """Why a section with this title/type is skipped by default, or None for narrative."""
    if kind == FRONT_MATTER:
        return FRONT_MATTER
    if kind and kind in _SKIP_TYPES:
        return _SKIP_TYPES[kind]
    for pattern, reason in _SKIP_TITLES:
        if pattern.search(title):
            return reason
    return None


def reads_as_boilerplate(reason: str, paragraphs: Sequence[str]) -> bool:
    """Whether text titled as ``reason`` (licence, contents, index) reads like it, judged by its words.

    Small sections are trusted by their title. A large one must look the part: a licence dense in licence
    words, a contents page or an index made of short lines. A title alone never skips a book's worth of prose.
    """
    words = sum(len(p.split()) for p in paragraphs)
    if words <= BOILERPLATE_MAX_WORDS:
        return True
    if reason == "licence":
        return len(_BOILERPLATE_WORDS.findall(" ".join(paragraphs))) * 150 >= words
    if reason in ("contents", "index"):
        return words / max(1, len(paragraphs)) <= 12
    return True


def number_chapters(sections: Iterable[Section]) -> tuple[Chapter, ...]:
    """Chapters numbered from 1, with normalised text; sections without any text are dropped."""
    chapters: list[Chapter] = []
    for section in sections:
        paragraphs = [p for p in (normalise_paragraph(p) for p in section.paragraphs) if p]
        if not paragraphs:
            continue
        untitled = "Front matter" if section.kind == FRONT_MATTER else f"Chapter {len(chapters) + 1}"
        title = " ".join(section.title.split()) or untitled
        chapters.append(Chapter(
            index=len(chapters) + 1,
            title=title,
            text="\n\n".join(paragraphs),
            depth=section.depth,
            skip_reason=_checked_reason(skip_reason(title, section.kind), paragraphs),
        ))
    return tuple(chapters)


def _checked_reason(reason: str | None, paragraphs: Sequence[str]) -> str | None:
    return reason if reason is None or reads_as_boilerplate(reason, paragraphs) else None


#: a skipped chapter this long (in words, or as a share of the book) is worth a warning
LARGE_SKIP_WORDS, LARGE_SKIP_SHARE = 1000, 0.10


def large_skip_warnings(chapters: Sequence[Chapter], chosen: set[int]) -> list[str]:
    """One line per chapter skipped by default that is large: what it is, how big, why, how to include it."""
    total = sum(c.words for c in chapters) or 1
    lines = []
    for chapter in chapters:
        if chapter.index in chosen or chapter.skip_reason is None:
            continue
        if chapter.words >= LARGE_SKIP_WORDS or chapter.words >= LARGE_SKIP_SHARE * total:
            lines.append(f"warning: chapter {chapter.index} {chapter.title[:50]!r} ({chapter.words:,} words, "
                         f"{chapter.words / total:.0%} of the book) is skipped as {chapter.skip_reason}; "
                         f"include it with --chapters (e.g. --chapters {chapter.index},…)")
    return lines


def parse_indices(spec: str, count: int) -> list[int]:
    """``"1,3-5"`` → ``[1, 3, 4, 5]``; ConfigError naming the bad part or an index outside 1..count."""
    chosen: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if match is None:
            raise ConfigError(f"chapters {spec!r}: {part!r} is not a number or a range like 3-5")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if first > last or first < 1 or last > count:
            raise ConfigError(f"chapters {spec!r}: {part!r} is outside 1–{count} (see --list)")
        chosen.extend(i for i in range(first, last + 1) if i not in chosen)
    return chosen


def select_chapters(
    chapters: Sequence[Chapter], include: str | None = None, exclude: str | None = None
) -> list[Chapter]:
    """The chapters to speak: ``include`` (indices) if given, else every chapter not skipped; minus ``exclude``."""
    if include:
        wanted = set(parse_indices(include, len(chapters)))
        chosen = [c for c in chapters if c.index in wanted]
    else:
        chosen = [c for c in chapters if c.skip_reason is None]
    if exclude:
        dropped = set(parse_indices(exclude, len(chapters)))
        chosen = [c for c in chosen if c.index not in dropped]
    return chosen


__all__ = ["BOILERPLATE_MAX_WORDS", "FRONT_MATTER", "Section", "large_skip_warnings", "normalise_paragraph",
           "number_chapters", "parse_indices", "reads_as_boilerplate", "select_chapters", "skip_reason"]
