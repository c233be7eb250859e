"""Flow: a manifest of texts → speech files + results.parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.job import run_flow_job
from voxmill.audio.transcode import OutputSpec
from voxmill.jobs import JobRequest
from voxmill.manifests import RunDefaults

WORKERS = 4


@flow(name="voxmill-synthesize", task_runner=ThreadPoolTaskRunner(max_workers=WORKERS), log_prints=True)
def synthesize(
    manifest: str,
    out_dir: str,
    model: str | None = None,
    params: dict[str, Any] | None = None,
    output_format: str = "wav",
    sample_rate: int | None = None,
    channels: int | None = None,
    bitrate: str | None = None,
    loudness_lufs: float | None = None,
    text_hard_limit: int | None = None,
    retry_failed: bool = True,
    only_failed: bool = False,
    batch_size: int | None = None,
    requests_per_second: float | None = None,
    requests_per_minute: float | None = None,
    max_concurrent: int | None = None,
    base_url: str | None = None,
    api_key_block: str | None = None,
):
    """Synthesise every row of ``manifest`` (CSV/Parquet/JSONL with a ``text`` column) into ``out_dir``.

    ``model``/``params`` are run defaults for cells a row leaves empty. Rerunning on the same ``out_dir``
    sends only what is not done yet. Ends Failed (with counts) when any item failed.
    """
    request = JobRequest(
        kind="tts",
        manifest=manifest,
        out_dir=Path(out_dir),
        defaults=RunDefaults(model=model, params=params or {}, text_hard_limit=text_hard_limit),
        output=OutputSpec(
            format=output_format,
            sample_rate=sample_rate,
            channels=channels,
            bitrate=bitrate,
            loudness_lufs=loudness_lufs,
        ),
        retry_failed=retry_failed,
        only_failed=only_failed,
        batch_size=batch_size,
        workers=WORKERS,
    )
    return run_flow_job(
        request,
        base_url=base_url,
        requests_per_second=requests_per_second,
        requests_per_minute=requests_per_minute,
        max_concurrent=max_concurrent,
        api_key_block=api_key_block,
    )
