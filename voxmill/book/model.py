"""The records of a book: its metadata, its chapters and the chunks a chapter is spoken in."""

from __future__ import annotations

from dataclasses import dataclass, field

from voxmill.identity import content_hash


@dataclass(frozen=True)
class Chapter:
    """One chapter: its 1-based ``index`` in the book, title, normalised text and why it is skipped (if it is).

    ``text`` is the chapter's normalised text: paragraphs with single spaces inside, joined by blank lines.
    """

    index: int
    title: str
    text: str
    #: nesting depth in the table of contents (0: top level)
    depth: int = 0
    #: why this chapter is left out by default ("contents", "licence", "index", "front matter"…), or None
    skip_reason: str | None = None

    @property
    def paragraphs(self) -> list[str]:
        """The chapter's paragraphs, in order."""
        return [p for p in self.text.split("\n\n") if p]

    @property
    def words(self) -> int:
        """Words in the chapter."""
        return len(self.text.split())

    @property
    def chars(self) -> int:
        """Characters in the chapter."""
        return len(self.text)


@dataclass(frozen=True)
class Book:
    """A parsed book: title, author, language, cover image and every chapter (skipped ones included)."""

    source: str
    title: str
    author: str | None = None
    language: str | None = None
    cover: bytes | None = None
    #: the cover's file extension (jpg, png), when there is a cover
    cover_type: str | None = None
    chapters: tuple[Chapter, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Chunk:
    """A piece of a chapter sent to the TTS model in one request: whole sentences of one paragraph."""

    chapter: int
    #: 0-based position in the chapter
    index: int
    paragraph: int
    text: str
    #: whether the paragraph ends with this chunk (a longer pause follows)
    ends_paragraph: bool
    #: the text as it is spoken (the pronunciation lexicon applied), when it differs from ``text``
    spoken: str | None = None
    #: with a cast: who reads it (``narrator``, ``dialogue`` or a character's name); None: the one voice
    role: str | None = None

    @property
    def speech(self) -> str:
        """What the TTS model is sent: the spoken form, else the printed text."""
        return self.spoken if self.spoken is not None else self.text

    @property
    def item_id(self) -> str:
        """The id of this chunk's row in the job's manifest and ledger: ``ch007-0012-<text hash>``.

        The text's hash is part of the id so that an id (and the audio file named after it) never changes
        meaning: after an edit, a chunk that moved gets a new id and is copied from the old one's file,
        which no other chunk of the run can be overwriting.
        """
        return f"ch{self.chapter:03d}-{self.index:04d}-{content_hash(self.speech)[:8]}"


__all__ = ["Book", "Chapter", "Chunk"]
