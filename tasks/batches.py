"""The unit of Prefect work: a batch of planned items handed to its process's batch engine.

One task per item costs ~10 ms of Prefect bookkeeping and tops out near 100 task runs/s here, so a task
carries a batch (up to 200 items); inside it the engine's shared event loop, client and limiter run the
items concurrently. Item failures are ledger rows, not task failures; a task fails (and Prefect retries
it) only when the whole batch could not run — the engine skips what the retry finds already done.
The engine comes with the task's arguments (:class:`voxmill.workers.EngineHandle`), so the same task runs
in a thread pool, a process pool or on a Dask worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from voxmill.batch import BatchOutcome
from voxmill.plan import PlannedItem
from voxmill.workers import EngineHandle


class Batch:
    """Items for one task. A plain object, so Prefect does not walk 200 records looking for futures."""

    __slots__ = ("index", "items")

    def __init__(self, index: int, items: list[PlannedItem]) -> None:
        self.index = index
        self.items = items

    def __reduce__(self) -> tuple[type[Batch], tuple[int, list[PlannedItem]]]:
        return (Batch, (self.index, self.items))

    def __repr__(self) -> str:
        return f"Batch(#{self.index}, {len(self.items)} items)"


@dataclass(frozen=True)
class WorkerBatchOutcome(BatchOutcome):
    """A batch's counts from an engine in another process, with that process's retry counters so far."""

    worker: str = ""
    worker_retries: int = 0
    worker_rate_limited: int = 0


@task(
    name="voxmill-batch",
    task_run_name="batch-{batch.index}",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    cache_policy=NONE,
)
def process_batch(engine: EngineHandle, batch: Batch) -> BatchOutcome:
    """Run one batch through this process's engine; returns its counts."""
    outcome = engine.engine().run_batch(batch.items)
    if engine.is_local:
        return outcome  # the job's own board saw every retry already
    board = engine.engine().progress.snapshot()
    return WorkerBatchOutcome(**vars(outcome), worker=str(os.getpid()), worker_retries=board.retries,
                              worker_rate_limited=board.rate_limited)
