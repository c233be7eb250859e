"""Live counters of a run, shared by the engine (writer) and whatever displays them (CLI bar, Prefect)."""

from __future__ import annotations

import threading
import time
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
    audio_seconds: float = 0.0
    #: the rate the limiter allows now, requests per second (learned from the API; None: unlimited)
    api_rate: float | None = None
    started_at: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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
                audio_seconds=self.audio_seconds,
                api_rate=self.api_rate,
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
    audio_seconds: float
    api_rate: float | None
    elapsed_s: float
    rate_per_s: float
    eta_s: float | None

    @property
    def finished(self) -> int:
        """Items accounted for: skipped as already done, done now, or failed."""
        return self.skipped + self.done + self.failed





_ACTIVE: ProgressBoard | None = None


def watch(board: ProgressBoard | None) -> None:
    """Make ``board`` the one the next run in this process reports to (the CLI's progress bar)."""
    global _ACTIVE
    _ACTIVE = board


def active_board() -> ProgressBoard:
    """The board set by :func:`watch`, else a fresh one."""
    return _ACTIVE if _ACTIVE is not None else ProgressBoard()
__all__ = ["ProgressBoard", "ProgressSnapshot", "active_board", "watch"]
