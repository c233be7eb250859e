"""One chapter's audio from its chunks: trimmed edges, measured pauses, equal-power crossfades.

The chapter is streamed to its WAV: one chunk is in memory at a time, whatever the chapter's length. Each
chunk is decoded with pydub, its leading and trailing silence is cut down to ``edge_keep_s``, and a fixed pause
goes between chunks: ``sentence_s`` within a paragraph, ``paragraph_s`` after one. Every join is a short
equal-power crossfade (cos/sin gains), so no join clicks. The chunk positions in the result are exact
(sample counts), which is what the subtitles and chapter marks are built from.
"""

from __future__ import annotations

import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxmill.audio.transcode import atomic_output
from voxmill.book.model import Chunk
from voxmill.catalog import TTS_SAMPLE_RATE


@dataclass(frozen=True)
class Pauses:
    """Silence and joins in a chapter, in seconds (``silence_db``: below this a 10 ms window is silence)."""

    sentence_s: float = 0.35
    paragraph_s: float = 0.8
    chapter_lead_s: float = 0.5
    chapter_tail_s: float = 1.5
    edge_keep_s: float = 0.05
    crossfade_s: float = 0.015
    silence_db: float = -45.0


@dataclass(frozen=True)
class PlacedChunk:
    """Where a chunk's speech sits in its chapter's audio (seconds from the chapter's start)."""

    chunk: Chunk
    start_s: float
    end_s: float


@dataclass(frozen=True)
class ChapterAudio:
    """An assembled chapter: its WAV, exact duration and every chunk's place in it."""

    chapter: int
    path: Path
    duration_s: float
    placed: tuple[PlacedChunk, ...]


def load_mono(path: Path, sample_rate: int) -> np.ndarray:
    """A clip as float32 mono at ``sample_rate`` (decoded by pydub/ffmpeg; the file is closed after)."""
    from pydub import AudioSegment

    with open(path, "rb") as handle:
        segment = AudioSegment.from_file(handle, format=path.suffix.lstrip(".") or None)
    segment = segment.set_channels(1).set_frame_rate(sample_rate).set_sample_width(2)
    return np.frombuffer(segment.raw_data, dtype="<i2").astype(np.float32) / 32768.0


def trim_silence(samples: np.ndarray, sample_rate: int, pauses: Pauses) -> np.ndarray:
    """``samples`` without leading/trailing silence beyond ``edge_keep_s``; empty when it is all silence."""
    window = max(1, sample_rate // 100)
    frames = len(samples) // window
    if frames == 0:
        return samples[:0]
    rms = np.sqrt(np.mean(samples[: frames * window].reshape(frames, window) ** 2, axis=1))
    voiced = np.flatnonzero(rms > 10 ** (pauses.silence_db / 20))
    if voiced.size == 0:
        return samples[:0]
    keep = int(pauses.edge_keep_s * sample_rate)
    first = max(0, int(voiced[0]) * window - keep)
    last = min(len(samples), (int(voiced[-1]) + 1) * window + keep)
    return samples[first:last]


class CrossfadeJoiner:
    """Joins pieces one at a time with equal-power crossfades, handing finished audio to ``write`` as it goes.

    Only the last piece is held back (its tail may still be crossfaded), so a chapter of any length is
    assembled in the memory of one chunk.
    """

    def __init__(self, write: Callable[[np.ndarray], None], crossfade: int) -> None:
        self._write = write
        self._crossfade = crossfade
        self._pending: np.ndarray | None = None
        self.written = 0

    def add(self, piece: np.ndarray) -> int:
        """Append ``piece``; the sample position where it starts in the joined audio."""
        if self._pending is None:
            self._pending = piece
            return self.written
        previous = self._pending
        overlap = min(self._crossfade, len(previous), len(piece))
        head = previous[: len(previous) - overlap]
        self._write(head)
        self.written += len(head)
        if overlap:
            phase = np.linspace(0.0, np.pi / 2, overlap, dtype=np.float32)
            mixed = previous[len(previous) - overlap:] * np.cos(phase) + piece[:overlap] * np.sin(phase)
            self._pending = np.concatenate([mixed, piece[overlap:]])
        else:
            self._pending = piece
        return self.written

    def close(self) -> int:
        """Write what is held back; the total length in samples."""
        if self._pending is not None:
            self._write(self._pending)
            self.written += len(self._pending)
            self._pending = None
        return self.written


def crossfade_join(pieces: Sequence[np.ndarray], crossfade: int) -> tuple[np.ndarray, list[int]]:
    """Pieces joined in memory with equal-power crossfades of up to ``crossfade`` samples; and their starts."""
    parts: list[np.ndarray] = []
    joiner = CrossfadeJoiner(parts.append, crossfade)
    starts = [joiner.add(piece) for piece in pieces]
    joiner.close()
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), starts


def assemble_chapter(
    chapter: int,
    chunks: Sequence[tuple[Chunk, Path]],
    target: Path,
    pauses: Pauses = Pauses(),
    sample_rate: int = TTS_SAMPLE_RATE,
) -> ChapterAudio:
    """Write chapter ``chapter`` (its chunks and their audio files, in order) to ``target`` as 16-bit WAV.

    Streams: each chunk is decoded, trimmed and written before the next is read.
    """
    def silence(seconds: float) -> np.ndarray:
        return np.zeros(max(0, int(round(seconds * sample_rate))), np.float32)

    edges = 2 * pauses.edge_keep_s  # the kept edges are part of each pause
    placed: list[PlacedChunk] = []
    with atomic_output(target) as temp, wave.open(str(temp), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)

        def write(samples: np.ndarray) -> None:
            writer.writeframes(np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2").tobytes())

        joiner = CrossfadeJoiner(write, int(pauses.crossfade_s * sample_rate))
        joiner.add(silence(pauses.chapter_lead_s))
        for position, (chunk, path) in enumerate(chunks):
            if position:
                gap = pauses.paragraph_s if chunks[position - 1][0].ends_paragraph else pauses.sentence_s
                joiner.add(silence(gap - edges))
            speech = trim_silence(load_mono(path, sample_rate), sample_rate, pauses)
            start = joiner.add(speech)
            placed.append(PlacedChunk(chunk, start / sample_rate, (start + len(speech)) / sample_rate))
        joiner.add(silence(pauses.chapter_tail_s))
        total = joiner.close()
    return ChapterAudio(chapter, target, total / sample_rate, tuple(placed))


__all__ = ["ChapterAudio", "CrossfadeJoiner", "Pauses", "PlacedChunk", "assemble_chapter", "crossfade_join",
           "load_mono", "trim_silence"]
