"""What a local server admitted over time, from its own counters (``/admin/stats``), for rate tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from conftest import LocalServer


@dataclass(frozen=True)
class Sample:
    """The server's counters at ``t`` seconds."""

    t: float
    ok: int
    limited: int

    @property
    def requests(self) -> int:
        return self.ok + self.limited


class StatsSampler:
    """Polls ``/admin/stats`` every ``period`` seconds in a thread; ``at_time`` runs one action at a time."""

    def __init__(self, server: LocalServer, period: float = 0.5,
                 action: tuple[float, Callable[[], object]] | None = None) -> None:
        self.server, self.period, self.action = server, period, action
        self.samples: list[Sample] = []
        self.action_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatsSampler:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        by_status = self.server.stats()["by_status"]
        self.samples.append(Sample(time.monotonic() - self.started, by_status.get("200", 0), by_status.get("429", 0)))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()
            if self.action and self.action_at is None and self.samples[-1].t >= self.action[0]:
                self.action[1]()
                self.action_at = time.monotonic() - self.started

    def at(self, t: float) -> Sample:
        """The first sample at or after ``t``."""
        return next(s for s in self.samples if s.t >= t)

    def last_busy(self, total: int) -> Sample:
        """The last sample taken while work remained (the tail of a run drains below the rate)."""
        return [s for s in self.samples if s.ok < total - 10][-1]

    def busy_rates(self, total: int) -> tuple[float, float]:
        """(offered, admitted) requests per second from the first success to the last sample while work remained."""
        busy = [s for s in self.samples if 0 < s.ok < total - 10]
        first, last = busy[0], busy[-1]
        span = last.t - first.t
        return (last.requests - first.requests) / span, (last.ok - first.ok) / span
