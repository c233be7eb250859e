"""Split long recordings at silences so each piece fits an ASR limit, and stitch the transcripts back.

One ffmpeg ``silencedetect`` pass finds the silences (about 10x faster than pydub's pure-Python
detector); cuts go at silence midpoints, or hard at the limit when a window holds no silence. Pieces are
re-encoded to 16 kHz mono WAV so cuts are sample-exact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from voxmill.audio.measure import ffmpeg_command, probe, run_tool
from voxmill.audio.transcode import atomic_output
from voxmill.catalog import ASR_SAMPLE_RATE
from voxmill.errors import ConfigError
from voxmill.timing import TimedText

#: pieces are written at the rate ASR models work at
PIECE_RATE = ASR_SAMPLE_RATE
#: a cut closer than this to the previous one would make a useless sliver
_MIN_PIECE_S = 0.5

_SILENCE_START = re.compile(r"silence_start: (-?[\d.]+)")
_SILENCE_END = re.compile(r"silence_end: (-?[\d.]+)")


@dataclass(frozen=True)
class Piece:
    """One piece of a recording: its file and where it sits in the original (seconds)."""

    path: Path
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        """Length of the piece in seconds."""
        return self.end_s - self.start_s


def detect_silences(path: Path, *, min_silence_s: float = 0.3, noise_db: float = -35) -> list[tuple[float, float]]:
    """(start, end) seconds of every silence of at least ``min_silence_s`` below ``noise_db`` dBFS.

    A silence still open at the end of the file ends at the file's duration.
    """
    detector = f"silencedetect=noise={noise_db}dB:d={min_silence_s}"
    cmd = ffmpeg_command("-i", str(path), "-vn", "-af", detector, "-f", "null", "-", loglevel="info")
    stderr = run_tool(cmd, what=f"could not scan {str(path)!r} for silence").stderr.decode("utf-8", "replace")
    silences: list[tuple[float, float]] = []
    open_start: float | None = None
    for line in stderr.splitlines():
        if (match := _SILENCE_START.search(line)) is not None:
            open_start = max(0.0, float(match.group(1)))
        elif (match := _SILENCE_END.search(line)) is not None and open_start is not None:
            silences.append((open_start, float(match.group(1))))
            open_start = None
    if open_start is not None:
        silences.append((open_start, probe(path).duration_s))
    return silences


def plan_cuts(duration_s: float, silences: Sequence[tuple[float, float]], max_seconds: float) -> list[float]:
    """Cut times (excluding 0 and the end) so that no piece is longer than ``max_seconds``.

    Greedy: each piece runs to the last silence midpoint within reach (or to the reachable part of a
    silence that straddles the limit), else it is cut hard at the limit.
    """
    cuts: list[float] = []
    position = 0.0
    while duration_s - position > max_seconds:
        limit = position + max_seconds
        best = None
        for start, end in silences:
            if start >= limit:
                break
            if start < position:  # already cut inside this one (or it was out of reach before)
                continue
            cut = min((start + end) / 2, limit)
            if cut >= position + _MIN_PIECE_S and (best is None or cut > best):
                best = cut
        # millisecond cut times: tidy in file names and logs, far finer than any silence
        position = math.floor((best if best is not None else limit) * 1000) / 1000
        cuts.append(position)
    return cuts


def split_on_silence(
    path: Path, max_seconds: float, out_dir: Path, *, min_silence_s: float = 0.3, noise_db: float = -35
) -> list[Piece]:
    """Split ``path`` into pieces of at most ``max_seconds``, cut inside silences where there are any.

    A file that already fits comes back as one piece: the original path, untouched. Otherwise pieces are
    written to ``out_dir`` as ``<stem>.partNNN.wav`` (16 kHz mono). Raises InvalidItem for unreadable
    input (see :func:`~voxmill.audio.measure.probe`).
    """
    if max_seconds <= 2 * _MIN_PIECE_S:
        raise ConfigError(f"max_seconds must be over {2 * _MIN_PIECE_S} s, got {max_seconds}")
    path = Path(path)
    duration = probe(path).duration_s
    if duration <= max_seconds:
        return [Piece(path, 0.0, duration)]
    silences = detect_silences(path, min_silence_s=min_silence_s, noise_db=noise_db)
    bounds = [0.0, *plan_cuts(duration, silences, max_seconds), duration]
    pieces = []
    for index, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        target = Path(out_dir) / f"{path.stem}.part{index:03d}.wav"
        with atomic_output(target) as temp:
            # -ss/-to before -i: fast input seeking, still sample-accurate because we re-encode
            cmd = ffmpeg_command(
                "-ss", f"{start:.6f}", "-to", f"{end:.6f}", "-i", str(path), "-vn", "-map_metadata", "-1",
                "-ar", str(PIECE_RATE), "-ac", "1", "-c:a", "pcm_s16le", "-f", "wav", "-y", str(temp),
            )
            run_tool(cmd, what=f"could not cut {path.name} at {start:.2f}–{end:.2f} s")
        pieces.append(Piece(target, start, end))
    return pieces


def stitch_transcripts(
    pieces_with_results: Iterable[tuple[Piece, str, Sequence[TimedText]]],
) -> tuple[str, list[TimedText]]:
    """Join per-piece transcripts ``(piece, text, segments)`` into one text and one timeline.

    Segment times are shifted by the piece's ``start_s`` and clamped to the piece's span, since models
    sometimes end the last segment after the audio does.
    """
    texts: list[str] = []
    segments: list[TimedText] = []
    for piece, text, piece_segments in sorted(pieces_with_results, key=lambda r: r[0].start_s):
        if text.strip():
            texts.append(text.strip())
        for seg in piece_segments:
            start = min(max(piece.start_s + seg.start, piece.start_s), piece.end_s)
            end = min(max(piece.start_s + seg.end, start), piece.end_s)
            segments.append(TimedText(start, end, seg.text))
    return " ".join(texts), segments


__all__ = ["Piece", "detect_silences", "plan_cuts", "split_on_silence", "stitch_transcripts"]
