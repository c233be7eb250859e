"""Request pacing: an in-flight limit plus start times from a rate budget; both learn the API's limits.

:class:`Limiter` is the interface the client and the batch engine use; :class:`AsyncRateLimiter` is the
implementation for one event loop, and :func:`build_limiter` builds the one a run uses from its settings.
Where the start times come from is a :class:`~voxmill.rate.sources.TokenSource`: this process alone,
every process on the machine that uses the same key and base URL (the default), or any source a
``RateLimit.source_factory`` builds (``tasks.rate``: every worker of a Prefect API, on any machine). How the
rate adapts is :mod:`voxmill.rate.control`; how the in-flight limit adapts, :mod:`voxmill.rate.concurrency`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, runtime_checkable

from voxmill.rate.concurrency import DEFAULT_CEILING, ConcurrencyControl
from voxmill.rate.control import DEFAULT_BURST, SCHEDULE_SLACK_S, RateControl
from voxmill.rate.sources import FileSource, Lease, LocalSource, TokenSource
from voxmill.settings import RateLimit, Settings

log = logging.getLogger(__name__)

#: weight of the newest grant in the "requests wait for the rate" average
_PACED_WEIGHT = 0.2
#: memory one request in flight may need: its socket and parser buffers (~0.6 MB measured per streamed TTS
#: answer, whose body goes to disk as it arrives; docs/benchmarks.md) with room for an error body or a header
#: read whole; the memory-derived ceiling keeps requests in flight × this under a quarter of the memory available
REQUEST_MEMORY_BYTES = 4 * 2**20


@runtime_checkable
class Limiter(Protocol):
    """What the client needs from a limiter: a slot per request, and feedback about how it went."""

    def slot(self, *, retry: bool = False) -> AbstractAsyncContextManager[None]:
        """Wait for a rate token and a concurrency slot; the concurrency slot is released on exit. ``retry``: the
        request was tried before, so it waits ahead of first tries."""
        ...

    def slow_down(self, retry_after: float | None, *, concurrency: bool = False) -> None:
        """A 429 was seen: lower the rate (a long ``retry_after`` also pauses every new slot), or the in-flight
        limit (``concurrency``: the answer said too many requests were in flight)."""
        ...

    def succeeded(self, latency: float | None = None) -> None:
        """A request went through after ``latency`` seconds: the rate and the in-flight limit may grow."""
        ...

    def admitted(self, latency: float | None = None) -> None:
        """A request failed other than by a 429: it counts as admitted, and moves no limit."""
        ...


class AsyncRateLimiter:
    """Limiter for one event loop: an adjustable in-flight limit and start times leased from a
    :class:`~voxmill.rate.sources.TokenSource`.

    A slot takes an in-flight slot first (FIFO; the limit is the budget's learned one, under
    ``rate_limit.max_concurrent``; a retry waits ahead of every first try, see :meth:`slot`), then queues
    (FIFO) for the next start time: only the head of the queue holds a booking, so a rate that grows or is cut
    applies from the very next start, and a head whose booking was voided while it slept (a cut or a pause)
    books again. After an idle period up to
    ``burst`` requests may start at once (GCRA burst tolerance); after that, starts are spaced ``1 / rate``.

    With ``rate_limit.adaptive`` (the default) the rate is learned (:mod:`voxmill.rate.control`) and
    ``rate_limit.rate_per_second`` is a ceiling; without it the rate is fixed at that value (None: only the
    concurrency cap). The in-flight limit is learned with the rate (:mod:`voxmill.rate.concurrency`); without
    ``adaptive`` it is fixed at ``max_concurrent``. Without a ``source`` the budget is this limiter's own, on
    ``clock`` (the event loop's clock must agree with it: a test runs both on one virtual clock).

    A 429 lowers the rate, unless the answer says too many requests were in flight: that lowers the in-flight
    limit. A server that queues instead shows itself by latency, which the in-flight limit follows too.

    The waiting queues are created lazily in the loop that first uses the limiter (it is usually built
    outside any loop); they are rebuilt when a different loop uses the limiter.
    """

    def __init__(
        self, rate_limit: RateLimit | None = None, *, source: TokenSource | None = None, burst: int = DEFAULT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        rate_limit = rate_limit or RateLimit()
        if burst < 1:
            raise ValueError(f"burst must be ≥ 1, got {burst}")
        #: the monotonic clock start times are on (the source's; tests inject a virtual one with its own source)
        self.clock = clock
        self.ceiling: float | None = rate_limit.rate_per_second
        #: the ceiling of requests in flight (the learned limit stays under it)
        self.max_concurrent: int = rate_limit.max_concurrent
        self.burst = burst
        if source is None:
            if rate_limit.adaptive:
                source = LocalSource(RateControl.starting(self.ceiling),
                                     ConcurrencyControl.starting(self.max_concurrent), clock)
            else:
                source = LocalSource(RateControl.fixed_at(self.ceiling),
                                     ConcurrencyControl.fixed_at(self.max_concurrent), clock)
        self.source: TokenSource = source
        self._lease = Lease(0.0, 0.0, 0, -1)
        self._next_start = 0.0
        self._left = 0
        self._paced = 1.0
        #: requests waiting for an in-flight slot (FIFO): retries, served first, and first tries; and whether
        #: requests waited for one (an average, like _paced)
        self._retries: collections.deque[asyncio.Future[None]] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._blocked = 0.0
        self._queue: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slot = _Slot(self)
        self._retry_slot = _Slot(self, retry=True)
        #: slots handed out so far
        self.granted = 0
        #: 429s reported through :meth:`slow_down`
        self.slowdowns = 0
        #: requests sent and not yet answered (past the rate wait)
        self.in_flight = 0
        #: in-flight slots held (requests sent, and requests waiting for their start time)
        self.held = 0
        #: the most requests this limiter has had in flight at once
        self.in_flight_high = 0

    def __repr__(self) -> str:
        rate = self.current_rate
        shown = "unlimited" if rate is None else f"{rate:.3g}/s"
        return f"AsyncRateLimiter(rate={shown}, in_flight_limit={self.in_flight_limit}, " \
               f"max_concurrent={self.max_concurrent})"

    @property
    def in_flight_limit(self) -> int:
        """Requests this process may have in flight now (learned, under ``max_concurrent``)."""
        return self.source.in_flight_limit(self.max_concurrent, self.in_flight)

    @property
    def current_rate(self) -> float | None:
        """Requests per second allowed now (None: unlimited)."""
        rate = self.source.rate(self.ceiling)
        return None if math.isinf(rate) else rate

    def slot(self, *, retry: bool = False) -> AbstractAsyncContextManager[None]:
        """Wait for a rate token and a concurrency slot: ``async with limiter.slot(): ...``.

        ``retry``: the request was tried before (a 429, or a fault, and it waited its back-off): it takes the next
        free in-flight slot, ahead of every first try still waiting (retries among themselves in turn). Its item
        queued once already; behind the first tries queued since (a whole window of batches, hundreds of items at
        seconds each) it would wait tens of seconds, and its batch, which ends with its last item, with it: the
        job's batches would then end together, and the run stall a round trip at each such boundary."""
        return self._retry_slot if retry else self._slot

    def slow_down(self, retry_after: float | None, *, concurrency: bool = False) -> None:
        """A 429, or with ``concurrency`` a 429/503 saying too many requests are in flight: that one cuts the
        in-flight limit (to just under the requests in flight now), any other 429 the rate (once per episode;
        a Retry-After over 2 s also pauses every start). The refused request itself waits its Retry-After."""
        self.slowdowns += 1
        if concurrency:
            self.source.overloaded(self.in_flight + 1)  # the refused request was in flight too
            return
        rate = self.source.rate(self.ceiling)
        # 429s of requests already in flight keep arriving for about their latency (Little: in flight / rate)
        hold = 1.5 * self.in_flight / rate if rate and not math.isinf(rate) else 0.0
        self.source.rate_limited(retry_after, hold)

    def succeeded(self, latency: float | None = None) -> None:
        """A request went through; the rate grows when requests have been waiting for it, the in-flight limit
        when they waited for a slot."""
        self.source.succeeded(self._paced > 0.5, self.ceiling, latency)
        if latency is not None:
            # bound by the in-flight limit: requests wait for a slot, and not for the rate (an unlimited rate
            # never holds anyone back, nor one the limit cannot carry)
            bound = (self._waiting() or self._blocked > 0.5) and not self._rate_binds(latency)
            self.source.finished(latency, self.in_flight, bound, self.max_concurrent)
            self._wake()

    def _rate_binds(self, latency: float) -> bool:
        """Requests wait for the rate, and the in-flight limit could carry it: by Little's law a run sends at
        most ``limit ÷ latency`` requests per second, so under ``rate × latency`` in flight the limit holds it
        back, even when starts wait a moment for their start times (slots freed together, in a clump, start
        one interval apart): it must grow, not wait for the rate to be used."""
        rate = self.current_rate
        return self._paced > 0.5 and rate is not None and self.in_flight_limit >= rate * latency

    def close(self) -> None:
        """Hand what is still buffered to the shared budget (the learned rate outlives the run)."""
        self.source.flush()

    def admitted(self, latency: float | None = None) -> None:
        """A request failed other than by a 429 (a 5xx, a reset, a cut body): the API took it, so it counts in
        the admitted rate, but a fault never moves the rate or the in-flight limit."""
        self.source.succeeded(False, self.ceiling, latency)

    def _for_loop(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._queue is None:
            self._loop = loop
            self._queue = asyncio.Lock()
            self._retries = collections.deque()
            self._waiters = collections.deque()
            self.held = self.in_flight = 0
        return self._queue

    async def _acquire(self, retry: bool = False) -> None:
        if self._loop is asyncio.get_running_loop() and self._queue is not None:
            queue = self._queue
        else:
            queue = self._for_loop()
        await self._take_slot(retry)
        try:
            async with queue:
                await self._wait_turn()
        except BaseException:
            self._give_slot()
            raise
        self.granted += 1
        self.in_flight += 1
        self.in_flight_high = max(self.in_flight_high, self.in_flight)

    def _waiting(self) -> bool:
        """Requests are waiting for an in-flight slot."""
        return bool(self._retries) or bool(self._waiters)

    async def _take_slot(self, retry: bool = False) -> None:
        """An in-flight slot: at once when one is free and nobody waits ahead of us, else in turn (FIFO; a
        ``retry`` waits only behind other retries)."""
        queue = self._retries if retry else self._waiters
        if not self._retries and (retry or not self._waiters) and self.held < self.in_flight_limit:
            self.held += 1
            self._blocked *= 1.0 - _PACED_WEIGHT
            return
        waiter = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter  # _wake hands the slot over (held already counts it)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give_slot()  # handed over as we were cancelled: pass it on
            elif waiter in queue:  # _wake drops a cancelled waiter on its own: it may be gone already
                queue.remove(waiter)
            raise
        self._blocked = self._blocked * (1.0 - _PACED_WEIGHT) + _PACED_WEIGHT

    def _give_slot(self) -> None:
        self.held -= 1
        self._wake()

    def _wake(self) -> None:
        """Hand free slots to waiting requests, in turn, retries first (after a release, or when the limit
        grew)."""
        if not self._waiting():
            return
        limit = self.in_flight_limit
        for waiters in (self._retries, self._waiters):
            while waiters and self.held < limit:
                waiter = waiters.popleft()
                if not waiter.done():
                    self.held += 1
                    waiter.set_result(None)

    async def _wait_turn(self) -> None:
        source = self.source
        while True:
            lease = self._lease
            if self._left <= 0 or lease.epoch != source.epoch:
                if source.blocking:
                    lease = await asyncio.to_thread(source.lease, self.ceiling, self.burst)
                else:
                    lease = source.lease(self.ceiling, self.burst)
                self._lease = lease
                self._next_start, self._left = lease.first, lease.count
            start = self._next_start
            self._next_start = start + lease.interval
            self._left -= 1
            now = self.clock()
            delay = start - now
            if delay <= 0:
                if self._left > 0 and self._next_start < now - (self.burst - 1) * lease.interval - SCHEDULE_SLACK_S:
                    # the lease's next start is long past too (this process stalled): this one is dropped, not
                    # sent now with every other one it missed, which would be a burst the API's bucket refuses
                    continue
                self._paced *= 1.0 - _PACED_WEIGHT
                return
            try:
                await asyncio.sleep(delay)
            except BaseException:
                # give the start back when it is still the next one, so a cancel leaves no gap
                if self._lease is lease and self._next_start == start + lease.interval:
                    self._next_start, self._left = start, self._left + 1
                raise
            if lease.epoch == source.epoch:
                self._paced = self._paced * (1.0 - _PACED_WEIGHT) + _PACED_WEIGHT
                return
            # the budget was cut or paused while we slept: book again at the new rate

    def _release(self) -> None:
        self.in_flight -= 1
        self._give_slot()


class _Slot:
    """The reusable context manager :meth:`AsyncRateLimiter.slot` returns (no per-call allocation)."""

    __slots__ = ("_limiter", "_retry")

    def __init__(self, limiter: AsyncRateLimiter, retry: bool = False) -> None:
        self._limiter = limiter
        self._retry = retry

    async def __aenter__(self) -> None:
        await self._limiter._acquire(self._retry)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._limiter._release()


def memory_ceiling(available_bytes: int | None = None) -> int:
    """Requests in flight this machine's memory allows: a quarter of the available memory ÷
    ``REQUEST_MEMORY_BYTES`` (at least 4; ``DEFAULT_CEILING`` when the memory cannot be read)."""
    if available_bytes is None:
        try:
            available_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return DEFAULT_CEILING
    return max(4, available_bytes // 4 // REQUEST_MEMORY_BYTES)


def build_limiter(settings: Settings) -> AsyncRateLimiter:
    """The limiter of a run (one per process and event loop), from picklable ``settings``.

    Adaptive and shared (the defaults): the budget lives in ``settings.cache_dir/rate`` and is shared with
    every process on this machine using the same key and base URL; it falls back to this process alone
    (with a warning) when the cache directory cannot be written. ``rate_limit.source_factory`` puts the budget
    elsewhere (``tasks.rate.prefect_source``: a Prefect global concurrency limit, for workers on other machines).
    """
    rate_limit = settings.rate_limit
    ceiling = memory_ceiling()
    if rate_limit.max_concurrent > ceiling:
        log.info("requests in flight capped at %d by the memory available (asked: %d)", ceiling,
                 rate_limit.max_concurrent)
        rate_limit = dataclasses.replace(rate_limit, max_concurrent=ceiling)
    source: TokenSource | None = None
    if rate_limit.source_factory is not None:
        source = rate_limit.source_factory(settings)
    elif rate_limit.adaptive and rate_limit.shared and settings.api_key is not None:
        try:
            source = FileSource.for_api(
                settings.cache_dir, settings.api_key.reveal(), settings.base_url, rate_limit.rate_per_second
            )
        except OSError as exc:
            log.warning("cannot share the rate budget through %s (%s); this process keeps its own",
                        settings.cache_dir, exc.strerror)
    return AsyncRateLimiter(rate_limit, source=source)


__all__ = ["AsyncRateLimiter", "Limiter", "build_limiter", "memory_ceiling"]
