"""A job from end to end, without Prefect: check the manifest, plan, fan out batches, compact, summarise.

The Prefect flows (``flows/``) use the same pieces — :func:`open_job`, :func:`fan_out`, :func:`finish_job`
— and only swap the executor that runs batches for Prefect's task runner. ``run_job`` is the plain
version used by tests, benchmarks and scripts that want no orchestration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from voxmill.audio.transcode import OutputSpec, remove_partial_outputs
from voxmill.batch import BatchEngine, BatchOutcome, JobSpec
from voxmill.bucket import (
    FetchOutputs,
    RemoteOut,
    Shipper,
    is_url,
    join,
    make_scratch,
    output_location,
    remove_scratch,
)
from voxmill.errors import ConfigError, disk_full_error
from voxmill.identity import shard_of
from voxmill.ledger import Ledger
from voxmill.manifests import JobKind, ManifestReader, RunDefaults, WorkItem, iter_id_cells
from voxmill.plan import PlanCounts, PlannedItem, key_of, plan_items
from voxmill.progress import ProgressBoard
from voxmill.settings import Settings
from voxmill.shutdown import request_stop, reset_stop
from voxmill.workers import EngineHandle, EngineSpec

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
    #: run only the items of one shard of the manifest (``None``: all of them)
    shard: Shard | None = None
    #: write to this URL (``s3://bucket/out``): the run works in a local scratch ``out_dir`` and ships
    #: outputs, ledger segments and tables there (:mod:`voxmill.bucket`); ``None``: ``out_dir`` is the output
    out_url: str | None = None

    @property
    def where(self) -> str:
        """Where the job writes, as the user named it: the URL, or the output directory."""
        return self.out_url or str(self.out_dir)


def out_file(where: str, name: str) -> str:
    """A file of an output directory or URL, as a user would name it."""
    return join(where, name) if is_url(where) else str(Path(where) / name)


def out_location(out: str | Path) -> dict[str, Any]:
    """``out_dir``/``out_url`` fields of a :class:`JobRequest` for an output named by a path or a URL."""
    if is_url(out):
        return {"out_dir": Path("."), "out_url": str(out).rstrip("/")}
    return {"out_dir": Path(out), "out_url": None}


@dataclass(frozen=True)
class Shard:
    """One of ``count`` disjoint, stable slices of a manifest, chosen by item identity.

    An item belongs to shard :func:`voxmill.identity.shard_of` of its identity: the manifest id, or (rows
    without one) its item key. So a row's shard never depends on row order or on what else the
    manifest holds.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index} of {self.count} does not exist (shards count from 0)")

    @property
    def name(self) -> str:
        """The shard's folder name under the job's output directory."""
        return f"{self.index}-of-{self.count}"

    def holds(self, item: WorkItem) -> bool:
        """Whether ``item`` belongs to this shard."""
        return self.holds_id(item.item_id if item.has_own_id or item.problem is not None else _safe_key(item))

    def holds_id(self, identity: str) -> bool:
        """Whether the item of this identity (its id, or its key) belongs to this shard."""
        return shard_of(identity, self.count) == self.index


def _safe_key(item: WorkItem) -> str:
    try:
        return key_of(item)
    except (ConfigError, OSError, ValueError):
        return item.item_id  # an unreadable file: its row fails in whichever shard it lands


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
    #: the kind of error that stopped the run (``AuthError.kind``), when one did: what exit codes are made from
    stop_kind: str | None = None
    ledger_done: int = 0
    ledger_failed: int = 0
    #: the API rate the limiter held at the end, requests per second (learned unless fixed; None: unlimited)
    api_rate: float | None = None
    #: the in-flight limit the limiter held at the end (learned unless fixed; None: not known), and the most
    #: requests this process had in flight at once
    in_flight_limit: int | None = None
    in_flight_high: int = 0

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
        if self.in_flight_limit is not None:
            text += f"; up to {self.in_flight_high} requests in flight (learned limit {self.in_flight_limit})"
        if self.api_rate is not None:
            text += f", API rate {self.api_rate:g}/s"
        if self.stopped:
            text += f" — stopped: {self.stopped}"
        return text


