"""Where rate tokens come from: one process (:class:`LocalSource`) or every process on this machine that
uses the same API key and base URL (:class:`FileSource`). A budget holds the in-flight limit as well as the
rate (:class:`~voxmill.rate.concurrency.ConcurrencyControl`): processes sharing a budget share both.

A source hands out *leases*: ``count`` consecutive start times spaced one interval apart, on this process's
``time.monotonic()`` clock. The limiter spreads a lease over its waiting requests and reports back how
requests went; the source turns that into the one :class:`~voxmill.rate.control.RateControl` of the budget.

The file source keeps the control in ``CACHE_DIR/rate/<budget id>.json`` (the id hashes the key and the base
URL; the key itself is never written) and updates it under an ``fcntl`` lock. Tokens are leased in bulk
(about ``LEASE_SECONDS`` of the rate per lease), so the lock is taken a few times per second per process,
not per request; successes are reported (with their times) at the next lease; a 429 is written at once, so one process's
429 slows every process at its next lease (≤ ``LEASE_SECONDS`` later). The file outlives the run: the next
run on the same API starts from the learned rate.

The in-flight limit is shared the same way: the file holds the learned limit and each process's (each
source's) requests in flight (refreshed at every update, forgotten after ``STALE_PROCESS_S`` without one, or
at once when its process, on this host, is gone: a run killed with ``-9`` must not hold its slots from the run
that replaces it), and a process may hold the limit less what the others hold (at least one). Latency samples are
written at the next update (at most ``LEASE_SECONDS`` later); a "too many in flight" signal at once.
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from voxmill.identity import budget_id
from voxmill.processes import HOST, process_running
from voxmill.rate.concurrency import ConcurrencyControl
from voxmill.rate.control import COALESCE_S, RateControl

log = logging.getLogger(__name__)

#: a file-source lease covers about this many seconds of the budget's rate
LEASE_SECONDS = 0.2
#: and at most this many tokens
MAX_LEASE = 64
#: latencies buffered between two writes at most (a lease's worth at any rate this budget reaches)
MAX_HEARD = 512
#: a process whose in-flight count was not refreshed for this long (seconds) holds nothing (it ended)
STALE_PROCESS_S = 30.0
#: a process's entry in a budget file: [requests in flight, last update, last update that reported successes, host]
#: (wall-clock times; older versions wrote only the first two or three)
ProcessEntry = list[Any]
#: a process that updated the budget within this many seconds is still reporting successes (a busy one
#: updates it at every lease, a few times a second): the admitted rate is measured up to its latest update
REPORTING_S = 2.0


@dataclass(frozen=True)
class Lease:
    """``count`` start times ``first + i * interval`` (monotonic clock), booked under ``epoch``."""

    first: float
    interval: float
    count: int
    epoch: int


class TokenSource(Protocol):
    """What :class:`~voxmill.limiter.AsyncRateLimiter` needs from a budget."""

    #: ``lease`` may wait (on another machine's say-so): the limiter calls it in a thread
    blocking: bool

    def lease(self, ceiling: float | None, burst: int) -> Lease:
        """Book the next start times of the budget for this process."""
        ...

    def succeeded(self, grew: bool, ceiling: float | None, latency: float | None = None) -> None:
        """One request was admitted (answered other than 429, faults included) after ``latency`` s (None: not
        known, e.g. a reset); ``grew``: it had waited for the rate (the rate may grow)."""
        ...

    def rate_limited(self, retry_after: float | None, hold_s: float) -> None:
        """One request was answered 429."""
        ...

    @property
    def epoch(self) -> int:
        """Changes when booked start times become void (a cut or a pause)."""
        ...

    def rate(self, ceiling: float | None) -> float:
        """The rate in force for this process, requests per second."""
        ...

    def flush(self) -> None:
        """Write whatever is still buffered (the end of a run)."""
        ...

    def in_flight_limit(self, ceiling: int, in_flight: int) -> int:
        """Requests this process may have in flight now (it has ``in_flight``): the budget's limit less what
        other processes hold, at least one."""
        ...

    def finished(self, latency: float, in_flight: int, bound: bool, ceiling: int) -> None:
        """A request went through after ``latency`` s; ``bound``: requests waited for the in-flight limit."""
        ...

    def overloaded(self, in_flight: int) -> None:
        """A 429/503 said too many requests were in flight (``in_flight`` of this process, the refused one
        included)."""
        ...


class LocalSource:
    """The budget of one process: the controls in memory, one token per lease (exact spacing). ``clock``: the
    monotonic clock its times are on (tests inject a virtual one)."""

    blocking = False

    def __init__(self, control: RateControl | None = None, concurrency: ConcurrencyControl | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.control = control if control is not None else RateControl()
        self.concurrency = concurrency if concurrency is not None else ConcurrencyControl()
        self.clock = clock

    def lease(self, ceiling: float | None, burst: int) -> Lease:
        first, interval = self.control.take(self.clock(), 1, ceiling, burst)
        return Lease(first, interval, 1, self.control.epoch)

    def succeeded(self, grew: bool, ceiling: float | None, latency: float | None = None) -> None:
        control = self.control
        started = self.clock() - (latency if latency is not None else control.latency)
        control.succeeded(started, 1, 1 if grew else 0, ceiling, latency=latency)

    def rate_limited(self, retry_after: float | None, hold_s: float) -> None:
        self.control.rate_limited(self.clock(), retry_after, hold_s)

    @property
    def epoch(self) -> int:
        return self.control.epoch

    def rate(self, ceiling: float | None) -> float:
        return self.control.allowed(ceiling)

    def flush(self) -> None:
        return None

    def in_flight_limit(self, ceiling: int, in_flight: int) -> int:
        return self.concurrency.allowed(ceiling)

    def finished(self, latency: float, in_flight: int, bound: bool, ceiling: int) -> None:
        self.concurrency.succeeded(self.clock(), latency, in_flight, bound, ceiling)

    def overloaded(self, in_flight: int) -> None:
        self.concurrency.overloaded(self.clock(), in_flight)


class FileSource:
    """The budget shared by every process on this machine with the same key and base URL (see module doc).

    Times in the file are wall-clock (``time.time()``), converted to this process's monotonic clock per lease.
    """

    blocking = False

    def __init__(self, path: Path, base_url: str, ceiling: float | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.base_url = base_url
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        #: successes not yet written: [first wall time, successes, of which waited for the rate, last wall time],
        #: one per COALESCE_S
        self._pending: list[list[float]] = []
        self._ceiling = ceiling
        self._epoch = 0
        self._local_epoch = 0
        self._rate = 0.0
        #: latency samples not yet written: [wall time, latency, in flight here, bound, ceiling]
        self._samples: list[tuple[float, float, int, bool, int]] = []
        self._in_flight = 0
        self._others_in_flight = 0
        self._concurrency = ConcurrencyControl()
        self._written = 0.0
        #: this source's entry in the file's table of requests in flight
        self._me = f"{os.getpid()}-{id(self):x}"
        #: typical latency of this process's requests (its reports are stamped with their start times), and the
        #: latencies not yet written (each one's own: the budget learns their spread too)
        self._latency = 0.0
        self._heard: collections.deque[float] = collections.deque(maxlen=MAX_HEARD)
        #: every process still reporting has reported the successes answered before this (wall clock), and when
        #: this one last did (0: never)
        self._reported_until = 0.0
        self._reported = 0.0
        self._update(lambda control, now: None)

    @classmethod
    def for_api(cls, cache_dir: Path, api_key: str, base_url: str, ceiling: float | None = None) -> FileSource:
        """The shared budget of ``api_key`` at ``base_url``, kept under ``cache_dir/rate``."""
        return cls(Path(cache_dir) / "rate" / f"{budget_id(api_key, base_url)}.json", base_url, ceiling)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None

    def lease(self, ceiling: float | None, burst: int) -> Lease:
        booked: list[tuple[float, float, int]] = []

        def take(control: RateControl, now: float) -> None:
            count = max(1, min(MAX_LEASE, round(control.allowed(ceiling) * LEASE_SECONDS)))
            first, interval = control.take(now, count, ceiling, burst)
            booked.append((first, interval, count))

        offset = self._update(take)
        first, interval, count = booked[0]
        return Lease(first - offset, interval, count, self.epoch)

    def succeeded(self, grew: bool, ceiling: float | None, latency: float | None = None) -> None:
        # kept with their start times, so the shared history measures the admitted rate as well as one process's
        if latency is not None and latency > 0:
            self._latency = latency if self._latency <= 0 else self._latency + 0.1 * (latency - self._latency)
            self._heard.append(latency)
        now = time.time() - (latency if latency is not None else self._latency)
        pending = self._pending
        if pending and abs(now - pending[-1][0]) < COALESCE_S:
            pending[-1][1] += 1
            pending[-1][2] += grew
            pending[-1][3] = max(pending[-1][3], now)
        else:
            pending.append([now, 1, 1 if grew else 0, now])
        self._ceiling = ceiling

    def rate_limited(self, retry_after: float | None, hold_s: float) -> None:
        def cut(control: RateControl, now: float) -> None:
            control.rate_limited(now, retry_after, hold_s, reported_until=self._reported_until, shared=True)

        self._update(cut)
        self._local_epoch += 1  # this process's leases are void at once, whoever cut

    @property
    def epoch(self) -> int:
        return self._epoch + self._local_epoch

    def rate(self, ceiling: float | None) -> float:
        return min(self._rate, ceiling) if ceiling is not None else self._rate

    def flush(self) -> None:
        self._in_flight = 0  # the end of a run: this process holds nothing any more
        self._update(lambda control, now: None)

    def in_flight_limit(self, ceiling: int, in_flight: int) -> int:
        self._in_flight = in_flight
        return max(1, self._concurrency.allowed(ceiling) - self._others_in_flight)

    def finished(self, latency: float, in_flight: int, bound: bool, ceiling: int) -> None:
        now = time.time()
        self._samples.append((now, latency, in_flight, bound, ceiling))
        self._in_flight = in_flight
        if now - self._written >= LEASE_SECONDS:
            self._update(lambda control, now: None)

    def overloaded(self, in_flight: int) -> None:
        self._in_flight = in_flight

        def cut(control: RateControl, now: float) -> None:
            self._concurrency.overloaded(now, in_flight + self._others_in_flight)

        self._update(cut)

    def _update(self, change) -> float:  # type: ignore[no-untyped-def]
        """Lock, load, apply buffered reports and ``change(control, now)``, store, unlock; returns the
        wall − monotonic clock offset used."""
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            now = time.time()
            offset = now - time.monotonic()
            control, concurrency, processes = self._load(fd)
            processes = {pid: entry for pid, entry in processes.items() if holds_requests(pid, entry, now)}
            if self._pending:
                self._reported = now
            apply_reports(control, self._heard, self._pending, self._ceiling)
            me = self._me
            others = sum(int(entry[0]) for pid, entry in processes.items() if pid != me)
            self._others_in_flight = others
            # [in flight, last update, last update that reported successes, host] (older versions wrote fewer)
            self._reported_until = reported_until(now, (entry[2] for pid, entry in processes.items()
                                                        if pid != me and len(entry) > 2))
            for at, latency, in_flight, bound, ceiling in self._samples:
                concurrency.succeeded(at, latency, in_flight + others, bound, ceiling)
            self._samples.clear()
            self._concurrency = concurrency
            change(control, now)
            processes[me] = [self._in_flight, now, self._reported, HOST]
            body = json.dumps({"base_url": self.base_url, "control": control.to_dict(),
                               "concurrency": concurrency.to_dict(), "processes": processes}).encode()
            os.pwrite(fd, body, 0)
            os.ftruncate(fd, len(body))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._epoch = control.epoch
        self._rate = control.rate
        self._written = now
        return offset

    def _load(self, fd: int) -> tuple[RateControl, ConcurrencyControl, dict[str, ProcessEntry]]:
        size = os.fstat(fd).st_size
        raw = os.pread(fd, size, 0) if size else b""
        if raw:
            try:
                data = json.loads(raw)
                concurrency = data.get("concurrency")
                return (RateControl.from_dict(data["control"]),
                        ConcurrencyControl.from_dict(concurrency) if concurrency else ConcurrencyControl(),
                        {str(pid): list(entry) for pid, entry in data.get("processes", {}).items()})
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("rate budget %s was unreadable; starting it afresh", self.path)
        return RateControl.starting(self._ceiling), ConcurrencyControl(), {}


def holds_requests(key: str, entry: ProcessEntry, now: float) -> bool:
    """A process's entry in a budget file still holds its requests in flight: refreshed within
    ``STALE_PROCESS_S``, and, written on this host (``key`` starts with its pid), its process still runs."""
    if now - entry[1] >= STALE_PROCESS_S:
        return False
    if len(entry) < 4 or entry[3] != HOST:
        return True  # another host's process (or an older version's entry): only time tells
    try:
        return process_running(int(key.split("-", 1)[0]))
    except ValueError:
        return True


def apply_reports(control: RateControl, heard: collections.deque[float], pending: list[list[float]],
                  ceiling: float | None) -> None:
    """Hand a process's buffered reports to the budget's control, and empty the buffers: each latency heard
    (their spread sets the measuring window), then the successes (``[first start, successes, of which waited
    for the rate, last start]``)."""
    for latency in heard:
        control.heard(latency)
    heard.clear()
    for at, successes, grown, last in pending:
        control.succeeded(at, int(successes), int(grown), ceiling, until=last)
    pending.clear()


def reported_until(now: float, others_seen: Iterable[float]) -> float:
    """Until when every process sharing a budget has reported its successes: the oldest latest report of the
    other processes still reporting (they reported successes within ``REPORTING_S``; one that has not begun, or
    has stopped, holds none back), or ``now``."""
    return min((seen for seen in others_seen if now - seen < REPORTING_S), default=now)


__all__ = ["LEASE_SECONDS", "MAX_HEARD", "REPORTING_S", "STALE_PROCESS_S", "FileSource", "Lease", "LocalSource",
           "TokenSource", "apply_reports", "holds_requests", "reported_until"]
