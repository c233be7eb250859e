"""Sentence timings of a chapter: subtitle cues and read-along clips, timed from where each chunk sits in the
chapter's audio."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from voxmill.book.assemble import PlacedChunk
from voxmill.book.chunking import iter_sentences
from voxmill.timing import TimedText


@dataclass(frozen=True)
class SentenceTime:
    """A sentence of a chapter, its paragraph, and its span in the chapter's audio."""

    text: str
    paragraph: int
    start_s: float
    end_s: float


def sentence_times(placed: Iterable[PlacedChunk]) -> list[SentenceTime]:
    """Every sentence of a chapter: a chunk's span shared among its sentences by their length in characters.

    A chunk's span is exact (sample counts of the assembled chapter), so the error stays inside a chunk and
    the last sentence ends where the chapter's speech ends.
    """
    times: list[SentenceTime] = []
    for item in placed:
        sentences = list(iter_sentences(item.chunk.text)) or [item.chunk.text]
        total = sum(len(s) for s in sentences) or 1
        span = item.end_s - item.start_s
        cursor = item.start_s
        for sentence in sentences:
            end = cursor + span * len(sentence) / total
            times.append(SentenceTime(sentence, item.chunk.paragraph, cursor, end))
            cursor = end
    return times


def chapter_cues(placed: Iterable[PlacedChunk]) -> list[TimedText]:
    """Subtitle cues, one per sentence (:func:`sentence_times`)."""
    return [TimedText(round(t.start_s, 3), round(t.end_s, 3), t.text) for t in sentence_times(placed)]


__all__ = ["SentenceTime", "chapter_cues", "sentence_times"]
