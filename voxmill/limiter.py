"""Request pacing: a concurrency cap plus start times from a rate budget that learns the API's limit.

:class:`Limiter` is the interface the client and the batch engine use; :class:`AsyncRateLimiter` is the
implementation for one event loop, and :func:`build_limiter` builds the one a run uses from its settings.
Where the start times come from is a :class:`~voxmill.rate.sources.TokenSource`: this process alone,
every process on the machine that uses the same key and base URL (the default), or any source a
``RateLimit.source_factory`` builds (``tasks.rate``: every worker of a Prefect API, on any machine). How the
rate adapts is :mod:`voxmill.rate.control`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, runtime_checkable

from voxmill.rate.control import DEFAULT_BURST, RateControl
from voxmill.rate.sources import FileSource, Lease, LocalSource, TokenSource
from voxmill.settings import RateLimit, Settings

log = logging.getLogger(__name__)

#: weight of the newest grant in the "requests wait for the rate" average
_PACED_WEIGHT = 0.2


@runtime_checkable
class Limiter(Protocol):
    """What the client needs from a limiter: a slot per request, and feedback about how it went."""

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Wait for a rate token and a concurrency slot; the concurrency slot is released on exit."""
        ...

    def slow_down(self, retry_after: float | None) -> None:
        """A 429 was seen: lower the rate (a long ``retry_after`` also pauses every new slot)."""
        ...

    def succeeded(self) -> None:
        """A request went through: the rate may grow."""
        ...


class AsyncRateLimiter:
    """Limiter for one event loop: an ``asyncio.Semaphore`` concurrency cap and start times leased from a
    :class:`~voxmill.rate.sources.TokenSource`.

    A slot takes the concurrency slot first, then queues (FIFO) for the next start time: only the head of
    the queue holds a booking, so a rate that grows or is cut applies from the very next start, and a head
    whose booking was voided while it slept (a cut or a pause) books again. After an idle period up to
    ``burst`` requests may start at once (GCRA burst tolerance); after that, starts are spaced ``1 / rate``.

    With ``rate_limit.adaptive`` (the default) the rate is learned (:mod:`voxmill.rate.control`) and
    ``rate_limit.rate_per_second`` is a ceiling; without it the rate is fixed at that value (None: only the
    concurrency cap). Without a ``source`` the budget is this limiter's own.

    The semaphore is created lazily in the loop that first uses it (the limiter is usually built outside
    any loop); it is rebuilt when a different loop uses the limiter.
    """

    def __init__(
        self, rate_limit: RateLimit | None = None, *, source: TokenSource | None = None, burst: int = DEFAULT_BURST
    ) -> None:
        rate_limit = rate_limit or RateLimit()
        if burst < 1:
            raise ValueError(f"burst must be ≥ 1, got {burst}")
        self.ceiling: float | None = rate_limit.rate_per_second
        self.max_concurrent: int = rate_limit.max_concurrent
        self.burst = burst
        if source is None:
            control = (
                RateControl.starting(self.ceiling) if rate_limit.adaptive else RateControl.fixed_at(self.ceiling)
            )
            source = LocalSource(control)
        self.source: TokenSource = source
        self._lease = Lease(0.0, 0.0, 0, -1)
        self._next_start = 0.0
        self._left = 0
        self._paced = 1.0
        self._semaphore: asyncio.Semaphore | None = None
        self._queue: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slot = _Slot(self)
        #: slots handed out so far
        self.granted = 0
        #: 429s reported through :meth:`slow_down`
        self.slowdowns = 0
        #: slots currently held
        self.in_flight = 0

    def __repr__(self) -> str:
        rate = self.current_rate
        shown = "unlimited" if rate is None else f"{rate:.3g}/s"
        return f"AsyncRateLimiter(rate={shown}, max_concurrent={self.max_concurrent})"

    @property
    def current_rate(self) -> float | None:
        """Requests per second allowed now (None: unlimited)."""
        rate = self.source.rate(self.ceiling)
        return None if math.isinf(rate) else rate

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Wait for a rate token and a concurrency slot: ``async with limiter.slot(): ...``."""
        return self._slot

    def slow_down(self, retry_after: float | None) -> None:
        """A 429: the budget cuts its rate (once per episode); a Retry-After over 2 s pauses every start."""
        self.slowdowns += 1
        rate = self.source.rate(self.ceiling)
        # 429s of requests already in flight keep arriving for about their latency (Little: in flight / rate)
        hold = 1.5 * self.in_flight / rate if rate and not math.isinf(rate) else 0.0
        self.source.rate_limited(retry_after, hold)

    def succeeded(self) -> None:
        """A request went through; the rate grows when requests have been waiting for it."""
        self.source.succeeded(self._paced > 0.5, self.ceiling)

    def close(self) -> None:
        """Hand what is still buffered to the shared budget (the learned rate outlives the run)."""
        self.source.flush()

    def _for_loop(self) -> tuple[asyncio.Semaphore, asyncio.Lock]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._semaphore is None or self._queue is None:
            self._loop = loop
            self._semaphore = asyncio.Semaphore(self.max_concurrent)
            self._queue = asyncio.Lock()
        return self._semaphore, self._queue

    async def _acquire(self) -> None:
        if self._loop is asyncio.get_running_loop() and self._semaphore is not None and self._queue is not None:
            semaphore, queue = self._semaphore, self._queue
        else:
            semaphore, queue = self._for_loop()
        await semaphore.acquire()
        try:
            async with queue:
                await self._wait_turn()
        except BaseException:
            semaphore.release()
            raise
        self.granted += 1
        self.in_flight += 1

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
            delay = start - time.monotonic()
            if delay <= 0:
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
        if self._semaphore is not None:
            self._semaphore.release()


class _Slot:
    """The reusable context manager :meth:`AsyncRateLimiter.slot` returns (no per-call allocation)."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: AsyncRateLimiter) -> None:
        self._limiter = limiter

    async def __aenter__(self) -> None:
        await self._limiter._acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._limiter._release()


def build_limiter(settings: Settings) -> AsyncRateLimiter:
    """The limiter of a run (one per process and event loop), from picklable ``settings``.

    Adaptive and shared (the defaults): the budget lives in ``settings.cache_dir/rate`` and is shared with
    every process on this machine using the same key and base URL; it falls back to this process alone
    (with a warning) when the cache directory cannot be written. ``rate_limit.source_factory`` puts the budget
    elsewhere (``tasks.rate.prefect_source``: a Prefect global concurrency limit, for workers on other machines).
    """
    rate_limit = settings.rate_limit
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


__all__ = ["AsyncRateLimiter", "Limiter", "build_limiter"]