class JobFailed(Exception):
    """A job ended with failed or unattempted items; ``summary`` holds the counts (the message says them)."""

    def __init__(self, summary: RunSummary) -> None:
        super().__init__(f"{summary.headline()}; failures by kind: "
                         + (", ".join(f"{k} {v}" for k, v in summary.failures_by_kind.items()) or "none")
                         + f"; see {out_file(summary.out_dir, 'failures.parquet')}")
        self.summary = summary

    def __reduce__(self) -> tuple[type[JobFailed], tuple[RunSummary]]:
        return (JobFailed, (self.summary,))


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
    #: the output URL's side of the job (None: a local output directory)
    remote: RemoteRun | None = None
    #: the ids the manifest uses more than once (from the scan before the job started; None: not known)
    repeated_ids: frozenset[int] | None = None

    def batches(self) -> Iterator[list[PlannedItem]]:
        """Planned items in batches of ``batch_size``, read lazily from the manifest."""
        shard = self.request.shard
        reader = ManifestReader(self.request.manifest, self.request.kind, self.request.defaults,
                                repeated_ids=self.repeated_ids,
                                id_filter=shard.holds_id if shard is not None else None)
        failed_ids = self.ledger.failed_ids() if (self.request.only_failed or not self.request.retry_failed) else None
        planned = plan_items(
            reader,
            self.engine.done_index,
            failed_ids=failed_ids,
            retry_failed=self.request.retry_failed,
            only_failed=self.request.only_failed,
            counts=self.counts,
            holds=shard.holds_id if shard is not None else None,  # rows without an id: their key decides
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

    def handle(self, flow_run_id: str | None = None) -> EngineHandle:
        """How tasks reach this job's engine, in this process or (built from the spec) in a worker process."""
        spec = EngineSpec(self.engine.settings, self.engine.job, self.ledger.run_id, flow_run_id)
        return EngineHandle(spec, local=self.engine)


@dataclass
class RemoteRun:
    """A job writing to a URL: the URL's lease and ledger, the shipper of journal lines, the scratch folder."""

    out: RemoteOut
    shipper: Shipper | None
    scratch: Path

    def close(self) -> None:
        """Stop shipping (what is left is shipped), give the URL's lease back, delete the scratch folder."""
        try:
            if self.shipper is not None:
                self.shipper.stop()
        finally:
            if self.shipper is not None:
                self.shipper.stop_renewing()
            self.out.release()
            remove_scratch(self.scratch)


JOB_RECORD = "job.json"


def save_job_record(request: JobRequest) -> None:
    """Write what this job is (manifest, kind, defaults, output) to OUT/job.json, for ``retry-failed``."""
    record = dataclasses.asdict(request)
    record["out_dir"] = request.where
    record.pop("out_url", None)
    record["defaults"]["params"] = dict(request.defaults.params)
    target = request.out_dir / JOB_RECORD
    tmp = target.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2, default=str))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_full_error(exc, str(target)) or exc from None
    os.replace(tmp, target)


def load_job_record(out_dir: Path) -> JobRequest:
    """The JobRequest saved by the last run in ``out_dir`` (a path or URL); ConfigError if there is none."""
    if is_url(out_dir):
        remote = RemoteOut(str(out_dir))
        if not remote.exists(JOB_RECORD):
            raise ConfigError(f"{out_dir} holds no voxmill job ({JOB_RECORD} is missing): run synthesize/transcribe "
                              "first")
        record = json.loads(remote.fs.cat_file(remote.path(JOB_RECORD)))
    else:
        path = Path(out_dir) / JOB_RECORD
        if not path.exists():
            raise ConfigError(f"{out_dir} holds no voxmill job ({JOB_RECORD} is missing): run synthesize/transcribe "
                              "first")
        record = json.loads(path.read_text())
    return JobRequest(
        kind=record["kind"],
        manifest=record["manifest"],
        **out_location(record["out_dir"]),
        defaults=RunDefaults(**record["defaults"]),
        output=OutputSpec(**record["output"]),
        retry_failed=record["retry_failed"],
        only_failed=record["only_failed"],
        batch_size=record["batch_size"],
        workers=record["workers"],
        asr_max_seconds=record["asr_max_seconds"],
        shard=Shard(**record["shard"]) if record.get("shard") else None,
    )


