"""The limiter's adjustable in-flight limit: waiters let in as it grows, cut by a "too many in flight" answer,
shared by the sources on one budget file, and shown on the progress board."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from voxmill.limiter import AsyncRateLimiter, memory_ceiling
from voxmill.progress import ProgressBoard
from voxmill.rate import ConcurrencyControl, FileSource, LocalSource, RateControl
from voxmill.rate.concurrency import INITIAL_LIMIT
from voxmill.settings import RateLimit


def adaptive(limit: float, ceiling: int = 64) -> AsyncRateLimiter:
    """An unlimited rate and a learned in-flight limit starting at ``limit``."""
    source = LocalSource(RateControl.fixed_at(None), ConcurrencyControl(limit=limit))
    return AsyncRateLimiter(RateLimit(max_concurrent=ceiling), source=source)


async def hold_slots(lim: AsyncRateLimiter, count: int, release: asyncio.Event) -> list[asyncio.Task]:
    async def one() -> None:
        async with lim.slot():
            await release.wait()

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    for _ in range(20):
        await asyncio.sleep(0)
    return tasks


async def test_waiting_requests_are_let_in_as_the_limit_grows():
    lim = adaptive(2.0)
    release = asyncio.Event()
    tasks = await hold_slots(lim, 10, release)
    assert (lim.in_flight, lim.in_flight_limit) == (2, 2)
    lim.succeeded(0.5)  # requests wait for a slot, not for the rate: slow start adds one
    lim.succeeded(0.5)
    await asyncio.sleep(0)
    assert lim.in_flight_limit == 4
    for _ in range(5):
        await asyncio.sleep(0)
    assert lim.in_flight == 4 and lim.in_flight_high == 4
    release.set()
    await asyncio.gather(*tasks)
    assert lim.in_flight == 0 and lim.held == 0


async def test_too_many_in_flight_cuts_the_limit_to_just_under_that_level():
    lim = adaptive(16.0)
    release = asyncio.Event()
    tasks = await hold_slots(lim, 6, release)
    assert lim.in_flight == 6
    lim.slow_down(1.0, concurrency=True)  # the refused 7th: the API takes 6
    assert lim.in_flight_limit == 6
    assert lim.current_rate is None  # the rate is not what was refused
    release.set()
    await asyncio.gather(*tasks)


async def test_the_rate_is_cut_by_an_ordinary_429_not_the_in_flight_limit():
    source = LocalSource(RateControl(rate=10.0), ConcurrencyControl(limit=16.0))
    lim = AsyncRateLimiter(RateLimit(max_concurrent=64), source=source)
    lim.slow_down(1.0)
    assert lim.current_rate < 10.0 and lim.in_flight_limit == 16


def test_sources_on_one_budget_file_share_the_in_flight_limit(tmp_path):
    path = tmp_path / "budget.json"
    one, other = FileSource(path, "http://x"), FileSource(path, "http://x")
    limit = one.in_flight_limit(64, 0)
    assert limit == other.in_flight_limit(64, 0) == INITIAL_LIMIT  # the starting limit, shared
    one.in_flight_limit(64, 6)  # one holds six …
    one.lease(None, 1)  # … and writes it at its next update
    other.lease(None, 1)  # the other reads it at its next
    assert other.in_flight_limit(64, 0) == INITIAL_LIMIT - 6
    one.overloaded(7)  # a "too many in flight" at 7 here (+ 0 there): the shared limit goes to 6
    other.lease(None, 1)
    assert other.in_flight_limit(64, 0) == 1  # 6, less the 6 held there: at least one
    one.flush()  # the end of one's run: it holds nothing any more
    other.lease(None, 1)
    assert other.in_flight_limit(64, 0) == 6


def test_the_memory_ceiling_scales_with_available_memory():
    assert memory_ceiling(0) == 4
    assert memory_ceiling(16 * 2**30) == 16 * 2**30 // 4 // (4 * 2**20)


def test_the_progress_line_shows_requests_in_flight_and_the_learned_limit():
    board = ProgressBoard(total=10, done=3, in_flight=7, api_rate=9.5, requests_in_flight=5, in_flight_limit=12)
    line = board.snapshot().log_line()
    assert "requests in flight 5/12" in line and "API rate 9.5/s" in line


async def test_a_cancelled_waiter_already_dropped_by_a_release_leaves_cleanly():
    """A run that stops cancels requests waiting for a slot; a release in the same step drops the cancelled waiter
    before its task resumes: the task must end cancelled, not with "not in deque", and the slot stay usable."""
    limiter = AsyncRateLimiter(RateLimit(max_concurrent=1, adaptive=False))
    held = limiter.slot()
    await held.__aenter__()  # the test holds the only slot

    async def wait_for_a_slot() -> None:
        async with limiter.slot():
            pass

    waiting = asyncio.create_task(wait_for_a_slot())
    await asyncio.sleep(0)  # it waits in line
    waiting.cancel()  # its waiter is cancelled at once; the task itself resumes later
    await held.__aexit__(None, None, None)  # the release runs first and drops the cancelled waiter
    with pytest.raises(asyncio.CancelledError):
        await waiting
    async with asyncio.timeout(2), limiter.slot():
        assert limiter.in_flight == 1


def test_a_killed_process_leaves_its_slots_to_the_run_that_replaces_it(tmp_path):
    """A run killed with -9 never writes that it holds nothing; its process is gone, so its entry holds nothing
    at once (not after ``STALE_PROCESS_S``), while a running process's entry still counts."""
    path = tmp_path / "budget.json"
    killed = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from voxmill.rate import FileSource
        source = FileSource({str(path)!r}, "http://x")
        source.in_flight_limit(64, 6)  # six requests in flight …
        source.lease(None, 1)  # … written at its update
        os.kill(os.getpid(), signal.SIGKILL)  # and killed there
        """)])
    killed.wait(timeout=60)
    running = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from voxmill.rate import FileSource
        source = FileSource({str(path)!r}, "http://x")
        source.in_flight_limit(64, 3)
        source.lease(None, 1)
        print("written", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert running.stdout.readline().strip() == "written"
        replacing = FileSource(path, "http://x")
        assert replacing.in_flight_limit(64, 0) == INITIAL_LIMIT - 3, "the running process's three count, not the six"
    finally:
        running.communicate("", timeout=60)
    replacing.lease(None, 1)  # its process has ended too (reaped): nothing held elsewhere
    assert replacing.in_flight_limit(64, 0) == INITIAL_LIMIT
