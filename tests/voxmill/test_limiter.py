"""The limiter and its rate budget: pacing, the concurrency cap, learning a limit, sharing it across processes.

The adaptive rule is tested on :class:`RateControl` with explicit clocks (pure and instant); the limiter's
pacing on a virtual clock (``virtual_time``: exact, with a loaded machine's late wake-ups, and instant); the shared
budget with two sources on one file. End-to-end learning against the local server is in ``test_rate_adaptive.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time

import pytest
from virtual_time import VirtualTimeLoop, run_virtual

from voxmill.identity import budget_id
from voxmill.limiter import AsyncRateLimiter, Limiter, build_limiter
from voxmill.rate import FileSource, LocalSource, RateControl
from voxmill.rate.control import INITIAL_RATE, PROBE_GROWTH, SLOW_START_DOUBLING_S
from voxmill.rate.sources import Lease
from voxmill.settings import ApiKey, RateLimit, Settings


def fixed(rate: float | None = None, concurrent: int = 8, **kwargs) -> AsyncRateLimiter:
    """A limiter at a fixed rate (adaptation off)."""
    return AsyncRateLimiter(RateLimit(requests_per_second=rate, max_concurrent=concurrent, adaptive=False), **kwargs)


def test_is_a_limiter():
    assert isinstance(fixed(10), Limiter)


async def count_starts(lim: AsyncRateLimiter, seconds: float, workers: int, hold: float = 0.002) -> list[float]:
    """Start times (on the running loop's clock) of ``workers`` tasks taking slots for ``seconds``."""
    clock = asyncio.get_running_loop().time
    deadline = clock() + seconds
    started: list[float] = []

    async def worker():
        while True:
            async with lim.slot():
                now = clock()
                if now >= deadline:
                    return
                started.append(now)
                await asyncio.sleep(hold)
            lim.succeeded()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return started


def virtual(lateness: float = 0.004) -> VirtualTimeLoop:
    """A virtual-time loop whose wake-ups are up to ``lateness`` late (a loaded machine's are)."""
    return VirtualTimeLoop(lateness=lateness)


def test_pacing_is_precise():
    loop = virtual()
    lim = fixed(100, concurrent=8, clock=loop.time)
    started = sorted(run_virtual(count_starts(lim, 1.0, 8), loop))
    assert 99 <= len(started) <= 101
    gaps = [b - a for a, b in zip(started[1:], started[2:])]
    assert sum(gaps) / len(gaps) == pytest.approx(0.01, rel=0.02)


def test_sustained_high_rate():
    # 500/s with wake-ups up to 4 ms late (two intervals): a late start is caught up, not lost (without the
    # schedule's slack for late wake-ups: 225 starts, 90 %)
    loop = virtual()
    lim = fixed(500, concurrent=32, clock=loop.time)
    started = run_virtual(count_starts(lim, 0.5, 32, hold=0.005), loop)
    assert 0.97 * 250 <= len(started) <= 252


async def test_concurrency_cap_never_exceeded():
    lim = fixed(None, concurrent=3)
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
    lim = fixed(None, concurrent=1)
    with pytest.raises(RuntimeError):
        async with lim.slot():
            raise RuntimeError("boom")
    await asyncio.wait_for(lim.slot().__aenter__(), 0.5)


async def test_unlimited_fixed_rate_only_caps_concurrency():
    lim = fixed(None, concurrent=4)
    start = time.monotonic()
    for _ in range(1000):
        async with lim.slot():
            pass
    assert time.monotonic() - start < 0.5 and lim.current_rate is None


def test_adaptive_slow_start_doubles_while_requests_wait():
    loop = virtual()
    lim = AsyncRateLimiter(RateLimit(max_concurrent=8), clock=loop.time)
    assert lim.current_rate == INITIAL_RATE
    started = run_virtual(count_starts(lim, 1.5, 8), loop)
    # doubling every 0.35 s from 4/s: far more than the 6 starts of a steady 4/s, and a rate well above it
    assert len(started) > 2 * 1.5 * INITIAL_RATE and lim.current_rate > 4 * INITIAL_RATE


def test_adaptive_rate_never_passes_the_ceiling():
    loop = virtual()
    lim = AsyncRateLimiter(RateLimit(requests_per_second=50, max_concurrent=8), clock=loop.time)
    assert lim.current_rate == 50  # nothing learned: a run with a ceiling starts at it
    started = run_virtual(count_starts(lim, 0.6, 8), loop)
    assert len(started) <= 0.6 * 50 + 2 and lim.current_rate == 50


def test_a_cut_reaches_the_request_already_waiting():
    loop = virtual(lateness=0.0)
    lim = AsyncRateLimiter(RateLimit(requests_per_second=5, max_concurrent=4), clock=loop.time)

    async def main() -> float:
        async with lim.slot():
            pass
        start = loop.time()
        waiter = asyncio.create_task(lim.slot().__aenter__())  # booked for +0.2 s
        await asyncio.sleep(0.05)
        lim.slow_down(1.0)  # the cut voids the booking: it books again, one new interval later
        await waiter
        return loop.time() - start

    waited = run_virtual(main(), loop)
    assert waited >= 0.05 + 1 / lim.current_rate - 1e-9
    assert lim.current_rate < 5 and lim.slowdowns == 1


def test_cancelled_waiter_gives_its_start_back():
    loop = virtual(lateness=0.0)
    lim = fixed(2, concurrent=4, clock=loop.time)

    async def main() -> float:
        async with lim.slot():
            pass
        booked = loop.time() + 0.5
        waiter = asyncio.create_task(lim.slot().__aenter__())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        async with lim.slot():  # takes the cancelled one's turn (+0.5 s), not the one after it
            pass
        return loop.time() - booked

    assert run_virtual(main(), loop) == pytest.approx(0.0, abs=1e-9)
    assert lim.in_flight == 0


def test_a_retry_waits_ahead_of_first_tries_so_its_batch_ends_in_turn():
    # 200 items at 2 s each, 10 in flight (40 s of work); item 0 is refused at once (a 429) and retried after its
    # Retry-After of 1 s. Queued behind every first try it would end at ~40 s, with the batch it belongs to (a
    # job's batches would then end together, and the run drain and stall at each boundary; bench/latency.py lost
    # ~5 s of 114 that way); ahead of them it takes the next free slot (at 2 s) and ends at 4 s
    loop = virtual(lateness=0.0)
    lim = fixed(None, concurrent=10, clock=loop.time)

    async def item(index: int) -> float:
        for attempt in (1, 2):
            async with lim.slot(retry=attempt > 1):
                refused = index == 0 and attempt == 1
                await asyncio.sleep(0.01 if refused else 2.0)
            if not refused:
                return loop.time()
            await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    async def main() -> list[float]:
        return await asyncio.gather(*(item(i) for i in range(200)))

    done = run_virtual(main(), loop)
    assert done[0] == pytest.approx(4.0, abs=1e-6)
    assert done[1:] == sorted(done[1:]) and max(done) == pytest.approx(40.0, abs=0.1)  # first tries still in turn
    assert lim.in_flight == lim.held == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_in_flight_limit_grows_to_carry_the_rate_though_starts_wait_for_it_in_clumps(seed):
    # a rate of 20 req/s (here a ceiling, so known from the start) at 2–2.5 s per request needs ~45 in flight
    # (Little's law). Answers come back in clumps, so the slots they free start one rate interval apart: most
    # starts wait a moment for the rate, which read as "the rate binds" and held the limit back (it reached 45
    # after 25–33 s, or not at all, and 400 items took 34–40 s). The limit cannot carry the rate, so it is what
    # holds the run back: it grows in slow start (doubling per round trip from 8) to ~45 within ~4 round trips
    loop = VirtualTimeLoop(lateness=0.004, seed=seed)
    rng = random.Random(seed)
    lim = AsyncRateLimiter(RateLimit(requests_per_second=20), clock=loop.time)
    reached: list[float] = []

    async def item() -> None:
        async with lim.slot():
            started = loop.time()
            await asyncio.sleep(2.0 + rng.uniform(0.0, 0.5))
        lim.succeeded(loop.time() - started)
        if lim.in_flight_limit >= 45 and not reached:
            reached.append(loop.time())

    async def main() -> float:
        await asyncio.gather(*(item() for _ in range(400)))
        return loop.time()

    took = run_virtual(main(), loop)
    assert reached and reached[0] <= 10.0, reached
    assert took <= 1.2 * (400 / 20 + 2.25), took  # 26.0 s here; the rate itself binds once the limit carries it


def test_usable_from_successive_event_loops():
    lim = fixed(1000, concurrent=2)

    async def use():
        await asyncio.gather(*(_hold(lim) for _ in range(5)))

    asyncio.run(use())
    asyncio.run(use())
    assert lim.granted == 10


async def _hold(lim: AsyncRateLimiter) -> None:
    async with lim.slot():
        await asyncio.sleep(0)


@pytest.mark.rate
async def test_slot_cpu_cost_is_small():
    lim = fixed(1e9, concurrent=8)
    n = 20000
    start = time.process_time()
    for _ in range(n):
        async with lim.slot():
            pass
        lim.succeeded()
    per_slot = (time.process_time() - start) / n
    assert per_slot < 25e-6


# --- the adaptive rule, with explicit clocks --------------------------------------------------------


def feed(control: RateControl, start: float, seconds: float, rate: float, grow: bool = True) -> float:
    """Report successes at ``rate`` per second for ``seconds``; returns the end time."""
    step = 1.0 / rate
    now = start
    while now < start + seconds:
        control.succeeded(now, 1, 1 if grow else 0)
        now += step
    return now


def test_slow_start_doubles_every_period():
    control = RateControl()
    now = 0.0
    while now < 3 * SLOW_START_DOUBLING_S:  # successes at the rate in force
        control.succeeded(now)
        now += 1.0 / control.rate
    assert 6 * INITIAL_RATE <= control.rate <= 16 * INITIAL_RATE  # ≈ 8×, coarse at a few requests


def test_a_429_cuts_to_what_the_api_admitted_once_per_episode():
    control = RateControl(rate=16.0)
    now = feed(control, 100.0, 2.0, 10.0, grow=False)  # the API admitted 10/s while we asked 16/s
    assert control.rate_limited(now, 1.0, hold_s=0.5)
    assert control.limit_seen and 8.0 <= control.rate <= 9.5
    cut = control.rate
    assert not control.rate_limited(now + 0.2, 1.0, hold_s=0.5)  # in-flight 429s of the same episode
    assert control.rate == cut and control.cuts == 1
    assert control.rate_limited(now + 1.0, 1.0, hold_s=0.5)  # a new episode cuts again
    assert control.rate < cut


def test_one_cut_at_most_halves_and_never_below_the_floor():
    control = RateControl(rate=100.0)
    now = feed(control, 0.0, 1.0, 2.0, grow=False)
    control.rate_limited(now, None, hold_s=0.0)
    assert control.rate == pytest.approx(45.0)  # max(2, 100 × 0.5) × 0.9
    for step in range(60):
        control.rate_limited(now + 10 + step * 10, None, hold_s=0.0)
    assert control.rate == pytest.approx(0.05)


def test_probing_grows_slowly_then_faster_without_429s():
    control = RateControl(rate=10.0, limit_seen=True, last_cut=0.0)
    feed(control, 0.0, 5.0, 10.0)
    assert control.rate == pytest.approx(10 * (1 + PROBE_GROWTH) ** 5, rel=0.03)  # ≈ 2 %/s near a known limit
    before = control.rate
    feed(control, 30.0, 1.0, before)  # 30 s after the cut: the growth has doubled twice
    assert control.rate / before - 1 == pytest.approx(4 * PROBE_GROWTH, rel=0.15)


def test_no_growth_when_the_rate_is_not_what_holds_requests_back():
    control = RateControl(rate=10.0)
    feed(control, 0.0, 3.0, 5.0, grow=False)
    assert control.rate == 10.0


def test_ceiling_caps_growth():
    control = RateControl(rate=10.0)
    for i in range(100):
        control.succeeded(i * 0.01, 1, 1, ceiling=12.0)
    assert control.rate == 12.0 and control.allowed(8.0) == 8.0


def test_long_retry_after_pauses_every_start_short_one_does_not():
    control = RateControl(rate=10.0)
    control.rate_limited(50.0, 1.0, hold_s=0.0)
    first, _ = control.take(50.0, 1, None)
    assert first < 50.5
    control.rate_limited(60.0, 30.0, hold_s=0.0)
    first, _ = control.take(60.0, 1, None)
    assert first >= 90.0


def test_fixed_rate_never_adapts():
    control = RateControl.fixed_at(10.0)
    feed(control, 0.0, 2.0, 10.0)
    assert not control.rate_limited(5.0, 1.0, hold_s=0.0)
    assert control.rate == 10.0


def test_control_round_trips_through_json():
    control = RateControl(rate=7.5, limit_seen=True, cuts=3)
    feed(control, 0.0, 1.0, 5.0)
    again = RateControl.from_dict(json.loads(json.dumps(control.to_dict())))
    assert again == control


# --- the shared budget ------------------------------------------------------------------------------


def seeded_budget(tmp_path, rate: float) -> str:
    path = tmp_path / "budget.json"
    path.write_text(json.dumps({"base_url": "http://x", "control": RateControl(rate=rate, limit_seen=True,
                                                                                last_cut=time.time()).to_dict()}))
    return str(path)


async def test_two_sources_on_one_file_share_one_rate(tmp_path):
    path = seeded_budget(tmp_path, 40.0)
    limiters = [AsyncRateLimiter(RateLimit(max_concurrent=8), source=FileSource(path, "http://x")) for _ in range(2)]
    counts = await asyncio.gather(*(count_starts(lim, 1.0, 8) for lim in limiters))
    total = sum(len(c) for c in counts)
    assert 36 <= total <= 40 * 1.03 + 4  # one budget of ~40/s (it may probe ≈ 2 %/s upward), not two
    assert min(len(c) for c in counts) >= 12  # both got a share


async def test_a_429_in_one_process_slows_the_other(tmp_path):
    path = seeded_budget(tmp_path, 40.0)
    one, other = FileSource(path, "http://x"), FileSource(path, "http://x")
    for _ in range(20):
        one.succeeded(True, None)  # reported with the next write: the admitted rate is ~known
    one.rate_limited(1.0, hold_s=0.0)
    other.lease(None, 1)  # the other process learns it at its next lease
    assert other.rate(None) < 40.0 and other.rate(None) == one.rate(None)


def test_budget_file_never_holds_the_key(tmp_path):
    key = "sk-VERY-SECRET-KEY-123"
    settings = Settings(api_key=ApiKey(key), base_url="http://127.0.0.1:9", cache_dir=tmp_path)
    lim = build_limiter(settings)
    assert isinstance(lim.source, FileSource)
    lim.close()
    (budget,) = (tmp_path / "rate").iterdir()
    assert budget.name == f"{budget_id(key, 'http://127.0.0.1:9')}.json"
    assert key not in budget.read_text() and "SECRET" not in budget.name


def test_next_run_starts_from_the_learned_rate(tmp_path):
    settings = Settings(api_key=ApiKey("k"), base_url="http://127.0.0.1:9", cache_dir=tmp_path)
    first = build_limiter(settings)
    assert first.current_rate == INITIAL_RATE
    source = first.source
    assert isinstance(source, FileSource)
    for _ in range(50):
        source.succeeded(False, None)
    source.rate_limited(None, 0.0)
    learned = first.current_rate
    assert learned != INITIAL_RATE
    assert build_limiter(settings).current_rate == pytest.approx(learned)


def test_build_limiter_modes(tmp_path, caplog):
    base = Settings(api_key=ApiKey("k"), base_url="http://127.0.0.1:9", cache_dir=tmp_path)
    assert isinstance(build_limiter(base.with_(rate_limit=RateLimit(shared=False))).source, LocalSource)
    fixed_limiter = build_limiter(base.with_(rate_limit=RateLimit(requests_per_second=3, adaptive=False)))
    assert isinstance(fixed_limiter.source, LocalSource) and fixed_limiter.current_rate == 3
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with caplog.at_level(logging.WARNING):
        fallback = build_limiter(base.with_(cache_dir=blocked))
    assert isinstance(fallback.source, LocalSource) and "keeps its own" in caplog.text


class SlowSource(LocalSource):
    """A source whose lease waits, like one that asks another machine (tasks.rate.PrefectSource)."""

    blocking = True

    def lease(self, ceiling, burst):
        time.sleep(0.3)
        return super().lease(ceiling, burst)


def slow_source(settings: Settings) -> SlowSource:
    return SlowSource(RateControl.fixed_at(100.0))


async def test_a_blocking_source_is_built_by_its_factory_and_leased_off_the_loop(tmp_path):
    settings = Settings(api_key=ApiKey("k"), base_url="http://127.0.0.1:9", cache_dir=tmp_path,
                        rate_limit=RateLimit(source_factory=slow_source))
    limiter = build_limiter(settings)
    assert isinstance(limiter.source, SlowSource) and not (tmp_path / "rate").exists()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    ticker = asyncio.create_task(tick())
    async with limiter.slot():
        pass
    ticker.cancel()
    assert ticks >= 8  # the loop kept running while the lease waited 0.3 s


class BulkSource(LocalSource):
    """Leases ten start times at a time, as the file and Redis budgets do."""

    def lease(self, ceiling, burst):
        first, interval = self.control.take(self.clock(), 10, ceiling, burst)
        return Lease(first, interval, 10, self.control.epoch)


def test_a_stalled_process_drops_the_leased_starts_it_missed_instead_of_sending_them_at_once():
    loop = virtual(lateness=0.0)
    source = BulkSource(RateControl.fixed_at(20.0), clock=loop.time)
    lim = AsyncRateLimiter(RateLimit(requests_per_second=20, max_concurrent=8, adaptive=False), source=source,
                           clock=loop.time)
    started: list[float] = []

    async def main() -> None:
        for n in range(14):
            async with lim.slot():
                started.append(loop.time())
            if n == 1:
                loop._virtual_now += 0.3  # the process stalls (a blocking call) past six of its leased starts

    run_virtual(main(), loop)
    # at most the one just missed goes with the next one (the schedule's slack), then the pace is 20/s again;
    # sending all six missed at once would be a burst a bucket of 4 tokens refuses
    assert max(sum(1 for t in started if at <= t < at + 0.01) for at in started) <= 2
    assert started[-1] - started[2] == pytest.approx(0.05 * (len(started) - 4), abs=1e-6)
