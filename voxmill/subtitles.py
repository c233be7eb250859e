"""Transcripts as files: timed text segments, SRT and WebVTT formatting, and the four files per item.

A segment is a :class:`~voxmill.timing.TimedText` (seconds from the start of the whole recording),
re-exported here. ``to_srt`` and ``to_vtt`` are pure formatters; :func:`write_transcript_files` writes
``.txt``, ``.srt``, ``.vtt`` and ``.json`` beside each other, each atomically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from voxmill.audio.transcode import write_bytes_atomic
from voxmill.timing import TimedText

#: the files of one transcript, ``.txt`` first (the one a results row names)
TRANSCRIPT_EXTENSIONS = ("txt", "srt", "vtt", "json")


def segments_from(raw: Mapping[str, Any]) -> list[TimedText]:
    """The ``segments`` list of a Whisper-style JSON response (empty when it has none)."""
    return [TimedText.from_dict(s) for s in raw.get("segments") or ()]


def timestamp(seconds: float, separator: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or, with ``separator="."``, ``HH:MM:SS.mmm`` (WebVTT); rounded to the ms."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cue_text(text: str) -> str:
    # a blank line ends a cue in both formats: keep line breaks, drop empty lines
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _cues(segments: Iterable[TimedText]) -> list[tuple[float, float, str]]:
    cues = []
    for seg in segments:
        text = _cue_text(seg.text)
        if text:  # an empty cue is invalid SRT
            cues.append((seg.start, max(seg.start, seg.end), text))
    return cues


def to_srt(segments: Iterable[TimedText]) -> str:
    """SubRip text: 1-based indices, ``00:00:01,500 --> 00:00:03,000``, a blank line after each cue."""
    blocks = [
        f"{index}\n{timestamp(start)} --> {timestamp(end)}\n{text}\n"
        for index, (start, end, text) in enumerate(_cues(segments), start=1)
    ]
    return "\n".join(blocks)


_VTT_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def to_vtt(segments: Iterable[TimedText]) -> str:
    """WebVTT text: the ``WEBVTT`` header, then ``00:00:01.500 --> 00:00:03.000`` cues (``&<>`` escaped)."""
    blocks = ["WEBVTT\n"]
    for start, end, text in _cues(segments):
        escaped = re.sub(r"[&<>]", lambda m: _VTT_ESCAPES[m.group(0)], text)
        blocks.append(f"{timestamp(start, '.')} --> {timestamp(end, '.')}\n{escaped}\n")
    return "\n".join(blocks)


def write_transcript_files(
    base: Path, text: str, segments: Iterable[TimedText], raw: Mapping[str, Any] | str
) -> dict[str, Path]:
    """Write ``base.txt``, ``.srt``, ``.vtt`` and ``.json``; return them by extension.

    The suffix is appended (``item.v2`` gives ``item.v2.srt``). ``raw`` is the API's response: a mapping
    is written as JSON; a string is written as it is when it is JSON, otherwise wrapped with the segments.
    """
    base = Path(base)
    segments = list(segments)
    if isinstance(raw, str):
        try:
            json.loads(raw)
            raw_json = raw
        except ValueError:
            raw_json = json.dumps(
                {"text": text, "segments": [s.to_dict() for s in segments], "raw": raw}, ensure_ascii=False, indent=2
            )
    else:
        raw_json = json.dumps(raw, ensure_ascii=False, indent=2)
    contents = {  # in the order of TRANSCRIPT_EXTENSIONS
        "txt": text.strip() + "\n",
        "srt": to_srt(segments),
        "vtt": to_vtt(segments),
        "json": raw_json if raw_json.endswith("\n") else raw_json + "\n",
    }
    written: dict[str, Path] = {}
    for ext, body in contents.items():
        path = base.with_name(f"{base.name}.{ext}")
        write_bytes_atomic(path, body.encode("utf-8"))
        written[ext] = path
    return written


__all__ = [
    "TRANSCRIPT_EXTENSIONS", "TimedText", "segments_from", "timestamp", "to_srt", "to_vtt", "write_transcript_files",
]
