"""The one timed-text record shared by the client (ASR segments) and the subtitle writers.

It lives in a module of its own, importing nothing of voxmill but the errors, so the client and
:mod:`voxmill.subtitles` can both use it without one depending on the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from voxmill.errors import BadResponse


@dataclass(frozen=True)
class TimedText:
    """A stretch of transcript: ``text`` spoken from ``start`` to ``end`` seconds."""

    start: float
    end: float
    text: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimedText:
        """From an ASR segment like ``{"start": 0.0, "end": 1.5, "text": "Hello"}``; BadResponse if malformed."""
        try:
            return cls(float(data["start"]), float(data["end"]), str(data.get("text", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadResponse(f"transcript segment is not {{start, end, text}}: {dict(data)!r}"[:300]) from exc

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape :meth:`from_dict` reads."""
        return {"start": self.start, "end": self.end, "text": self.text}

    def shifted(self, offset: float) -> TimedText:
        """The same text ``offset`` seconds later."""
        return TimedText(self.start + offset, self.end + offset, self.text)


__all__ = ["TimedText"]
