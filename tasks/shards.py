"""Fan a job out across workers: ``shards`` child runs of the flow's deployment, merged into one table.

Each child runs one :class:`voxmill.jobs.Shard` of the manifest into ``OUT/shards/<i>-of-<n>`` with its own
ledger (so killing one shard's worker and rerunning the parent resumes only what that shard is missing);
the parent then folds every shard's rows into ``OUT/results.parquet``, output paths relative to ``OUT``.
The job's ``requests_per_second``/``requests_per_minute`` pass to every shard unchanged: a cap applies to the
budget the shards draw from together (one file per machine, or ``rate_scope=prefect`` across machines), so
dividing it would cap the job at 1/N of what was asked.
``OUT`` is a URL (``s3://bucket/out``: each shard works in its own scratch folder on whatever worker runs it and
writes to ``OUT/shards/<i>-of-<n>`` in the bucket; the parent merges them from there, workers share no disk), or
a path every worker sees (a shared disk, or a path that is the same on every host).
"""

from __future__ import annotations

import contextvars
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from voxmill.bucket import RemoteOut, is_url, join, make_scratch, read_results_at, remove_scratch
from voxmill.errors import ConfigError
from voxmill.jobs import JobFailed, RunSummary, Shard, load_summary
from voxmill.ledger import Ledger

#: the deployment (per flow) whose runs are shards: no concurrency limit, so the parent cannot starve them
SHARD_DEPLOYMENT = "shard"
SHARDS_DIR = "shards"


def run_shards(out_dir: str, shards: int) -> RunSummary:
    """Run the current flow's job as ``shards`` child runs on the work pool; merge; summarise."""
    logger = get_run_logger()
    started = time.monotonic()
    # a deployment's working directory is the project root
    out: Path | str = out_dir.rstrip("/") if is_url(out_dir) else Path(out_dir).expanduser().resolve()
    name = f"{flow_run.flow_name}/{SHARD_DEPLOYMENT}"
    base = {k: v for k, v in flow_run.parameters.items() if k not in ("shards", "shard", "out_dir")}
    pieces = [Shard(i, shards) for i in range(shards)]
    _check_deployed(name)
    logger.info("%d shards of %s via deployment %s into %s", shards, base.get("manifest"), name,
                _under(out, SHARDS_DIR))

    def run_one(shard: Shard) -> FlowRun:
        parameters = {**base, "out_dir": _under(out, SHARDS_DIR, shard.name),
                      "shard": {"index": shard.index, "count": shard.count}}
        return run_deployment(name, parameters=parameters, timeout=None, poll_interval=1,
                              flow_run_name=f"shard-{shard.name}")

    artifact = create_progress_artifact(0.0, description=f"voxmill: {shards} shards of {base.get('manifest')}")
    finished: list[tuple[Shard, RunSummary | None]] = []
    with ThreadPoolExecutor(max_workers=shards, thread_name_prefix="voxmill-shard") as pool:
        # each thread in a copy of this flow run's context: the children are linked as its subflow runs
        futures = {pool.submit(contextvars.copy_context().run, run_one, shard): shard for shard in pieces}
        children: dict[Shard, FlowRun] = {}
        for future in as_completed(futures):
            shard = futures[future]
            children[shard] = child = future.result()
            try:
                finished.append((shard, _shard_summary(shard, child, out)))
            except RuntimeError:
                finished.append((shard, None))
            update_progress_artifact(artifact, progress=round(100.0 * len(finished) / shards, 1))
            create_table_artifact(key=_artifact_key(out), table=_shards_table(finished, shards),
                                  description=f"{len(finished)} of {shards} shards finished")
    summaries = [_shard_summary(shard, children[shard], out) for shard in pieces]
    summary = _merge(out, pieces, summaries, run_id=str(flow_run.get_id()), elapsed_s=time.monotonic() - started)
    logger.info("shards merged: %s", summary.headline())
    if not summary.ok:
        raise JobFailed(summary)
    return summary


def _artifact_key(out: Path | str) -> str:
    from tasks.job import artifact_key

    return artifact_key("shards", out)


