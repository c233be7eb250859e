"""Readable text out of (X)HTML with the stdlib parser: blocks of text, their heading level and anchors.

Footnote markers, page-number markers, scripts and styles are dropped; every block element starts a
new block; ``id`` attributes are remembered at the block where they appear, so a table of contents entry
``chapter.xhtml#sec2`` can be located.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

from voxmill.limits import InputLimits, depth_exceeded

_BLOCK_TAGS = {
    "p", "div", "section", "article", "aside", "header", "footer", "blockquote", "li", "ul", "ol", "dl", "dt",
    "dd", "table", "tr", "td", "th", "pre", "figure", "figcaption", "br", "hr", "body", "nav",
    "h1", "h2", "h3", "h4", "h5", "h6",
}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_DROPPED_TAGS = {"script", "style", "head", "title", "svg", "math"}
#: epub:type / role values whose content is not read aloud (footnote markers, page numbers, notes)
_DROPPED_TYPES = {"noteref", "pagebreak", "footnote", "endnote", "endnotes", "rearnote", "footnotes",
                  "doc-noteref", "doc-pagebreak", "doc-footnote", "doc-endnotes"}
_MARKER = re.compile(r"^\s*[\[(]?(\d{1,3}|[*†‡§])[\])]?\s*$")
#: a start tag of one of these closes an open element of the same tag (HTML's implied end tags), so a
#: document of unclosed ``<p>`` does not look deeply nested
_IMPLIED_END = {"p", "li", "dt", "dd", "tr", "td", "th", "option"}
DEFAULT_MAX_DEPTH = 512
_VOID = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr", "source"}


@dataclass
class Block:
    """A paragraph-like run of text; ``heading`` is 1–6 for ``<h1>``–``<h6>``, 0 otherwise."""

    text: str
    heading: int = 0
    #: element ids that appear in (or just before) this block
    anchors: list[str] = field(default_factory=list)


class _BlockParser(HTMLParser):
    def __init__(self, where: str, max_depth: int) -> None:
        super().__init__(convert_charrefs=True)
        self._where = where
        self._max_depth = max_depth
        self.blocks: list[Block] = []
        self._parts: list[str] = []
        self._heading = 0
        self._pending_anchors: list[str] = []
        self._drop_depth = 0
        self._stack: list[tuple[str, bool]] = []  # (tag, dropped-here)
        self._sup_text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        anchor = values.get("id") or (values.get("name") if tag == "a" else None)
        if anchor and not self._drop_depth:
            self._pending_anchors.append(anchor)
        if tag in _BLOCK_TAGS:
            self._flush()
            if tag in _HEADINGS:
                self._heading = _HEADINGS[tag]
        if tag in _VOID:
            return
        if tag in _IMPLIED_END and self._stack and self._stack[-1][0] == tag:
            self.handle_endtag(tag)
        if len(self._stack) >= self._max_depth:
            raise depth_exceeded(self._where, InputLimits(markup_depth=self._max_depth))
        kinds = set((values.get("epub:type") or "").split()) | set((values.get("role") or "").split())
        dropped = tag in _DROPPED_TAGS or bool(kinds & _DROPPED_TYPES)
        self._stack.append((tag, dropped))
        if dropped:
            self._drop_depth += 1
        if tag == "sup" and not self._drop_depth:
            self._sup_text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        # pop to the matching start tag (tolerates unclosed <p> and friends)
        while self._stack:
            open_tag, dropped = self._stack.pop()
            if dropped:
                self._drop_depth -= 1
            if open_tag == "sup" and self._sup_text is not None:
                text = "".join(self._sup_text)
                self._sup_text = None
                if not _MARKER.match(text):  # a real superscript (e.g. "1st"): keep it
                    self._parts.append(text)
            if open_tag == tag:
                break
        if tag in _BLOCK_TAGS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._drop_depth:
            return
        if self._sup_text is not None:
            self._sup_text.append(data)
        else:
            self._parts.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._parts).split())
        self._parts = []
        if text:
            self.blocks.append(Block(text, self._heading, self._pending_anchors))
            self._pending_anchors = []
        self._heading = 0

    def close(self) -> None:
        super().close()
        self._flush()
        if self._pending_anchors:  # ids after the last text: an empty block keeps them findable
            self.blocks.append(Block("", 0, self._pending_anchors))


def html_blocks(markup: str, *, where: str = "document", max_depth: int = DEFAULT_MAX_DEPTH) -> list[Block]:
    """The text blocks of an HTML/XHTML document, in order; LimitExceeded (naming ``where``) when elements
    nest deeper than ``max_depth``."""
    parser = _BlockParser(where, max_depth)
    parser.feed(markup)
    parser.close()
    return parser.blocks


__all__ = ["Block", "html_blocks"]
