"""Flow: a manifest of audio files → transcripts (.txt/.srt/.vtt/.json) + results.parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from tasks.job import LOG_EVERY_S, run_flow_job
from tasks.params import AsrModel
from tasks.shards import run_shards
from voxmill.jobs import JobRequest, RunSummary, Shard
from voxmill.manifests import RunDefaults
from voxmill.options import DEFAULT_OPTIONS, RunOptions


@flow(name="voxmill-transcribe", log_prints=True, persist_result=True)
def transcribe(
    manifest: str,
    out_dir: str,
    model: AsrModel | None = None,
    language: str | None = None,
    params: dict[str, Any] | None = None,
    max_seconds: float | None = None,
    retry_failed: bool = True,
    only_failed: bool = False,
    batch_size: int | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
    shards: int = 1,
    shard: Shard | None = None,
    log_every_s: float = LOG_EVERY_S,
) -> RunSummary:
    """Transcribe every row of ``manifest`` (an ``audio`` column, or a folder or glob of audio files) into ``out_dir``.

    Files in formats the API does not take are converted first; files longer than ``max_seconds``
    (default VOXMILL_ASR_MAX_SECONDS) are split at silences and their transcripts stitched with the
    right time offsets. Rows with ``reference_text`` get a WER. Ends Failed when any item failed.
    ``options`` and ``shards``: as for ``synthesize``.
    """
    if shards > 1:
        return run_shards(out_dir, shards)
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
        workers=options.workers,
        asr_max_seconds=max_seconds,
        shard=shard,
    )
    return run_flow_job(request, options, log_every_s=log_every_s)
