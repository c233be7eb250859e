"""A whole job under Prefect: plan, fan batches out to tasks, report progress and a summary artifact."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run
from prefect.states import State

from tasks.batches import Batch, process_batch, register_engine, unregister_engine
from tasks.outcome import summary_state
from tasks.settings import resolve_settings
from voxmill.batch import BatchOutcome
from voxmill.jobs import JobRequest, RunSummary, fan_out, finish_job, open_job
from voxmill.progress import ProgressBoard, active_board
from voxmill.settings import Settings


def run_job_in_flow(request: JobRequest, settings: Settings, progress: ProgressBoard | None = None) -> RunSummary:
    """Run ``request`` inside the current flow: batches become ``process_batch`` task runs."""
    logger = get_run_logger()
    job = open_job(request, settings, progress=progress, flow_run_id=flow_run.get_id())
    logger.info(
        "%s: %d rows, batches of %d, %d workers, output %s",
        request.manifest, job.progress.total, job.batch_size, request.workers, request.out_dir,
    )
    handle = register_engine(job.engine)
    artifact_id = create_progress_artifact(0.0, description=f"voxmill {request.kind} {request.manifest}")
    outcomes: list[BatchOutcome] = []

    def on_outcome(outcome: BatchOutcome) -> None:
        snap = job.progress.snapshot()
        if snap.total:
            update_progress_artifact(artifact_id, progress=round(100.0 * snap.finished / snap.total, 1))

    try:
        outcomes = fan_out(
            (Batch(i, items) for i, items in enumerate(job.batches())),
            lambda index, batch: process_batch.submit(handle, batch),
            window=request.workers * 2,
            on_outcome=on_outcome,
        )
    finally:
        unregister_engine(handle)
        summary = finish_job(job, outcomes)
    update_progress_artifact(artifact_id, progress=100.0)
    create_table_artifact(
        key=f"voxmill-{request.kind}-summary",
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
                ("audio hours", round(summary.audio_seconds / 3600, 4)),
                ("API rate (req/s)", summary.api_rate if summary.api_rate is not None else "unlimited"),
                ("output", summary.out_dir),
            )
        ],
        description=summary.headline(),
    )
    logger.info(summary.headline())
    return summary


def run_flow_job(
    request: JobRequest,
    *,
    base_url: str | None,
    requests_per_second: float | None,
    requests_per_minute: float | None,
    max_concurrent: int | None,
    api_key_block: str | None,
) -> State:
    """What every job flow does: settings from env + its parameters, run the job, the truthful final state."""
    settings = resolve_settings(
        base_url=base_url,
        requests_per_second=requests_per_second,
        requests_per_minute=requests_per_minute,
        max_concurrent=max_concurrent,
        api_key_block=api_key_block,
    )
    return summary_state(run_job_in_flow(request, settings, active_board()))
