"""The unit of Prefect work: a batch of planned items handed to the process's batch engine.

One task per item costs ~10 ms of Prefect bookkeeping and tops out near 100 task runs/s here, so a task
carries a batch (up to 200 items); inside it the engine's shared event loop, client and limiter run the
items concurrently. Item failures are ledger rows, not task failures; a task fails (and Prefect retries
it) only when the whole batch could not run — the engine skips what the retry finds already done.
"""

from __future__ import annotations

import threading
import uuid

from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from voxmill.batch import BatchEngine, BatchOutcome
from voxmill.plan import PlannedItem

_ENGINES: dict[str, BatchEngine] = {}
_LOCK = threading.Lock()


class Batch:
    """Items for one task. A plain object, so Prefect does not walk 200 records looking for futures."""

    __slots__ = ("index", "items")

    def __init__(self, index: int, items: list[PlannedItem]) -> None:
        self.index = index
        self.items = items

    def __repr__(self) -> str:
        return f"Batch(#{self.index}, {len(self.items)} items)"


def register_engine(engine: BatchEngine) -> str:
    """Make an engine reachable by the batch tasks of this process; returns its handle."""
    handle = uuid.uuid4().hex
    with _LOCK:
        _ENGINES[handle] = engine
    return handle


def unregister_engine(handle: str) -> None:
    """Forget an engine registered with :func:`register_engine`."""
    with _LOCK:
        _ENGINES.pop(handle, None)


@task(
    name="voxmill-batch",
    task_run_name="batch-{batch.index}",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    cache_policy=NONE,
)
def process_batch(engine_handle: str, batch: Batch) -> BatchOutcome:
    """Run one batch through the engine; returns its counts."""
    with _LOCK:
        engine = _ENGINES[engine_handle]
    return engine.run_batch(batch.items)