def count_rows(manifest: str) -> int:
    """Rows in a manifest (one streaming pass; a Parquet file's footer)."""
    return sum(len(ids) for ids in iter_id_cells(manifest))


def auto_batch_size(rows: int, in_flight: int = 0, workers: int = 1) -> int:
    """≈ TARGET_BATCHES batches, at most MAX_BATCH items each: big jobs amortise the per-task cost,
    small ones still show progress task by task. Batches are never so small that ``workers`` of them hold
    fewer items than ``in_flight`` (the most requests the run may keep in flight, or the rows): at seconds
    per request, the items in flight, not the rate, set the pace."""
    enough = math.ceil(min(in_flight, rows) / max(workers, 1))
    return max(1, min(MAX_BATCH, max(math.ceil(rows / TARGET_BATCHES), enough)))


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
    if request.shard is not None and request.out_url is None and not request.out_dir.is_absolute():
        raise ConfigError(
            f"shard {request.shard.name}: out_dir {str(request.out_dir)!r} is relative; a shard runs on any worker, "
            "so give an absolute path on storage every worker sees"
        )
    # the columns up front, then one pass (ManifestReader.scan): the rows and the repeated ids; a CSV or JSONL
    # manifest is parsed whole there, so a parse error anywhere stops before any request
    reset_stop()  # a stop that ended an earlier job of this process does not carry over
    ManifestReader(request.manifest, request.kind, request.defaults).check_header()
    scan = ManifestReader(request.manifest, request.kind, request.defaults).scan()
    rows = scan.rows
    remote: RemoteRun | None = None
    if request.out_url is not None:
        bucket = RemoteOut(request.out_url)
        request = dataclasses.replace(request, out_dir=make_scratch(request.out_url))
    request.out_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(request.out_dir)
    ledger.lock()
    try:
        if request.out_url is not None:
            bucket.acquire(ledger.run_id)  # before anything is read: no other run writes the URL from here on
            remote = RemoteRun(bucket, None, request.out_dir)
            bucket.materialize(request.out_dir, ledger.journal_dir)
        save_job_record(request)
        remove_partial_outputs(request.out_dir)  # half-written files of a killed run
        if ledger.has_journal_rows():
            ledger.compact()  # fold in what a killed run left in its journal
        if remote is not None:
            remote.out.upload(request.out_dir, JOB_RECORD)
            remote.shipper = Shipper(remote.out, request.out_dir, ledger.journal_dir, ledger.run_id)
            remote.shipper.start()  # from the journals' ends: what is there now came from the bucket
        board = progress or ProgressBoard()
        board.total = rows if request.shard is None else math.ceil(rows / request.shard.count)  # about
        board.started_at = time.monotonic()  # rates and ETA count from here, not from process start
        job = JobSpec(
            kind=request.kind,
            out_dir=request.out_dir,
            output=request.output,
            asr_max_seconds=request.asr_max_seconds or settings.asr_max_seconds,
            fetch=FetchOutputs(request.out_url, str(request.out_dir)) if request.out_url is not None else None,
        )
        engine = BatchEngine(
            settings, job, ledger, progress=board, flow_run_id=flow_run_id, client_factory=client_factory
        )
        engine.start()
    except BaseException:
        ledger.close()
        if remote is not None:
            remote.close()
        raise
    return OpenJob(
        request=request,
        ledger=ledger,
        engine=engine,
        progress=board,
        counts=PlanCounts(),
        batch_size=request.batch_size or auto_batch_size(rows, settings.rate_limit.max_concurrent, request.workers),
        started=time.monotonic(),
        remote=remote,
        repeated_ids=scan.repeated_ids,
    )


@contextlib.contextmanager
def stop_on_exit(job: OpenJob) -> Iterator[None]:
    """Stop ``job``'s engine when the fan-out is left by an exception, before the executor waits for its threads.

    A signal (SIGTERM: Prefect's ``TerminationSignal``; Ctrl-C) stops every engine of the process
    (:func:`voxmill.shutdown.request_stop`): no new request, no retry, the requests in flight get
    ``VOXMILL_STOP_GRACE`` seconds, so the executor's wait is bounded even when the API no longer answers.
    """
    try:
        yield
    except Exception as exc:
        job.engine.stop(f"{type(exc).__name__}: {exc}"[:200])
        raise
    except BaseException as exc:
        number = getattr(exc, "signal", None)
        request_stop(f"stopped by {signal.Signals(number).name}" if number else "interrupted")
        raise


