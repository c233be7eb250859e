"""Flow: a manifest of audio files → transcripts (.txt/.srt/.vtt/.json) + results.parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.job import run_flow_job
from voxmill.jobs import JobRequest
from voxmill.manifests import RunDefaults

WORKERS = 4


@flow(name="voxmill-transcribe", task_runner=ThreadPoolTaskRunner(max_workers=WORKERS), log_prints=True)
def transcribe(
    manifest: str,
    out_dir: str,
    model: str | None = None,
    language: str | None = None,
    params: dict[str, Any] | None = None,
    max_seconds: float | None = None,
    retry_failed: bool = True,
    only_failed: bool = False,
    batch_size: int | None = None,
    requests_per_second: float | None = None,
    requests_per_minute: float | None = None,
    max_concurrent: int | None = None,
    base_url: str | None = None,
    api_key_block: str | None = None,
):
    """Transcribe every row of ``manifest`` (an ``audio`` column, or a folder or glob of audio files) into ``out_dir``.

    Files in formats the API does not take are converted first; files longer than ``max_seconds``
    (default VOXMILL_ASR_MAX_SECONDS) are split at silences and their transcripts stitched with the
    right time offsets. Rows with ``reference_text`` get a WER. Ends Failed when any item failed.
    """
    defaults = dict(params or {})
    if language:
        defaults["language"] = language
    request = JobRequest(
        kind="asr",
        manifest=manifest,
        out_dir=Path(out_dir),
        defaults=RunDefaults(model=model, params=defaults),
        retry_failed=retry_failed,
        only_failed=only_failed,
        batch_size=batch_size,
        workers=WORKERS,
        asr_max_seconds=max_seconds,
    )
    return run_flow_job(
        request,
        base_url=base_url,
        requests_per_second=requests_per_second,
        requests_per_minute=requests_per_minute,
        max_concurrent=max_concurrent,
        api_key_block=api_key_block,
    )
