"""Server-side counters, so a test can prove how many calls reached the server and how many were billed.

A *generation* is counted when a 200 carrying generated content is handed to the server for sending,
truncated bodies included: the hosted API bills the work it did even when the body is lost in transit, so a
client that retries after a truncated body pays twice, and tests can see that. 429s, 5xx, resets and
validation errors are never generations. ``in_flight`` is a gauge of generate/upload requests being served now
(holding one of ``max_in_flight`` slots, body read), ``in_flight_high`` its high-water mark since the last
reset; ``queued``/``queued_high`` the same for requests held waiting for a slot (``overload="queue"``).
``arrived`` numbers the generate/upload requests since the server started (1, 2, …; never reset), and
``settled_through`` is the arrival number up to which every request has been answered or dropped: a test that
kills a client notes ``arrived`` and waits for ``settled_through`` to reach it,
and then knows the server has finished (and billed) whatever the dead client had asked for, while other clients'
requests keep arriving.
``by_status`` counts every answered status, 413/408 body refusals and unexpected 500s included;
``empty_audio`` counts 200s whose audio holds no samples. Counting happens
before the body is sent, so a client that has read its response always finds it in ``GET /admin/stats``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def request_content_hash(fields: Mapping[str, str], files: Mapping[str, bytes]) -> str:
    """sha256 identifying a request's content: every text field (``model`` included) and each file's bytes.

    Fields are taken exactly as sent (strings, before validation) in sorted order, files by the sha256 of
    their bytes, so a client can compute the same hash from what it puts on the wire.
    """
    digest = hashlib.sha256()
    for name in sorted(fields):
        digest.update(f"field\0{name}\0{fields[name]}\0".encode())
    for name in sorted(files):
        digest.update(f"file\0{name}\0{hashlib.sha256(files[name]).hexdigest()}\0".encode())
    return digest.hexdigest()


@dataclass
class ServerStats:
    """Counters of generate/upload traffic (admin requests are not counted); thread-safe."""

    requests: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    resets: int = 0
    #: connections refused past ``max_connections_per_client`` (answered 503 before any request was read)
    refused_connections: int = 0
    generations: Counter[str] = field(default_factory=Counter)
    #: generations by model name (HTTP; e.g. TTS and round-trip ASR calls of one build apart)
    generations_by_model: Counter[str] = field(default_factory=Counter)
    #: generations whose body was cut short by the ``truncate`` fault, by content hash (billed all the same)
    truncations: Counter[str] = field(default_factory=Counter)
    uploads: int = 0
    #: 200s whose generated audio holds no samples (the real engine on unspeakable text); also generations
    empty_audio: int = 0
    in_flight: int = 0
    in_flight_high: int = 0
    queued: int = 0
    queued_high: int = 0
    #: arrival numbers of the requests not yet answered or dropped
    _open: set[int] = field(default_factory=set, repr=False, compare=False)
    _arrived: int = field(default=0, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_request(self) -> int:
        """A generate or upload request arrived (HTTP or WebSocket); returns its arrival number, for
        :meth:`settle`."""
        with self._lock:
            self.requests += 1
            self._arrived += 1
            self._open.add(self._arrived)
            return self._arrived

    def settle(self, arrival: int) -> None:
        """The request with this arrival number was answered (its generation, if any, already counted) or
        dropped."""
        with self._lock:
            self._open.discard(arrival)

    def record_status(self, status: int) -> None:
        """A response with this status was sent (WebSocket sessions count as 101)."""
        with self._lock:
            self.by_status[str(status)] += 1

    def record_reset(self) -> None:
        """A connection was dropped without a response."""
        with self._lock:
            self.resets += 1

    def record_refused_connection(self) -> None:
        """A connection was refused: its client already held the most connections allowed."""
        with self._lock:
            self.refused_connections += 1

    def record_generation(self, content_hash: str, model: str | None = None) -> None:
        """A generation was done and its 200 handed over for sending (``model``: counted per model too)."""
        with self._lock:
            self.generations[content_hash] += 1
            if model:
                self.generations_by_model[model] += 1

    def record_truncation(self, content_hash: str) -> None:
        """A generation's body is being sent cut short (fault ``truncate``)."""
        with self._lock:
            self.truncations[content_hash] += 1

    def record_empty_audio(self) -> None:
        """A generation produced no samples (it is billed like any other, as a real API may)."""
        with self._lock:
            self.empty_audio += 1

    def enter(self) -> None:
        """A request took a serving slot (the in-flight gauge rises)."""
        with self._lock:
            self.in_flight += 1
            self.in_flight_high = max(self.in_flight_high, self.in_flight)

    def leave(self) -> None:
        """A request gave its serving slot back."""
        with self._lock:
            self.in_flight -= 1

    def queue(self, change: int) -> None:
        """A request started (+1) or stopped (-1) waiting for a serving slot."""
        with self._lock:
            self.queued += change
            self.queued_high = max(self.queued_high, self.queued)

    def record_upload(self) -> None:
        """A voice reference was accepted."""
        with self._lock:
            self.uploads += 1

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self.requests = 0
            self.by_status.clear()
            self.resets = 0
            self.refused_connections = 0
            self.generations.clear()
            self.generations_by_model.clear()
            self.truncations.clear()
            self.uploads = 0
            self.empty_audio = 0
            # the gauges hold what is in flight now; their high-water marks start again from it
            self.in_flight_high = self.in_flight
            self.queued_high = self.queued

    def snapshot(self) -> dict[str, Any]:
        """The JSON body of ``GET /admin/stats``."""
        with self._lock:
            return {
                "requests": self.requests,
                "by_status": dict(self.by_status),
                "resets": self.resets,
                "refused_connections": self.refused_connections,
                "generations_total": sum(self.generations.values()),
                "generations": dict(self.generations),
                "generations_by_model": dict(self.generations_by_model),
                "truncations_total": sum(self.truncations.values()),
                "truncations": dict(self.truncations),
                "uploads": self.uploads,
                "empty_audio": self.empty_audio,
                "in_flight": self.in_flight,
                "in_flight_high": self.in_flight_high,
                "queued": self.queued,
                "queued_high": self.queued_high,
                "arrived": self._arrived,
                "settled_through": min(self._open) - 1 if self._open else self._arrived,
            }


__all__ = ["ServerStats", "request_content_hash"]
