"""Flow: a manifest of texts → speech files + results.parquet."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.job import LOG_EVERY_S, run_flow_job
from tasks.params import OutputFormat, TtsModel
from tasks.shards import run_shards
from voxmill.audio.transcode import OutputSpec
from voxmill.jobs import JobRequest, RunSummary, Shard, out_location
from voxmill.manifests import RunDefaults
from voxmill.options import DEFAULT_OPTIONS, RunOptions


@flow(name="voxmill-synthesize", log_prints=True, persist_result=True)
def synthesize(
    manifest: str,
    out_dir: str,
    model: TtsModel | None = None,
    params: dict[str, Any] | None = None,
    output_format: OutputFormat = "wav",
    sample_rate: int | None = None,
    channels: int | None = None,
    bitrate: str | None = None,
    loudness_lufs: float | None = None,
    text_hard_limit: int | None = None,
    retry_failed: bool = True,
    only_failed: bool = False,
    batch_size: int | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
    shards: int = 1,
    shard: Shard | None = None,
    log_every_s: float = LOG_EVERY_S,
) -> RunSummary:
    """Synthesise every row of ``manifest`` (CSV/Parquet/JSONL with a ``text`` column) into ``out_dir``.

    ``model``/``params`` are run defaults for cells a row leaves empty. Rerunning on the same ``out_dir``
    sends only what is not done yet. Ends Failed (with counts) when any item failed. ``options``: the API,
    its rate and where batches run (:class:`voxmill.options.RunOptions`; unset fields come from the
    environment). ``shards`` > 1 splits the job into child runs of this flow's deployment
    (``out_dir`` must then be a bucket URL such as ``s3://bucket/out``, or a path every worker sees).
    """
    if shards > 1:
        return run_shards(out_dir, shards)
    request = JobRequest(
        kind="tts",
        manifest=manifest,
        **out_location(out_dir),
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
        workers=options.workers,
        shard=shard,
    )
    return run_flow_job(request, options, log_every_s=log_every_s)
