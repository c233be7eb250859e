"""Live counters of a run, shared by the engine (writer) and whatever displays them (CLI bar, Prefect)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class ProgressBoard:
    """Thread-safe counts of a run's items; the engine updates it, displays poll :meth:`snapshot`."""

    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    retrying: int = 0
    in_flight: int = 0
    #: retries of any kind, and how many of them followed a 429
    retries: int = 0
    rate_limited: int = 0
    audio_seconds: float = 0.0
    #: the rate the limiter allows now, requests per second (learned from the API; None: unlimited)
    api_rate: float | None = None
    #: requests on the wire now (items in flight include those still waiting for a start), and the
    #: in-flight limit the limiter allows now (learned from the API; None: not known, e.g. another client)
    requests_in_flight: int = 0
    in_flight_limit: int | None = None
    #: the most requests this run had on the wire at once
    in_flight_high: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        # not a field: a flow run's context serialises its parameters field by field, and a lock cannot travel
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type[ProgressBoard], tuple[()]]:
        # a board sent to another process (a process or Dask task runner) is a fresh, detached one there:
        # counts from other processes come back through batch outcomes
        return (ProgressBoard, ())

    def add(self, **deltas: float) -> None:
        """Add to counters by name (e.g. ``add(done=1, in_flight=-1)``)."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> ProgressSnapshot:
        """A consistent copy of the counters, with rate and ETA."""
        with self._lock:
            elapsed = max(time.monotonic() - self.started_at, 1e-9)
            finished = self.done + self.failed
            remaining = max(self.total - self.skipped - finished, 0)
            rate = finished / elapsed
            return ProgressSnapshot(
                total=self.total,
                skipped=self.skipped,
                done=self.done,
                failed=self.failed,
                retrying=self.retrying,
                in_flight=self.in_flight,
                retries=self.retries,
                rate_limited=self.rate_limited,
                audio_seconds=self.audio_seconds,
                api_rate=self.api_rate,
                requests_in_flight=self.requests_in_flight,
                in_flight_limit=self.in_flight_limit,
                elapsed_s=elapsed,
                rate_per_s=rate,
                eta_s=remaining / rate if rate > 0 else None,
            )


@dataclass(frozen=True)
class ProgressSnapshot:
    """Counters at one instant."""

    total: int
    skipped: int
    done: int
    failed: int
    retrying: int
    in_flight: int
    retries: int
    rate_limited: int
    audio_seconds: float
    api_rate: float | None
    requests_in_flight: int
    in_flight_limit: int | None
    elapsed_s: float
    rate_per_s: float
    eta_s: float | None

    @property
    def finished(self) -> int:
        """Items accounted for: skipped as already done, done now, or failed."""
        return self.skipped + self.done + self.failed

    def log_line(self) -> str:
        """One progress line for a run log (never one per request)."""
        return (
            f"{self.finished}/{self.total} accounted for: {self.done} done, {self.failed} failed, "
            f"{self.skipped} skipped as done; {self.in_flight} in flight; {self.retries} retries "
            f"({self.rate_limited} after 429); {self.rate_per_s:.1f} items/s{self.limits_text()}"
        )

    def limits_text(self) -> str:
        """What the limiter holds now: requests in flight of the learned limit, and the learned rate."""
        text = ""
        if self.in_flight_limit is not None:
            text += f"; requests in flight {self.requests_in_flight}/{self.in_flight_limit}"
        if self.api_rate is not None:
            text += f"; API rate {self.api_rate:.1f}/s"
        return text


_WATCHED: ContextVar[ProgressBoard | None] = ContextVar("voxmill_progress_board", default=None)


@contextmanager
def watching(board: ProgressBoard) -> Iterator[ProgressBoard]:
    """Jobs started inside the ``with`` block (in this thread, and the flow runs it calls in-process) count on
    ``board``: how a caller's display follows a flow without passing a live object as a flow parameter."""
    token = _WATCHED.set(board)
    try:
        yield board
    finally:
        _WATCHED.reset(token)


def watched_board() -> ProgressBoard | None:
    """The board of the innermost :func:`watching` block around this call, if any."""
    return _WATCHED.get()


__all__ = ["ProgressBoard", "ProgressSnapshot", "watched_board", "watching"]
