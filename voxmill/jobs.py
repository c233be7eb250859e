"""A job from end to end, without Prefect: check the manifest, plan, fan out batches, compact, summarise.

The Prefect flows (``flows/``) use the same pieces — :func:`open_job`, :func:`fan_out`, :func:`finish_job`
— and only swap the executor that runs batches for Prefect's task runner. ``run_job`` is the plain
version used by tests, benchmarks and scripts that want no orchestration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow.compute as pc

from voxmill.audio.transcode import OutputSpec, remove_partial_outputs
from voxmill.batch import BatchEngine, BatchOutcome, JobSpec
from voxmill.errors import ConfigError
from voxmill.ledger import Ledger
from voxmill.manifests import JobKind, ManifestReader, RunDefaults, iter_record_batches
from voxmill.plan import PlanCounts, PlannedItem, plan_items
from voxmill.progress import ProgressBoard
from voxmill.settings import Settings

#: the largest batch one task handles; small manifests get smaller batches so progress stays visible
MAX_BATCH = 200
TARGET_BATCHES = 40


@dataclass(frozen=True)
class JobRequest:
    """Everything a run needs to know, serialisable (flow parameters map onto it one to one)."""

    kind: JobKind
    manifest: str
    out_dir: Path
    defaults: RunDefaults = field(default_factory=RunDefaults)
    output: OutputSpec = field(default_factory=OutputSpec)
    retry_failed: bool = True
    only_failed: bool = False
    batch_size: int | None = None
    workers: int = 4
    asr_max_seconds: float | None = None


@dataclass(frozen=True)
class RunSummary:
    """How a run ended: counts, failures by kind, audio produced; ``ok`` only when nothing failed."""

    run_id: str
    out_dir: str
    rows: int
    skipped_done: int
    skipped_failed: int
    done: int
    failed: int
    reused: int
    not_attempted: int
    failures_by_kind: dict[str, int]
    audio_seconds: float
    elapsed_s: float
    stopped: str | None = None
    ledger_done: int = 0
    ledger_failed: int = 0
    #: the API rate the limiter held at the end, requests per second (learned unless fixed; None: unlimited)
    api_rate: float | None = None

    @property
    def ok(self) -> bool:
        """True when every item of the manifest is done (now or before)."""
        return self.ledger_failed == 0 and self.not_attempted == 0 and self.stopped is None

    def headline(self) -> str:
        """One line for logs and the CLI."""
        text = (
            f"{self.done} done, {self.reused} reused, {self.failed} failed, "
            f"{self.skipped_done} already done, of {self.rows} rows in {self.elapsed_s:.1f}s"
        )
        if self.not_attempted:
            text += f"; {self.not_attempted} not attempted"
        if self.stopped:
            text += f" — stopped: {self.stopped}"
        return text


@dataclass
class OpenJob:
    """A job ready to fan out: its ledger (locked), engine and the lazy stream of planned batches."""

    request: JobRequest
    ledger: Ledger
    engine: BatchEngine
    progress: ProgressBoard
    counts: PlanCounts
    batch_size: int
    started: float

    def batches(self) -> Iterator[list[PlannedItem]]:
        """Planned items in batches of ``batch_size``, read lazily from the manifest."""
        reader = ManifestReader(self.request.manifest, self.request.kind, self.request.defaults)
        failed_ids = self.ledger.failed_ids() if (self.request.only_failed or not self.request.retry_failed) else None
        planned = plan_items(
            reader,
            self.engine.done_index,
            failed_ids=failed_ids,
            retry_failed=self.request.retry_failed,
            only_failed=self.request.only_failed,
            counts=self.counts,
        )
        batch: list[PlannedItem] = []
        for item in planned:
            batch.append(item)
            if len(batch) >= self.batch_size:
                self._sync_progress()
                yield batch
                batch = []
        self._sync_progress()
        if batch:
            yield batch

    def _sync_progress(self) -> None:
        self.progress.skipped = self.counts.skipped_done + self.counts.skipped_failed


JOB_RECORD = "job.json"


def save_job_record(request: JobRequest) -> None:
    """Write what this job is (manifest, kind, defaults, output) to OUT/job.json, for ``retry-failed``."""
    record = dataclasses.asdict(request)
    record["out_dir"] = str(request.out_dir)
    record["defaults"]["params"] = dict(request.defaults.params)
    target = request.out_dir / JOB_RECORD
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, target)


def load_job_record(out_dir: Path) -> JobRequest:
    """The JobRequest saved by the last run in ``out_dir``; ConfigError if there is none."""
    path = Path(out_dir) / JOB_RECORD
    if not path.exists():
        raise ConfigError(f"{out_dir} holds no voxmill job ({JOB_RECORD} is missing): run synthesize/transcribe first")
    record = json.loads(path.read_text())
    return JobRequest(
        kind=record["kind"],
        manifest=record["manifest"],
        out_dir=Path(record["out_dir"]),
        defaults=RunDefaults(**record["defaults"]),
        output=OutputSpec(**record["output"]),
        retry_failed=record["retry_failed"],
        only_failed=record["only_failed"],
        batch_size=record["batch_size"],
        workers=record["workers"],
        asr_max_seconds=record["asr_max_seconds"],
    )


def count_rows(manifest: str) -> int:
    """Rows in a manifest (one streaming pass)."""
    return sum(batch.num_rows for batch in iter_record_batches(manifest))


def auto_batch_size(rows: int) -> int:
    """≈ TARGET_BATCHES batches, at most MAX_BATCH items each: big jobs amortise the per-task cost,
    small ones still show progress task by task."""
    return max(1, min(MAX_BATCH, math.ceil(rows / TARGET_BATCHES)))


def open_job(
    request: JobRequest,
    settings: Settings,
    *,
    progress: ProgressBoard | None = None,
    flow_run_id: str | None = None,
    client_factory: Callable[[Settings], Any] | None = None,
) -> OpenJob:
    """Check the manifest (readable, required column), lock the output, start the engine."""
    if settings.api_key is None:
        raise ConfigError(
            "no API key: set VOXMILL_API_KEY, or run against the local server "
            "(`voxmill serve`, or the CLI's --local flag)"
        )
    # the columns up front, then one whole pass (count_rows): a parse error anywhere stops before any request
    ManifestReader(request.manifest, request.kind, request.defaults).check_header()
    rows = count_rows(request.manifest)
    request.out_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(request.out_dir)
    ledger.lock()
    try:
        save_job_record(request)
        remove_partial_outputs(request.out_dir)  # half-written files of a killed run
        if ledger.has_journal_rows():
            ledger.compact()  # fold in what a killed run left in its journal
        board = progress or ProgressBoard()
        board.total = rows
        board.started_at = time.monotonic()  # rates and ETA count from here, not from process start
        job = JobSpec(
            kind=request.kind,
            out_dir=request.out_dir,
            output=request.output,
            asr_max_seconds=request.asr_max_seconds or settings.asr_max_seconds,
        )
        engine = BatchEngine(
            settings, job, ledger, progress=board, flow_run_id=flow_run_id, client_factory=client_factory
        )
        engine.start()
    except BaseException:
        ledger.close()
        raise
    return OpenJob(
        request=request,
        ledger=ledger,
        engine=engine,
        progress=board,
        counts=PlanCounts(),
        batch_size=request.batch_size or auto_batch_size(rows),
        started=time.monotonic(),
    )


class _Future(Protocol):
    def result(self) -> BatchOutcome: ...


def fan_out(
    batches: Iterable[list[PlannedItem]],
    submit: Callable[[int, list[PlannedItem]], _Future],
    *,
    window: int,
    on_outcome: Callable[[BatchOutcome], None] | None = None,
) -> list[BatchOutcome]:
    """Submit batches with at most ``window`` outstanding (never the whole manifest at once)."""
    pending: deque[_Future] = deque()
    outcomes: list[BatchOutcome] = []

    def collect_one() -> None:
        outcome = pending.popleft().result()
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)

    for index, batch in enumerate(batches):
        if outcomes and outcomes[-1].stopped:
            break
        pending.append(submit(index, batch))
        while len(pending) >= window:
            collect_one()
    while pending:
        collect_one()
    return outcomes


def finish_job(job: OpenJob, outcomes: list[BatchOutcome]) -> RunSummary:
    """Stop the engine, compact the ledger, release the output directory, and summarise."""
    try:
        job.engine.close()
        table = job.ledger.compact()
    finally:
        job.ledger.close()
    run_rows = table.filter(pc.equal(table["run_id"], job.ledger.run_id)) if table.num_rows else table
    failures = Counter(
        row["error_kind"] for row in run_rows.select(["status", "error_kind"]).to_pylist() if row["status"] == "failed"
    )
    statuses = Counter(table["status"].to_pylist()) if table.num_rows else Counter()
    total = Counter()
    for outcome in outcomes:
        total.update(done=outcome.done, failed=outcome.failed, reused=outcome.reused,
                     not_attempted=outcome.not_attempted)
    return RunSummary(
        run_id=job.ledger.run_id,
        out_dir=str(job.request.out_dir),
        rows=job.counts.rows,
        skipped_done=job.counts.skipped_done,
        skipped_failed=job.counts.skipped_failed,
        done=total["done"],
        failed=total["failed"],
        reused=total["reused"],
        not_attempted=total["not_attempted"],
        failures_by_kind=dict(failures),
        audio_seconds=round(job.progress.snapshot().audio_seconds, 3),
        elapsed_s=round(time.monotonic() - job.started, 3),
        stopped=job.engine.stop_reason,
        ledger_done=statuses.get("done", 0),
        ledger_failed=statuses.get("failed", 0),
        api_rate=round(job.progress.api_rate, 3) if job.progress.api_rate is not None else None,
    )


def run_job(
    request: JobRequest,
    settings: Settings,
    *,
    progress: ProgressBoard | None = None,
    client_factory: Callable[[Settings], Any] | None = None,
) -> RunSummary:
    """Run a whole job in this process with a thread pool (no Prefect)."""
    job = open_job(request, settings, progress=progress, client_factory=client_factory)
    outcomes: list[BatchOutcome] = []
    try:
        with ThreadPoolExecutor(max_workers=request.workers, thread_name_prefix="voxmill-batch") as pool:
            outcomes = fan_out(
                job.batches(),
                lambda index, batch: pool.submit(job.engine.run_batch, batch),
                window=request.workers * 2,
            )
    finally:
        summary = finish_job(job, outcomes)
    return summary


__all__ = [
    "JobRequest",
    "OpenJob",
    "RunSummary",
    "auto_batch_size",
    "count_rows",
    "load_job_record",
    "save_job_record",
    "fan_out",
    "finish_job",
    "open_job",
    "run_job",
]
