"""What the client returns: typed results of a TTS or an ASR request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxmill.timing import TimedText


@dataclass(frozen=True)
class SpeechResult:
    """Audio from a TTS model, checked to be complete audio in ``format``: the response body, streamed into
    ``path`` (the file the caller named; it owns it from then on), ``size`` bytes."""

    path: Path
    size: int
    format: str
    engine: str
    request_id: str | None
    credits_remaining: str | None
    status: int
    attempts: int
    #: seconds of the successful attempt (request sent → body read), without waits and earlier tries
    latency_s: float

    def __repr__(self) -> str:
        return (
            f"SpeechResult(format={self.format!r}, size={self.size}, engine={self.engine!r}, "
            f"attempts={self.attempts}, latency_s={self.latency_s:.3f})"
        )


@dataclass(frozen=True)
class TranscriptResult:
    """Text from an ASR model; ``raw`` keeps the whole JSON (or the text) as it came."""

    text: str
    language: str | None
    duration: float | None
    segments: tuple[TimedText, ...]
    raw: dict[str, Any] | str
    engine: str
    request_id: str | None
    credits_remaining: str | None
    status: int
    attempts: int
    latency_s: float


def float_or_none(value: Any) -> float | None:
    """A number from a JSON value (a number or numeric string), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def segments_of(value: Any) -> tuple[TimedText, ...]:
    """The well-formed ``{start, end, text}`` entries of a JSON segment list."""
    if not isinstance(value, list):
        return ()
    segments = []
    for entry in value:
        if not isinstance(entry, Mapping):
            continue
        start, end = float_or_none(entry.get("start")), float_or_none(entry.get("end"))
        text = entry.get("text")
        if start is None or end is None or not isinstance(text, str):
            continue
        segments.append(TimedText(start, end, text.strip()))
    return tuple(segments)


__all__ = ["SpeechResult", "TranscriptResult", "float_or_none", "segments_of"]