#: batches a job keeps in its engine per worker (``--workers``): each runs until its slowest item ends, and one
#: item waiting out its retries' back-off (seconds under faults) keeps its batch open with nothing left to send,
#: so the window holds enough batches that those waiting on a straggler leave others to supply the requests
BATCHES_PER_WORKER = 4


def batch_window(workers: int) -> int:
    """Batches outstanding at once for a job of ``workers`` workers (bounds what is read of the manifest)."""
    return max(1, workers) * BATCHES_PER_WORKER


class _Future(Protocol):
    def result(self) -> BatchOutcome: ...

    def add_done_callback(self, fn: Callable[[Any], object]) -> None: ...


#: seconds between checks while fan_out waits on a batch: the wait stays open to signals (SIGTERM, Ctrl-C)
_WAIT_S = 0.5


def fan_out(
    batches: Iterable[list[PlannedItem]],
    submit: Callable[[int, list[PlannedItem]], _Future],
    *,
    window: int,
    on_outcome: Callable[[BatchOutcome], None] | None = None,
) -> list[BatchOutcome]:
    """Submit batches with at most ``window`` outstanding (never the whole manifest at once), collecting each as it
    finishes: a batch waiting on one item's back-off holds one place of the window, not the next submission
    (outcomes come in finishing order). Once a batch reports the run stopped, no further batch is submitted."""
    finished: queue.SimpleQueue[_Future] = queue.SimpleQueue()
    outcomes: list[BatchOutcome] = []
    outstanding = 0
    stopped = False

    def collect_one() -> None:
        nonlocal outstanding, stopped
        future = _next_finished(finished)
        outstanding -= 1
        outcome = future.result()
        outcomes.append(outcome)
        stopped = stopped or outcome.stopped is not None
        if on_outcome:
            on_outcome(outcome)

    for index, batch in enumerate(batches):
        if stopped:
            break  # the key was refused, the disk filled, a stop was asked for: nothing more is sent
        submit(index, batch).add_done_callback(finished.put)
        outstanding += 1
        while outstanding >= window:
            collect_one()
    while outstanding:
        collect_one()
    return outcomes


def _next_finished(finished: queue.SimpleQueue[_Future]) -> _Future:
    """The next future to finish, waiting in short steps so that a signal's handler runs meanwhile."""
    while True:
        try:
            return finished.get(timeout=_WAIT_S)
        except queue.Empty:
            continue


class EngineBatches:
    """Hands batches to a job's engine from one thread (:meth:`BatchEngine.submit_batch`), no thread per batch.

    A context manager like an executor: leaving it waits until every batch handed over has ended (after a stop,
    within the engine's stop grace), so nothing is recorded after the job is finished.
    """

    def __init__(self, engine: BatchEngine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._outstanding: set[Future[BatchOutcome]] = set()

    def submit(self, batch: list[PlannedItem]) -> Future[BatchOutcome]:
        """Start ``batch`` in the engine; the future ends with its counts."""
        future = self._engine.submit_batch(batch)
        with self._lock:
            self._outstanding.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[BatchOutcome]) -> None:
        with self._lock:
            self._outstanding.discard(future)

    def __enter__(self) -> EngineBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        while True:
            with self._lock:
                waiting = list(self._outstanding)
            if not waiting:
                return
            wait(waiting, timeout=_WAIT_S)


