"""The limiter: measured pacing, the concurrency cap, 429 pauses and recovery."""

from __future__ import annotations

import asyncio
import time

import pytest

from voxmill.limiter import AsyncRateLimiter, Limiter
from voxmill.settings import RateLimit


def limiter(rate: float | None = None, concurrent: int = 8, **kwargs) -> AsyncRateLimiter:
    return AsyncRateLimiter(RateLimit(requests_per_second=rate, max_concurrent=concurrent), **kwargs)


def test_is_a_limiter():
    assert isinstance(limiter(10), Limiter)


async def test_pacing_is_precise():
    lim = limiter(100, concurrent=8)
    deadline = time.monotonic() + 1.0
    started: list[float] = []

    async def worker():
        while True:
            async with lim.slot():
                now = time.monotonic()
                if now >= deadline:
                    return
                started.append(now)
                await asyncio.sleep(0.002)

    await asyncio.gather(*(worker() for _ in range(8)))
    assert 95 <= len(started) <= 105
    # after the burst, starts are spaced one interval apart
    gaps = [b - a for a, b in zip(sorted(started)[lim.burst:], sorted(started)[lim.burst + 1 :])]
    assert sum(gaps) / len(gaps) == pytest.approx(0.01, rel=0.05)


async def test_sustained_high_rate():
    lim = limiter(500, concurrent=32)
    start = time.monotonic()
    deadline = start + 0.5
    before_deadline = 0

    async def worker():
        nonlocal before_deadline
        while time.monotonic() < deadline:
            async with lim.slot():
                if time.monotonic() < deadline:
                    before_deadline += 1
                await asyncio.sleep(0.005)

    await asyncio.gather(*(worker() for _ in range(32)))
    assert 0.98 * 250 <= before_deadline <= 250 + lim.burst


async def test_concurrency_cap_never_exceeded():
    lim = limiter(None, concurrent=3)
    in_flight = peak = 0

    async def job():
        nonlocal in_flight, peak
        async with lim.slot():
            in_flight += 1
            peak = max(peak, in_flight)
            assert lim.in_flight <= 3
            await asyncio.sleep(0.005)
            in_flight -= 1

    await asyncio.gather(*(job() for _ in range(40)))
    assert peak == 3 and lim.granted == 40 and lim.in_flight == 0


async def test_slot_released_on_error():
    lim = limiter(None, concurrent=1)
    with pytest.raises(RuntimeError):
        async with lim.slot():
            raise RuntimeError("boom")
    await asyncio.wait_for(lim.slot().__aenter__(), 0.5)


async def test_slow_down_pauses_and_lowers_rate():
    lim = limiter(100)
    lim.slow_down(0.3)
    assert lim.slowdowns == 1 and lim.current_rate == pytest.approx(80)
    start = time.monotonic()
    async with lim.slot():
        waited = time.monotonic() - start
    assert waited >= 0.3


async def test_slow_down_reaches_a_request_already_waiting():
    lim = limiter(5, concurrent=4, burst=1)
    async with lim.slot():
        pass
    start = time.monotonic()
    waiter = asyncio.create_task(lim.slot().__aenter__())  # booked for +0.2 s
    await asyncio.sleep(0.05)
    lim.slow_down(0.5)
    await waiter
    assert time.monotonic() - start >= 0.55


async def test_slow_down_default_pause_and_once_per_pause():
    lim = limiter(100)
    lim.slow_down(None)
    assert 0.9 < lim.paused_for <= 1.0
    lim.slow_down(0.5)  # in-flight requests answering 429 inside the same pause: rate drops once
    assert lim.current_rate == pytest.approx(80) and lim.slowdowns == 2


def test_rate_floor_and_recovery():
    lim = limiter(100)
    for _ in range(40):
        lim._paused_until = 0.0  # each 429 in its own pause
        lim.slow_down(0.0)
    assert lim.current_rate == pytest.approx(5.0)
    for _ in range(10):
        lim.succeeded()
    assert lim.current_rate == pytest.approx(25.0)
    for _ in range(100):
        lim.succeeded()
    assert lim.current_rate == 100


async def test_unlimited_rate_only_caps_concurrency():
    lim = limiter(None, concurrent=4)
    start = time.monotonic()
    for _ in range(1000):
        async with lim.slot():
            pass
    assert time.monotonic() - start < 0.5
    lim.slow_down(None)
    assert lim.current_rate is None and lim.paused_for > 0.9


async def test_cancelled_waiter_gives_reservation_back():
    lim = limiter(2, concurrent=4, burst=1)
    async with lim.slot():
        pass
    waiter = asyncio.create_task(lim.slot().__aenter__())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    start = time.monotonic()
    async with lim.slot():  # takes the cancelled one's turn (+0.5 s), not the one after it
        pass
    assert time.monotonic() - start < 0.6
    assert lim.in_flight == 0


def test_usable_from_successive_event_loops():
    lim = limiter(1000, concurrent=2)

    async def use():
        await asyncio.gather(*(_hold(lim) for _ in range(5)))

    asyncio.run(use())
    asyncio.run(use())
    assert lim.granted == 10


async def _hold(lim: AsyncRateLimiter) -> None:
    async with lim.slot():
        await asyncio.sleep(0)


async def test_slot_cpu_cost_is_small():
    lim = limiter(1e9, concurrent=8)
    n = 20000
    start = time.process_time()
    for _ in range(n):
        async with lim.slot():
            pass
    per_slot = (time.process_time() - start) / n
    assert per_slot < 20e-6
