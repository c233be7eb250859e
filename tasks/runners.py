"""Where a job's batches run: a thread pool (default), a process pool, or Dask workers on a LocalCluster."""

from __future__ import annotations

import logging

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from voxmill.errors import ConfigError
from voxmill.options import RUNNERS, RunnerKind


def make_task_runner(kind: RunnerKind, workers: int) -> TaskRunner:
    """A task runner of ``kind`` with ``workers`` workers (always bounded: Prefect's default is not)."""
    if workers < 1:
        raise ConfigError(f"workers must be ≥ 1, got {workers}")
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "process":
        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise ConfigError("runner 'dask' needs prefect-dask: pip install 'voxmill[dask]'") from None
        return DaskTaskRunner(cluster_kwargs={
            "n_workers": workers, "threads_per_worker": 1, "processes": True,
            "dashboard_address": None, "silence_logs": logging.WARNING,
        })
    raise ConfigError(f"runner must be one of {', '.join(RUNNERS)}, got {kind!r}")


__all__ = ["RUNNERS", "RunnerKind", "make_task_runner"]
