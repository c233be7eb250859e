"""Request pacing: a rate (GCRA) and a concurrency cap, slowed down by 429s and recovered by successes.

:class:`Limiter` is the interface the client and the batch engine use; :class:`AsyncRateLimiter` is the
in-process implementation. A cross-process or cross-machine limiter only has to provide the same three
methods.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, runtime_checkable

from voxmill.settings import RateLimit

#: pause after a 429 that carried no Retry-After, in seconds
DEFAULT_PAUSE = 1.0
#: each 429 (outside an ongoing pause) multiplies the current rate by this
SLOWDOWN_FACTOR = 0.8
#: the current rate never drops below this fraction of the configured rate
MIN_RATE_FRACTION = 0.05
#: each success adds this fraction of the configured rate back, up to the configured rate
RECOVERY_FRACTION = 0.02
#: requests that may start back to back after an idle period (GCRA burst tolerance)
DEFAULT_BURST = 2


@runtime_checkable
class Limiter(Protocol):
    """What the client needs from a limiter: a slot per request, and feedback about how it went."""

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Wait for a rate token and a concurrency slot; the concurrency slot is released on exit."""
        ...

    def slow_down(self, retry_after: float | None) -> None:
        """A 429 was seen: pause new slots (``retry_after`` seconds, or a default) and lower the rate."""
        ...

    def succeeded(self) -> None:
        """A request went through: a slowed-down limiter recovers a little."""
        ...


class AsyncRateLimiter:
    """In-process limiter for one event loop: GCRA pacing plus an ``asyncio.Semaphore`` concurrency cap.

    Pacing reserves the next free start time (``max(next_free, now - burst_window)``) and sleeps once
    until it, so a sustained run gets the configured rate exactly, without polling. After an idle period
    up to ``burst`` requests may start at once (default 2); after that, starts are spaced ``1/rate``.

    A slot takes the concurrency slot first and then the rate reservation, so at most ``max_concurrent``
    reservations are outstanding and a slow-down or pause reaches the next requests at once rather than
    after a long queue of pre-booked start times.

    ``slow_down`` pauses every new start until ``now + retry_after`` (1 s when the 429 gave no
    Retry-After) and multiplies the rate by 0.8 (floor: 5 % of the configured rate). Several 429s
    arriving inside one pause (requests that were already in flight) lower the rate only once.
    ``succeeded`` adds 2 % of the configured rate back. With no configured rate only the concurrency
    cap and the pause apply.

    The semaphore is created lazily in the loop that first uses it (the limiter is usually built outside
    any loop); it is rebuilt when a different loop uses the limiter.
    """

    def __init__(self, rate_limit: RateLimit | None = None, *, burst: int = DEFAULT_BURST) -> None:
        rate_limit = rate_limit or RateLimit()
        if burst < 1:
            raise ValueError(f"burst must be ≥ 1, got {burst}")
        self.configured_rate: float | None = rate_limit.rate_per_second
        self.max_concurrent: int = rate_limit.max_concurrent
        self.burst = burst
        self._rate: float | None = self.configured_rate
        self._interval = 1.0 / self._rate if self._rate else 0.0
        self._next_free = 0.0
        self._paused_until = 0.0
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slot = _Slot(self)
        #: slots handed out so far
        self.granted = 0
        #: 429s reported through :meth:`slow_down`
        self.slowdowns = 0
        #: slots currently held
        self.in_flight = 0

    def __repr__(self) -> str:
        rate = "unlimited" if self._rate is None else f"{self._rate:.3g}/s"
        return f"AsyncRateLimiter(rate={rate}, max_concurrent={self.max_concurrent})"

    @property
    def current_rate(self) -> float | None:
        """Requests per second allowed now (None: unlimited)."""
        return self._rate

    @property
    def paused_for(self) -> float:
        """Seconds left in the current 429 pause (0 when not paused)."""
        return max(0.0, self._paused_until - time.monotonic())

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Wait for a rate token and a concurrency slot: ``async with limiter.slot(): ...``."""
        return self._slot

    def slow_down(self, retry_after: float | None) -> None:
        """Pause new slots for ``retry_after`` seconds (default 1 s) and lower the rate by 20 %."""
        self.slowdowns += 1
        now = time.monotonic()
        pause = DEFAULT_PAUSE if retry_after is None else max(0.0, retry_after)
        already_paused = self._paused_until > now
        self._paused_until = max(self._paused_until, now + pause)
        if self._rate is not None and not already_paused:
            self._set_rate(max(self._rate * SLOWDOWN_FACTOR, self.configured_rate * MIN_RATE_FRACTION))

    def succeeded(self) -> None:
        """Move the rate 2 % of the configured rate back towards it."""
        rate = self._rate
        configured = self.configured_rate
        if rate is not None and rate < configured:
            self._set_rate(min(configured, rate + configured * RECOVERY_FRACTION))

    def _set_rate(self, rate: float) -> None:
        self._rate = rate
        self._interval = 1.0 / rate

    def _semaphore_for_loop(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._semaphore is None:
            self._loop = loop
            self._semaphore = asyncio.Semaphore(self.max_concurrent)
        return self._semaphore

    async def _acquire(self) -> None:
        semaphore = self._semaphore if self._loop is asyncio.get_running_loop() else None
        if semaphore is None:
            semaphore = self._semaphore_for_loop()
        await semaphore.acquire()
        try:
            await self._wait_turn()
        except BaseException:
            semaphore.release()
            raise
        self.granted += 1
        self.in_flight += 1

    async def _wait_turn(self) -> None:
        while True:
            now = time.monotonic()
            start = self._paused_until if self._paused_until > now else now
            interval = self._interval
            if interval:
                # GCRA: the schedule may lag behind now by (burst - 1) intervals, which is the burst
                start = max(start, self._next_free, now - (self.burst - 1) * interval)
                self._next_free = start + interval
            delay = start - now
            if delay <= 0:
                return
            try:
                await asyncio.sleep(delay)
            except BaseException:
                # give the reservation back when it is still the last one, so a cancel leaves no gap
                if interval and self._next_free == start + interval:
                    self._next_free = start
                raise
            if self._paused_until <= time.monotonic():
                return
            # a 429 arrived while we slept: book again after the pause

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


__all__ = ["AsyncRateLimiter", "Limiter"]