def finish_job(job: OpenJob, outcomes: list[BatchOutcome]) -> RunSummary:
    """Stop the engine, compact the ledger, release the output directory, and summarise."""
    remote = job.remote
    try:
        job.engine.close()
        if remote is not None and remote.shipper is not None:
            remote.shipper.stop()  # every journal line in a segment before the journals are compacted
        board = job.progress
        table = job.ledger.compact(run={
            "run_id": job.ledger.run_id,
            "api_rate": round(board.api_rate, 3) if board.api_rate is not None else None,
            "in_flight_limit": board.in_flight_limit,
            "in_flight_high": board.in_flight_high,
        })
        if remote is not None:
            remote.out.publish(job.request.out_dir, job.ledger.run_id)
    finally:
        job.ledger.close()
        if remote is not None:
            remote.close()
    run_rows = table.filter(pc.equal(table["run_id"], job.ledger.run_id)) if table.num_rows else table
    failures = Counter(
        row["error_kind"] for row in run_rows.select(["status", "error_kind"]).to_pylist() if row["status"] == "failed"
    )
    statuses = Counter(table["status"].to_pylist()) if table.num_rows else Counter()
    total = Counter()
    for outcome in outcomes:
        total.update(done=outcome.done, failed=outcome.failed, reused=outcome.reused,
                     not_attempted=outcome.not_attempted)
    summary = RunSummary(
        run_id=job.ledger.run_id,
        out_dir=job.request.where,
        rows=job.counts.rows,
        skipped_done=job.counts.skipped_done,
        skipped_failed=job.counts.skipped_failed,
        done=total["done"],
        failed=total["failed"],
        reused=total["reused"],
        not_attempted=total["not_attempted"],
        failures_by_kind=dict(failures),
        audio_seconds=_new_audio_seconds(run_rows),
        elapsed_s=round(time.monotonic() - job.started, 3),
        stopped=job.engine.stop_reason or next((o.stopped for o in outcomes if o.stopped), None),
        stop_kind=job.engine.stop_kind or next((o.stop_kind for o in outcomes if o.stop_kind), None),
        ledger_done=statuses.get("done", 0),
        ledger_failed=statuses.get("failed", 0),
        api_rate=round(job.progress.api_rate, 3) if job.progress.api_rate is not None else None,
        in_flight_limit=job.progress.in_flight_limit,
        in_flight_high=job.progress.in_flight_high,
    )
    if remote is not None:  # for a parent on another machine (a shard's flow-run result lives on its worker)
        remote.out.write_json(SUMMARY_FILE, dataclasses.asdict(summary))
    return summary


#: a URL job's summary at OUT (``RunSummary`` as JSON), written at its end
SUMMARY_FILE = "summary.json"


def load_summary(where: str) -> RunSummary | None:
    """The summary a URL job wrote at its end (None: none there)."""
    record = RemoteOut(where).read_json(SUMMARY_FILE)
    return RunSummary(**record) if record is not None else None


def _new_audio_seconds(run_rows: pa.Table) -> float:
    """Seconds of speech synthesised by this run (worker processes included; reused outputs not)."""
    if run_rows.num_rows == 0:
        return 0.0
    made = pc.and_(pc.and_(pc.equal(run_rows["status"], "done"), pc.equal(run_rows["kind"], "tts")),
                   pc.is_null(run_rows["reused_from"]))
    return round(pc.sum(run_rows.filter(made)["duration_s"]).as_py() or 0.0, 3)


def run_job(
    request: JobRequest,
    settings: Settings,
    *,
    progress: ProgressBoard | None = None,
    client_factory: Callable[[Settings], Any] | None = None,
) -> RunSummary:
    """Run a whole job in this process (no Prefect): batches go straight to the engine's loop, a window of them
    at once (:func:`batch_window`)."""
    job = open_job(request, settings, progress=progress, client_factory=client_factory)
    outcomes: list[BatchOutcome] = []
    try:
        with EngineBatches(job.engine) as engine_batches, stop_on_exit(job):
            outcomes = fan_out(
                job.batches(),
                lambda index, batch: engine_batches.submit(batch),
                window=batch_window(request.workers),
            )
    finally:
        summary = finish_job(job, outcomes)
    return summary


__all__ = [
    "BATCHES_PER_WORKER",
    "EngineBatches",
    "JobFailed",
    "JobRequest",
    "OpenJob",
    "RunSummary",
    "Shard",
    "auto_batch_size",
    "batch_window",
    "count_rows",
    "load_job_record",
    "load_summary",
    "out_file",
    "out_location",
    "output_location",
    "save_job_record",
    "stop_on_exit",
    "fan_out",
    "finish_job",
    "open_job",
    "run_job",
]
