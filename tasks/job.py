"""A whole job under Prefect: plan, fan batches out to the chosen task runner, log progress, report.

Flows call :func:`run_flow_job` (settings from the environment and the flow's parameters, a local server
when there is no key); code that already has settings calls :func:`run_job_in_flow`. Both return a
:class:`RunSummary` when every item is done and raise :class:`JobFailed` (carrying the summary) when not,
so the flow run ends Completed or Failed with the counts in its message and its persisted result.
"""

from __future__ import annotations

import contextvars
import re
import threading
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run

from tasks.batches import Batch, WorkerBatchOutcome, process_batch
from tasks.runners import make_task_runner
from tasks.settings import flow_settings
from voxmill.batch import BatchOutcome
from voxmill.identity import content_hash
from voxmill.jobs import (
    JobFailed,
    JobRequest,
    RunSummary,
    batch_window,
    fan_out,
    finish_job,
    open_job,
    stop_on_exit,
)
from voxmill.options import RunnerKind, RunOptions
from voxmill.progress import ProgressBoard, watched_board
from voxmill.settings import Settings

#: seconds between progress lines in the run log
LOG_EVERY_S = 30.0


def artifact_key(kind: str, where: str | Path) -> str:
    """The job's artifact key, from where it writes (an output directory or a URL): each job keeps its own
    summary history."""
    text = str(where)
    resolved = text.rstrip("/") if "://" in text else str(Path(text).expanduser().resolve())
    slug = re.sub(r"[^a-z0-9]+", "-", resolved.rsplit("/", 1)[-1].lower()).strip("-")[:40] or "out"
    return f"voxmill-{kind}-{slug}-{content_hash(resolved)[:8]}"


def run_job_in_flow(
    request: JobRequest,
    settings: Settings,
    progress: ProgressBoard | None = None,
    *,
    runner: RunnerKind = "thread",
    log_every_s: float = LOG_EVERY_S,
    dask_address: str | None = None,
) -> RunSummary:
    """Run ``request`` inside the current flow: batches become ``process_batch`` task runs on ``runner``.

    ``progress`` defaults to the board the caller is watching (:func:`voxmill.progress.watching`), if any.
    """
    logger = get_run_logger()
    board = progress if progress is not None else watched_board()
    job = open_job(request, settings, progress=board, flow_run_id=flow_run.get_id())
    logger.info(
        "%s: %d rows, batches of %d, %s runner with %d workers, output %s",
        request.manifest, job.progress.total, job.batch_size, runner, request.workers, request.where,
    )
    handle = job.handle(flow_run.get_id())
    artifact_id = None
    outcomes: list[BatchOutcome] = []
    worker_retries: dict[str, tuple[int, int]] = {}

    def on_outcome(outcome: BatchOutcome) -> None:
        if isinstance(outcome, WorkerBatchOutcome):  # engines in other processes count on their own boards
            job.progress.add(done=outcome.done + outcome.reused, failed=outcome.failed)
            before = worker_retries.get(outcome.worker, (0, 0))
            now = (max(before[0], outcome.worker_retries), max(before[1], outcome.worker_rate_limited))
            worker_retries[outcome.worker] = now
            job.progress.add(retries=now[0] - before[0], rate_limited=now[1] - before[1])
        snap = job.progress.snapshot()
        if snap.total and artifact_id is not None:
            update_progress_artifact(artifact_id, progress=round(min(100.0, 100.0 * snap.finished / snap.total), 1))

    stop_logging = threading.Event()
    # the reporter runs in this context (a new thread starts in an empty one): the CLI's own Prefect API is a
    # temporary setting of it, and a log line sent from a thread that does not see it made Prefect start a log
    # shipper against no API, which imports Prefect's whole server and starts an ephemeral one mid-run (~2 s of
    # CPU holding the GIL at the first progress line, 30 s in: the engine's loop starved, ~3 % of a 10,000-item run)
    reporter = threading.Thread(
        target=contextvars.copy_context().run, args=(_log_progress, job.progress, logger, stop_logging, log_every_s),
        name="voxmill-progress", daemon=True,
    )
    reporter.start()
    try:
        artifact_id = create_progress_artifact(0.0, description=f"voxmill {request.kind} {request.manifest}")
        with make_task_runner(runner, task_slots(runner, request.workers), dask_address) as task_runner, \
                stop_on_exit(job):
            outcomes = fan_out(
                (Batch(i, items) for i, items in enumerate(job.batches())),
                lambda index, batch: task_runner.submit(process_batch, parameters={"engine": handle, "batch": batch}),
                window=batch_window(request.workers),
                on_outcome=on_outcome,
            )
    finally:
        stop_logging.set()
        reporter.join()
        summary = finish_job(job, outcomes)
    update_progress_artifact(artifact_id, progress=100.0)
    create_table_artifact(
        key=artifact_key(request.kind, request.where),
        table=[
            {"measure": name, "value": value}
            for name, value in (
                ("rows", summary.rows),
                ("done now", summary.done),
                ("reused", summary.reused),
                ("already done", summary.skipped_done),
                ("failed", summary.failed),
                ("not attempted", summary.not_attempted),
                ("failures by kind", ", ".join(f"{k}: {v}" for k, v in summary.failures_by_kind.items()) or "-"),
                ("retries (after 429)", f"{job.progress.retries} ({job.progress.rate_limited})"),
                ("audio hours", round(summary.audio_seconds / 3600, 4)),
                ("API rate (req/s)", summary.api_rate if summary.api_rate is not None else "unlimited"),
                ("Requests in flight (learned limit / most at once)",
                 f"{summary.in_flight_limit if summary.in_flight_limit is not None else '?'} / "
                 f"{summary.in_flight_high}"),
                ("output", summary.out_dir),
            )
        ],
        description=summary.headline(),
    )
    logger.info("%s; %s", summary.headline(), job.progress.snapshot().log_line())
    if not summary.ok:
        raise JobFailed(summary)
    return summary


def task_slots(runner: RunnerKind, workers: int) -> int:
    """Task runs at once on ``runner``. A thread runner's tasks only wait on this process's one engine (its loop does
    the work), so every batch of the window runs at once, as in :func:`voxmill.jobs.run_job`: a task waiting on one
    item's back-off holds a thread, not the supply of requests. A process or Dask worker runs one task at a time."""
    return batch_window(workers) if runner == "thread" else workers


def _log_progress(board: ProgressBoard, logger, stop: threading.Event, every_s: float) -> None:
    """A progress line every ``every_s`` seconds while the job runs (never one per request)."""
    while not stop.wait(every_s):
        logger.info(board.snapshot().log_line())


def run_flow_job(request: JobRequest, options: RunOptions, *, log_every_s: float = LOG_EVERY_S) -> RunSummary:
    """What every job flow does: settings from env + ``options`` (a local server when there is no key), run the
    job, return its summary — or raise :class:`JobFailed` with the counts."""
    with flow_settings(options) as settings:
        return run_job_in_flow(request, settings, runner=options.runner, log_every_s=log_every_s,
                               dask_address=options.dask_address)


__all__ = ["LOG_EVERY_S", "artifact_key", "run_flow_job", "run_job_in_flow", "task_slots"]
