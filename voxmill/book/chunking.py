"""Chapter text → chunks of whole sentences, sized by the model's limits in the catalogue.

A chunk holds whole sentences of one paragraph, as many as fit in the model's ``chunk_words`` and its
recommended characters (``text_soft_limit``). A sentence is cut only when it alone is over a limit: first
at clause punctuation (``, ; : —``), then between words. Nothing is dropped or rewritten: the chunks of a
paragraph joined with single spaces are the paragraph, and paragraphs joined with blank lines are the
chapter's text (:func:`rejoin` proves it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from voxmill.book.model import Chapter, Chunk
from voxmill.catalog import get_model
from voxmill.errors import ConfigError

#: words after which a full stop does not end a sentence
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st prof sr jr mt vs etc e.g i.e gen col capt lt sgt rev hon esq".split()
)
#: abbreviations only before a number ("No. 5", "p. 12")
_NUMBERED = frozenset("no vol fig ch p pp".split())
_CLOSERS = "\"'”’)]»"
_SENTENCE_END = re.compile(r"[.!?…]+$")
_CLAUSE_END = re.compile(r"[,;:—–]$")


@dataclass(frozen=True)
class ChunkLimits:
    """The most a chunk may hold."""

    words: int
    chars: int

    @classmethod
    def for_model(cls, model: str) -> ChunkLimits:
        """The model's limits from the catalogue: ``chunk_words`` and its recommended characters."""
        spec = get_model(model)
        if spec.kind != "tts":
            raise ConfigError(f"model {model!r} cannot speak a book; choose a TTS model")
        chars = spec.text_soft_limit or spec.text_hard_limit or 1000
        return cls(words=spec.chunk_words or 150, chars=chars)


def split_sentences(paragraph: str) -> list[str]:
    """The sentences of a whitespace-folded paragraph; ``" ".join`` of them is the paragraph."""
    words = paragraph.split(" ")
    sentences: list[str] = []
    current: list[str] = []
    for position, word in enumerate(words):
        current.append(word)
        following = words[position + 1] if position + 1 < len(words) else None
        if following is None or _ends_sentence(word, following):
            sentences.append(" ".join(current))
            current = []
    return sentences


def _ends_sentence(word: str, following: str) -> bool:
    bare = word.rstrip(_CLOSERS)
    if not _SENTENCE_END.search(bare):
        return False
    stem = bare.rstrip(".!?…").lower()
    if bare.endswith(".") and not bare.endswith(".."):
        if stem in _ABBREVIATIONS or re.fullmatch(r"[a-z]", stem) and stem != "i":
            return False  # "Mr. Smith", "J. R. Tolkien"
        if stem in _NUMBERED and following[:1].isdigit():
            return False  # "No. 5"
    start = following.lstrip("\"'“‘([«—-")
    return bool(start) and (start[0].isupper() or start[0].isdigit() or start != following)


def _fits(text: str, limits: ChunkLimits) -> bool:
    return len(text) <= limits.chars and len(text.split(" ")) <= limits.words


def _split_long(sentence: str, limits: ChunkLimits) -> list[str]:
    """A sentence over the limits → pieces at clause punctuation, and between words where a clause is too long."""
    words = sentence.split(" ")
    clauses: list[list[str]] = [[]]
    for word in words:
        clauses[-1].append(word)
        if _CLAUSE_END.search(word.rstrip(_CLOSERS)):
            clauses.append([])
    pieces: list[str] = []
    for clause in (c for c in clauses if c):
        text = " ".join(clause)
        if _fits(text, limits):
            pieces.append(text)
            continue
        current: list[str] = []
        for word in clause:  # a clause still too long: as many words as fit
            if current and not _fits(" ".join([*current, word]), limits):
                pieces.append(" ".join(current))
                current = []
            current.append(word)
        if current:
            pieces.append(" ".join(current))
    return _pack(pieces, limits)


def _pack(pieces: Sequence[str], limits: ChunkLimits) -> list[str]:
    """Greedy: consecutive pieces joined with spaces while the result fits."""
    packed: list[str] = []
    for piece in pieces:
        if packed and _fits(f"{packed[-1]} {piece}", limits):
            packed[-1] = f"{packed[-1]} {piece}"
        else:
            packed.append(piece)
    return packed


def chunk_paragraph(paragraph: str, limits: ChunkLimits) -> list[str]:
    """One paragraph's chunks: whole sentences packed up to the limits; long sentences cut as described above."""
    pieces: list[str] = []
    for sentence in split_sentences(paragraph):
        pieces.extend([sentence] if _fits(sentence, limits) else _split_long(sentence, limits))
    return _pack(pieces, limits)


def chunk_chapter(chapter: Chapter, limits: ChunkLimits) -> list[Chunk]:
    """Every chunk of a chapter, in order."""
    chunks: list[Chunk] = []
    for number, paragraph in enumerate(chapter.paragraphs):
        texts = chunk_paragraph(paragraph, limits)
        for position, text in enumerate(texts):
            chunks.append(Chunk(chapter.index, len(chunks), number, text, ends_paragraph=position == len(texts) - 1))
    return chunks


def rejoin(chunks: Sequence[Chunk]) -> str:
    """The chapter text the chunks came from: spaces within a paragraph, blank lines between paragraphs."""
    parts: list[str] = []
    for position, chunk in enumerate(chunks):
        if position:
            parts.append("\n\n" if chunks[position - 1].paragraph != chunk.paragraph else " ")
        parts.append(chunk.text)
    return "".join(parts)


def iter_sentences(text: str) -> Iterator[str]:
    """The sentences of a chunk (for subtitle cues)."""
    for paragraph in text.split("\n\n"):
        yield from (s for s in split_sentences(" ".join(paragraph.split())) if s)


__all__ = ["ChunkLimits", "chunk_chapter", "chunk_paragraph", "iter_sentences", "rejoin", "split_sentences"]
