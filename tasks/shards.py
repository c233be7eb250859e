"""Fan a job out across workers: ``shards`` child runs of the flow's deployment, merged into one table.

Each child runs one :class:`voxmill.jobs.Shard` of the manifest into ``OUT/shards/<i>-of-<n>`` with its own
ledger (so killing one shard's worker and rerunning the parent resumes only what that shard is missing);
the parent then folds every shard's rows into ``OUT/results.parquet``, output paths relative to ``OUT``.
The shards draw from the job's one rate budget (every process of a machine shares it, and with
``rate_scope="prefect"`` every worker does), so the job's rate options pass to each shard unchanged: they cap
that shared budget, not a shard's share of it.
``OUT`` must be storage every worker sees (a shared disk, or a path that is the same on every host).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from voxmill.errors import ConfigError
from voxmill.jobs import JobFailed, RunSummary, Shard
from voxmill.ledger import Ledger, read_results

#: the deployment (per flow) whose runs are shards: no concurrency limit, so the parent cannot starve them
SHARD_DEPLOYMENT = "shard"
SHARDS_DIR = "shards"


def run_shards(out_dir: str, shards: int) -> RunSummary:
    """Run the current flow's job as ``shards`` child runs on the work pool; merge; summarise."""
    logger = get_run_logger()
    started = time.monotonic()
    out = Path(out_dir).expanduser().resolve()  # a deployment's working directory is the project root
    name = f"{flow_run.flow_name}/{SHARD_DEPLOYMENT}"
    base = {k: v for k, v in flow_run.parameters.items() if k not in ("shards", "shard", "out_dir")}
    pieces = [Shard(i, shards) for i in range(shards)]
    _check_deployed(name)
    logger.info("%d shards of %s via deployment %s into %s", shards, base.get("manifest"), name, out / SHARDS_DIR)

    def run_one(shard: Shard) -> FlowRun:
        parameters = {**base, "out_dir": str(out / SHARDS_DIR / shard.name), "shard": {"index": shard.index,
                                                                                       "count": shard.count}}
        return run_deployment(name, parameters=parameters, timeout=None, poll_interval=1,
                              flow_run_name=f"shard-{shard.name}")

    with ThreadPoolExecutor(max_workers=shards, thread_name_prefix="voxmill-shard") as pool:
        children = list(pool.map(run_one, pieces))
    summaries = [_shard_summary(shard, child) for shard, child in zip(pieces, children, strict=True)]
    summary = _merge(out, pieces, summaries, run_id=str(flow_run.get_id()), elapsed_s=time.monotonic() - started)
    logger.info("shards merged: %s", summary.headline())
    if not summary.ok:
        raise JobFailed(summary)
    return summary


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


def _shard_summary(shard: Shard, child: FlowRun) -> RunSummary:
    """The child's own summary (Completed or Failed with counts); any other end fails the parent with its message."""
    state = child.state
    result = state.result(raise_on_failure=False) if state is not None and state.is_final() else None
    if isinstance(result, RunSummary):
        return result
    if isinstance(result, JobFailed):
        return result.summary
    message = state.message if state is not None else "no state"
    raise RuntimeError(f"shard {shard.name} (flow run {child.name}) ended {getattr(state, 'name', '?')}: {message}")


def _merge(out: Path, pieces: list[Shard], summaries: list[RunSummary], *, run_id: str, elapsed_s: float) -> RunSummary:
    ledger = Ledger(out)
    ledger.lock()
    try:
        for shard in pieces:
            rows = read_results(out / SHARDS_DIR / shard.name)
            if rows.num_rows:
                prefix = f"{SHARDS_DIR}/{shard.name}/"
                paths = pc.binary_join_element_wise(pa.scalar(prefix), rows["output_path"], "")
                rows = rows.set_column(rows.schema.get_field_index("output_path"), "output_path", paths)
                ledger.absorb(rows)
        table = ledger.read(["id", "status"])
    finally:
        ledger.close()
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
