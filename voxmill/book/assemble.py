"""One chapter's audio from its chunks: trimmed edges, measured pauses, equal-power crossfades.

Only one chapter is in memory at a time (a 40-minute chapter at 24 kHz is ~230 MB of float32). Each chunk
is decoded with pydub, its leading and trailing silence is cut down to ``edge_keep_s``, and a fixed pause
goes between chunks: ``sentence_s`` within a paragraph, ``paragraph_s`` after one. Every join is a short
equal-power crossfade (cos/sin gains), so no join clicks. The chunk positions in the result are exact
(sample counts), which is what the subtitles and chapter marks are built from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxmill.audio.formats import wav_bytes
from voxmill.audio.transcode import write_bytes_atomic
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


def crossfade_join(pieces: Sequence[np.ndarray], crossfade: int) -> tuple[np.ndarray, list[int]]:
    """Pieces joined with equal-power crossfades of up to ``crossfade`` samples; and where each piece starts."""
    if not pieces:
        return np.zeros(0, np.float32), []
    parts: list[np.ndarray] = []
    starts = [0]
    cursor = 0
    previous = pieces[0]
    for following in pieces[1:]:
        overlap = min(crossfade, len(previous), len(following))
        head = previous[: len(previous) - overlap]
        parts.append(head)
        cursor += len(head)
        starts.append(cursor)
        if overlap:
            phase = np.linspace(0.0, np.pi / 2, overlap, dtype=np.float32)
            mixed = previous[len(previous) - overlap:] * np.cos(phase) + following[:overlap] * np.sin(phase)
            previous = np.concatenate([mixed, following[overlap:]])
        else:
            previous = following
    parts.append(previous)
    return np.concatenate(parts), starts


def assemble_chapter(
    chapter: int,
    chunks: Sequence[tuple[Chunk, Path]],
    target: Path,
    pauses: Pauses = Pauses(),
    sample_rate: int = TTS_SAMPLE_RATE,
) -> ChapterAudio:
    """Write chapter ``chapter`` (its chunks and their audio files, in order) to ``target`` as 16-bit WAV."""
    def silence(seconds: float) -> np.ndarray:
        return np.zeros(max(0, int(round(seconds * sample_rate))), np.float32)

    edges = 2 * pauses.edge_keep_s  # the kept edges are part of each pause
    pieces: list[np.ndarray] = [silence(pauses.chapter_lead_s)]
    for position, (_, path) in enumerate(chunks):
        if position:
            gap = pauses.paragraph_s if chunks[position - 1][0].ends_paragraph else pauses.sentence_s
            pieces.append(silence(gap - edges))
        pieces.append(trim_silence(load_mono(path, sample_rate), sample_rate, pauses))
    pieces.append(silence(pauses.chapter_tail_s))
    crossfade = int(pauses.crossfade_s * sample_rate)
    audio, starts = crossfade_join(pieces, crossfade)
    placed = []
    for position, (chunk, _) in enumerate(chunks):
        piece = 1 + 2 * position  # lead silence, then chunk / pause alternating
        start = starts[piece]
        placed.append(PlacedChunk(chunk, start / sample_rate, (start + len(pieces[piece])) / sample_rate))
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    write_bytes_atomic(target, wav_bytes(pcm, sample_rate))
    return ChapterAudio(chapter, target, len(pcm) / sample_rate, tuple(placed))


__all__ = ["ChapterAudio", "Pauses", "PlacedChunk", "assemble_chapter", "crossfade_join", "load_mono",
           "trim_silence"]
