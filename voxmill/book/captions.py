"""Subtitle cues for a chapter: one per sentence, timed from where each chunk sits in the chapter's audio."""

from __future__ import annotations

from collections.abc import Iterable

from voxmill.book.assemble import PlacedChunk
from voxmill.book.chunking import iter_sentences
from voxmill.timing import TimedText


def chapter_cues(placed: Iterable[PlacedChunk]) -> list[TimedText]:
    """Sentence cues: a chunk's span shared among its sentences by their length in characters.

    A chunk's span is exact (sample counts of the assembled chapter), so the error stays inside a chunk and
    the last cue ends where the chapter's speech ends.
    """
    cues: list[TimedText] = []
    for item in placed:
        sentences = list(iter_sentences(item.chunk.text)) or [item.chunk.text]
        total = sum(len(s) for s in sentences) or 1
        span = item.end_s - item.start_s
        cursor = item.start_s
        for sentence in sentences:
            end = cursor + span * len(sentence) / total
            cues.append(TimedText(round(cursor, 3), round(end, 3), sentence))
            cursor = end
    return cues


__all__ = ["chapter_cues"]
