"""A manifest whose first item is slow to answer, and a watch on the server of how soon the other items are
generated: whether a batch waiting on one item holds back the other batches (one helper for the job and flow
tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifest_files import write_manifest

#: the server's latency per character of text: the slow item's 1,000 characters take SLOW_S, the others ~0.1 s
MS_PER_CHAR = 3.0
SLOW_S = 1000 * MS_PER_CHAR / 1000.0
ITEMS = 20
#: items per batch: the slow item's batch is the first of five
BATCH = 4


def write_slow_first_manifest(path: Path) -> Path:
    """``ITEMS`` rows, the first with 1,000 characters of text (``SLOW_S`` at ``MS_PER_CHAR``), the rest short."""
    slow = ("The slow item reads on and on. " * 40)[:1000]
    rows = [{"id": "slow", "text": slow}]
    rows += [{"id": f"i{n}", "text": f"Short item number {n}."} for n in range(1, ITEMS)]
    return write_manifest(path, rows)


@dataclass(frozen=True)
class Watched:
    """When (seconds after the run's start) the server had generated every item but the slow one, and when the
    run ended."""

    others_done_s: float
    ended_s: float
    #: (seconds, generations so far) at each change of the count
    timeline: tuple[tuple[float, int], ...] = ()


def watch_generations(stats: Callable[[], dict[str, Any]], run: Callable[[], object]) -> Watched:
    """Call ``run`` in a thread while polling the server's generation count (``stats``, its ``/admin/stats``)."""
    started = time.monotonic()
    ended: list[float] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
        ended.append(time.monotonic() - started)

    thread = threading.Thread(target=target, name="slow-items-run")
    thread.start()
    others_done = None
    timeline: list[tuple[float, int]] = []
    while thread.is_alive():
        count, now = stats()["generations_total"], time.monotonic() - started
        if not timeline or count != timeline[-1][1]:
            timeline.append((round(now, 2), count))
        if others_done is None and count >= ITEMS - 1:
            others_done = now
        time.sleep(0.02)
    thread.join()
    if errors:
        raise errors[0]
    return Watched(others_done if others_done is not None else ended[0], ended[0], tuple(timeline))