def _shards_table(finished: list[tuple[Shard, RunSummary | None]], shards: int) -> list[dict[str, object]]:
    """The parent's summary of its shards so far: one row per finished shard and a total."""
    rows: list[dict[str, object]] = []
    for shard, summary in sorted(finished, key=lambda pair: pair[0].index):
        if summary is None:
            rows.append({"shard": shard.name, "state": "crashed", "done": "-", "failed": "-", "already done": "-"})
        else:
            rows.append({"shard": shard.name, "state": "ok" if summary.ok else "failed", "done": summary.done,
                         "failed": summary.failed, "already done": summary.skipped_done})
    ended = [s for _, s in finished if s is not None]
    rows.append({"shard": f"total ({len(finished)} of {shards})", "state": "",
                 "done": sum(s.done for s in ended), "failed": sum(s.failed for s in ended),
                 "already done": sum(s.skipped_done for s in ended)})
    return rows


def _check_deployed(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise ConfigError(
            f"shards run as runs of deployment {name!r}, which this Prefect server does not have: run `make deploy` "
            "and point PREFECT_API_URL at its server"
        ) from None


def _shard_summary(shard: Shard, child: FlowRun, out: Path | str) -> RunSummary:
    """The child's own summary (Completed or Failed with counts); any other end fails the parent with its message.

    With OUT at a URL the summary comes from the bucket (``summary.json``, written by the shard at its end): the
    child's persisted result lives on whichever worker ran it, which shares no disk with this one."""
    state = child.state
    try:
        result = state.result(raise_on_failure=False) if state is not None and state.is_final() else None
    except Exception:  # noqa: BLE001 - a result persisted on another worker's disk cannot be read here
        result = None
    if isinstance(result, RunSummary):
        return result
    if isinstance(result, JobFailed):
        return result.summary
    if isinstance(out, str) and state is not None and (state.is_completed() or state.is_failed()):
        summary = load_summary(_under(out, SHARDS_DIR, shard.name))
        if summary is not None:
            return summary
    message = state.message if state is not None else "no state"
    raise RuntimeError(f"shard {shard.name} (flow run {child.name}) ended {getattr(state, 'name', '?')}: {message}")


def _under(out: Path | str, *parts: str) -> str:
    return join(out, *parts) if isinstance(out, str) else str(out.joinpath(*parts))


def _merge(out: Path | str, pieces: list[Shard], summaries: list[RunSummary], *, run_id: str,
           elapsed_s: float) -> RunSummary:
    """Fold every shard's rows into OUT's ledger (at a URL: through a scratch copy of it, under OUT's lease)."""
    remote = RemoteOut(out) if isinstance(out, str) else None
    local = make_scratch(out) if remote is not None else out
    ledger = Ledger(local)
    ledger.lock()
    try:
        if remote is not None:
            remote.acquire(ledger.run_id)
            remote.materialize(local, ledger.journal_dir)
            if ledger.has_journal_rows():
                ledger.compact()
        for shard in pieces:
            rows = read_results_at(_under(out, SHARDS_DIR, shard.name))
            if rows.num_rows:
                prefix = f"{SHARDS_DIR}/{shard.name}/"
                paths = pc.binary_join_element_wise(pa.scalar(prefix), rows["output_path"], "")
                rows = rows.set_column(rows.schema.get_field_index("output_path"), "output_path", paths)
                ledger.absorb(rows)
        table = ledger.read(["id", "status"])
        if remote is not None:
            remote.publish(local, ledger.run_id)
    finally:
        ledger.close()
        if remote is not None:
            remote.release()
            remove_scratch(local)
    statuses = Counter(table["status"].to_pylist())
    failures: Counter[str] = Counter()
    for s in summaries:
        failures.update(s.failures_by_kind)
    return RunSummary(
        run_id=run_id,
        out_dir=str(out),
        rows=sum(s.rows for s in summaries),
        skipped_done=sum(s.skipped_done for s in summaries),
        skipped_failed=sum(s.skipped_failed for s in summaries),
        done=sum(s.done for s in summaries),
        failed=sum(s.failed for s in summaries),
        reused=sum(s.reused for s in summaries),
        not_attempted=sum(s.not_attempted for s in summaries),
        failures_by_kind=dict(failures),
        audio_seconds=round(sum(s.audio_seconds for s in summaries), 3),
        elapsed_s=round(elapsed_s, 3),
        stopped=next((s.stopped for s in summaries if s.stopped), None),
        stop_kind=next((s.stop_kind for s in summaries if s.stop_kind), None),
        ledger_done=statuses.get("done", 0),
        ledger_failed=statuses.get("failed", 0),
    )


__all__ = ["SHARD_DEPLOYMENT", "run_shards"]
