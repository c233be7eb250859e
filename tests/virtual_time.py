"""An asyncio event loop on a virtual clock, for timing tests that run in microseconds instead of seconds.

:class:`VirtualTimeLoop`'s ``time()`` is a counter: when the loop would block until its next timer, the counter
jumps there instead (plus a random wake-up lateness, as a loaded machine's loop wakes late), so
``asyncio.sleep`` costs no wall time and every timing is exact and repeatable. Code under test takes the
loop's ``time`` as its clock (``AsyncRateLimiter(clock=loop.time)``). Only for code without real I/O: a wait
with no timer pending would block forever, so it raises instead.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector loop whose clock only moves when every task waits: each wait for a timer of ``timeout``
    seconds moves it by ``timeout`` plus up to ``lateness`` seconds (uniform, seeded)."""

    def __init__(self, lateness: float = 0.0, seed: int = 1) -> None:
        super().__init__()
        self._virtual_now = 0.0
        self._lateness = lateness
        self._rng = random.Random(seed)
        select = self._selector.select

        def advance(timeout: float | None = None) -> list[Any]:
            events = select(0)  # the loop's own wake-up pipe, without blocking
            if events or timeout == 0:
                return events
            if timeout is None:
                raise RuntimeError("virtual time: every task waits and no timer is pending (a deadlock)")
            self._virtual_now += timeout + self._rng.uniform(0.0, self._lateness)
            return events

        self._selector.select = advance  # type: ignore[method-assign]

    def time(self) -> float:
        return self._virtual_now


def run_virtual(main: Coroutine[Any, Any, T], loop: VirtualTimeLoop) -> T:
    """Run ``main`` to completion on ``loop`` (closed afterwards)."""
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()
