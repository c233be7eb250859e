"""A dataset build from end to end, without Prefect: plan against ``latest``, make only what is new or
changed through the ordinary job engine, measure, judge, publish a verified version.

The work folder holds ordinary job output directories (``job/``, and ``roundtrip/`` for the TTS round
trip), each with its ledger: a build killed at any point and rerun plans the same rows and the ledgers
skip what was already paid for. Carried-over rows come from the previous version's own Parquet rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxmill.audio.transcode import OutputSpec
from voxmill.dataset.card import render_card
from voxmill.dataset.incremental import (
    BuildPlan,
    SourceRow,
    plan_build,
    read_source_rows,
    run_defaults,
    source_manifest,
    write_delta_manifest,
)
from voxmill.dataset.publish import BuildDiff, DatasetStore, PreparedVersion, VersionManifest
from voxmill.dataset.qc import finite_or_none, judge, measure_clip, reasons_effect
from voxmill.dataset.rows import META_COLUMNS, DatasetRow, rows_table
from voxmill.dataset.spec import DatasetSpec
from voxmill.errors import ConfigError, VoxmillError
from voxmill.estimate import PriceTable
from voxmill.identity import content_hash
from voxmill.jobs import JobRequest, RunSummary, run_job
from voxmill.ledger import Ledger, read_results, utc_now
from voxmill.manifests import RunDefaults, find_duplicate_ids, open_binary
from voxmill.progress import ProgressBoard
from voxmill.settings import Settings

JOB_DIR = "job"
#: rows made in this build are read from disk and written this many at a time
MADE_CHUNK_ROWS = 1000
ROUNDTRIP_DIR = "roundtrip"


class BuildStopped(VoxmillError):
    """The build's job stopped before every row was attempted (e.g. the key was refused): nothing published."""


@dataclass(frozen=True)
class BuildReport:
    """How a build ended: the version it published and what it did to get there."""

    name: str
    dest: str
    version: str
    previous: str | None
    rows: int
    rejected: int
    hours: float
    diff: BuildDiff
    made: int
    carried: int
    billed_requests: int
    cost: float | None
    elapsed_s: float
    filters_effect: dict[str, int] = field(default_factory=dict)
    removed_versions: tuple[str, ...] = ()
    #: False when nothing changed since ``latest`` (same rows, same spec): no new version was written
    published: bool = True
    #: seconds spent planning (source keys, previous version), making new rows, judging + publishing
    phases: dict[str, float] = field(default_factory=dict)

    def headline(self) -> str:
        """One line for logs and the CLI."""
        d = self.diff
        if not self.published:
            return f"{self.name}: nothing changed since {self.version} (same rows, same spec); latest stays"
        return (f"{self.name} {self.version}: {self.rows} rows ({self.hours:.3f} h), {self.rejected} rejected; "
                f"added {d.added}, changed {d.changed}, removed {d.removed}, unchanged {d.unchanged}; "
                f"{self.billed_requests} billed requests, {self.carried} rows carried over, in {self.elapsed_s:.1f}s")

    def summary_table(self) -> list[dict[str, Any]]:
        """Measure/value rows (the flow's summary artifact)."""
        d = self.diff
        return [{"measure": name, "value": value} for name, value in (
            ("version", self.version), ("previous", self.previous or "-"), ("added", d.added),
            ("changed", d.changed), ("removed", d.removed), ("unchanged", d.unchanged), ("rows", self.rows),
            ("rejected", self.rejected), ("hours", round(self.hours, 4)), ("billed requests", self.billed_requests),
            ("cost", "unknown" if self.cost is None else round(self.cost, 4)), ("destination", self.dest),
        )]


def work_dir_for(spec: DatasetSpec, store: DatasetStore, settings: Settings) -> Path:
    """The spec's work folder, ``DEST/.work`` for a local destination, else under the cache folder."""
    if spec.work_dir:
        return Path(spec.work_dir)
    if store.local:
        return Path(store.root) / ".work"
    digest = content_hash(spec.dest)[:12]
    return Path(settings.cache_dir) / "datasets" / f"{spec.name}-{digest}"


def _price_table() -> PriceTable | None:
    path = Settings.from_env().prices_path
    return PriceTable.load(path) if path else None


def _run(request: JobRequest, settings: Settings, progress: ProgressBoard | None,
         client_factory: Callable[[Settings], Any] | None) -> RunSummary:
    summary = run_job(request, settings, progress=progress, client_factory=client_factory)
    if summary.stopped or summary.not_attempted:
        raise BuildStopped(f"the build's {request.kind} job stopped ({summary.stopped or 'rows not attempted'}); "
                           f"nothing was published; fix the cause and rerun: finished rows are not paid again")
    return summary


def _failure_text(row: dict[str, Any]) -> str:
    return f"failed: {row['error_kind']}: {row['error_message']}"


def _local_audio(source: str, work: Path) -> Path:
    """A local path of an ASR source file (copied into the work folder if remote)."""
    if "://" not in source:
        return Path(source)
    with open_binary(source, "audio file") as handle:
        data = handle.read()
    suffix = Path(source.split("?", 1)[0]).suffix
    target = work / "remote-audio" / (content_hash(source) + suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def _new_row(spec: DatasetSpec, source: SourceRow, done: dict[str, Any], work: Path,
             check: dict[str, Any] | None) -> DatasetRow:
    """A row made in this build, measured."""
    item = source.item
    if spec.kind == "tts":
        path = work / JOB_DIR / done["output_path"]
        text = done["text"] or ""
        check_text = check["transcript"] if check else None
        wer = check["wer"] if check else None
    else:
        path = _local_audio(str(item.audio), work)
        text = done["transcript"] or ""
        check_text, wer = item.reference_text, done["wer"]
    measures = measure_clip(path)
    duration = done["duration_s"] or measures.duration_s
    chars = len(text.strip())
    return DatasetRow(
        id=item.item_id, text=text, audio_file=str(path), audio_path=f"{item.item_id}{path.suffix}",
        duration=duration, sample_rate=done["sample_rate"], model=item.model, engine=done["engine"],
        params=done["params"], key=source.key or "",
        chars_per_s=round(chars / duration, 4) if duration else None,
        s_per_char=round(duration / chars, 5) if chars else None,
        leading_silence_s=measures.leading_silence_s, trailing_silence_s=measures.trailing_silence_s,
        peak_dbfs=finite_or_none(measures.peak_dbfs), clipped_fraction=measures.clipped_fraction,
        lufs=finite_or_none(measures.lufs), wer=wer, check_text=check_text,
    )


def _failed_row(source: SourceRow, reason: str) -> DatasetRow:
    item = source.item
    params = {k: v for k, v in item.params.items() if k != "text"}
    return DatasetRow(
        id=item.item_id, text=str(item.params.get("text", "")), audio_file=None, audio_path=None,
        duration=None, sample_rate=None, model=item.model, engine=None,
        params=json.dumps(params, sort_keys=True, default=str), key=source.key or "", failure=reason,
    )


def _roundtrip(spec: DatasetSpec, made: dict[str, dict[str, Any]], work: Path, settings: Settings,
               progress: ProgressBoard | None, client_factory) -> tuple[dict[str, dict[str, Any]], RunSummary]:
    """Transcribe this build's new clips back (ASR job with the texts as references); rows by id."""
    rows = [r for r in made.values() if r["status"] == "done"]
    manifest = pa.table({
        "id": [r["id"] for r in rows],
        "audio": [str((work / JOB_DIR / r["output_path"]).resolve()) for r in rows],
        "reference_text": [r["text"] for r in rows],
    })
    target = work / "roundtrip.parquet"
    pq.write_table(manifest, target)
    request = JobRequest("asr", str(target), work / ROUNDTRIP_DIR,
                         defaults=RunDefaults(model=spec.asr_model, params={"language": spec.language}))
    summary = _run(request, settings, progress, client_factory)
    table = read_results(work / ROUNDTRIP_DIR)
    done = table.filter(pc.equal(table["status"], "done")).to_pylist()
    return {r["id"]: r for r in done}, summary


def _make_rows(spec: DatasetSpec, plan: BuildPlan, manifest: str, work: Path, settings: Settings,
               progress: ProgressBoard | None, client_factory) -> tuple[dict[int, DatasetRow], int, float | None]:
    """Send the planned rows through the job (and the round trip); their rows by position, billed, cost."""
    positions = plan.to_make
    delta = write_delta_manifest(manifest, positions, work / "delta.parquet")
    output = spec.output if spec.kind == "tts" else OutputSpec()
    request = JobRequest(spec.kind, delta, work / JOB_DIR, defaults=run_defaults(spec), output=output)
    summary = _run(request, settings, progress, client_factory)
    billed = summary.done
    results = read_results(work / JOB_DIR)
    by_id = {r["id"]: r for r in results.to_pylist()}
    made: dict[str, dict[str, Any]] = {}
    for position in positions:
        source = plan.rows[position]
        row = by_id.get(source.item.item_id)
        if row is not None and row["key"] == source.key:
            made[source.item.item_id] = row
    checks: dict[str, dict[str, Any]] = {}
    asr_summary = None
    if spec.kind == "tts" and spec.qc.roundtrip and any(r["status"] == "done" for r in made.values()):
        checks, asr_summary = _roundtrip(spec, made, work, settings, progress, client_factory)
        billed += asr_summary.done
    rows: dict[int, DatasetRow] = {}
    for position in positions:
        source = plan.rows[position]
        row = made.get(source.item.item_id)
        if row is None:
            rows[position] = _failed_row(source, "failed: the job produced no row for it; rerun the build")
        elif row["status"] != "done":
            rows[position] = _failed_row(source, _failure_text(row))
        else:
            rows[position] = _new_row(spec, source, row, work, checks.get(source.item.item_id))
    return rows, billed, _cost(spec, rows.values(), summary, asr_summary)


def _cost(spec: DatasetSpec, rows, summary: RunSummary, asr_summary: RunSummary | None) -> float | None:
    prices = _price_table()
    if prices is None:
        return None
    made = [r for r in rows if r.failure is None]
    minutes = sum(r.duration or 0 for r in made) / 60
    chars = sum(len(r.text) for r in made) if spec.kind == "tts" else 0
    main = prices.cost(spec.model, chars=chars, minutes=0 if spec.kind == "tts" else minutes, requests=summary.done)
    parts = [main]
    if asr_summary is not None:
        parts.append(prices.cost(spec.asr_model, chars=0, minutes=minutes, requests=asr_summary.done))
    return None if any(p is None for p in parts) else round(sum(parts), 6)


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


@dataclass
class Candidates:
    """Every row of the new version before the verdict: carried rows in the previous version's order, then
    the rows made now. ``meta`` (no audio) is what is judged; ``chunks`` streams the full rows, a previous
    file at a time, so a dataset never has to fit in memory."""

    store: DatasetStore
    previous_id: str | None
    #: (row index in the previous version, the id the source gives it now), ascending
    carried: list[tuple[int, str]]
    made: list[DatasetRow]
    meta: pa.Table

    def chunks(self, reasons: pa.Array) -> Iterator[pa.Table]:
        """Full rows in ``meta`` order, each chunk with its slice of ``reasons`` (null: accepted)."""
        cursor, offset = 0, 0
        for entry in self.store.parquet_files(self.previous_id) if self.previous_id else []:
            end, first = offset + (entry.rows or 0), cursor
            while cursor < len(self.carried) and self.carried[cursor][0] < end:
                cursor += 1
            if cursor > first:
                picked = self.carried[first:cursor]
                table = self.store.read_file(self.previous_id, entry).take([i - offset for i, _ in picked])
                table = _set(table, "id", pa.array([row_id for _, row_id in picked], pa.string()))
                yield _set(table, "reasons", reasons.slice(first, cursor - first))
            offset = end
        for start in range(0, len(self.made), MADE_CHUNK_ROWS):
            table = rows_table(self.made[start:start + MADE_CHUNK_ROWS])  # reads these clips from disk
            yield _set(table, "reasons", reasons.slice(len(self.carried) + start, table.num_rows))


def _candidates(store: DatasetStore, previous_id: str | None, previous: pa.Table | None, plan: BuildPlan,
                made: dict[int, DatasetRow]) -> Candidates:
    carried = sorted((index, plan.rows[position].item.item_id) for position, index in plan.carried.items())
    made_rows = [made[p] for p in sorted(made)]
    parts = [rows_table(made_rows, with_audio=False)]
    if carried:
        kept = previous.take([i for i, _ in carried])
        parts.insert(0, _set(kept, "id", pa.array([row_id for _, row_id in carried], pa.string())))
    return Candidates(store, previous_id, carried, made_rows, pa.concat_tables(parts))


def _unchanged(plan: BuildPlan, previous: VersionManifest, spec: DatasetSpec) -> bool:
    """Whether a build would publish what ``latest`` holds: no row added, changed or removed, same spec."""
    diff = plan.diff
    same_rows = diff.added == diff.changed == diff.removed == 0 and not plan.to_make
    return same_rows and json.loads(json.dumps(spec.to_dict())) == previous.spec


def build_dataset(
    spec: DatasetSpec,
    settings: Settings,
    *,
    progress: ProgressBoard | None = None,
    client_factory: Callable[[Settings], Any] | None = None,
) -> BuildReport:
    """Build, verify and publish a new version of ``spec``'s dataset; the report of what happened.

    One build per work folder at a time (a lock; the deployment also runs one at a time).
    """
    store = DatasetStore(spec.dest)
    work = work_dir_for(spec, store, settings)
    work.mkdir(parents=True, exist_ok=True)
    lock = Ledger(work)  # the ledger's lock file: a second build of the same dataset is refused, not interleaved
    lock.lock()
    try:
        return _build(spec, settings, store, work, progress, client_factory)
    finally:
        lock.close()


def _build(spec: DatasetSpec, settings: Settings, store: DatasetStore, work: Path, progress: ProgressBoard | None,
           client_factory: Callable[[Settings], Any] | None) -> BuildReport:
    started = time.monotonic()
    store.sweep_unpublished()
    previous_id = store.latest_id()
    previous = store.read_rows(previous_id, META_COLUMNS) if previous_id else None
    manifest = source_manifest(spec, work)
    duplicates = find_duplicate_ids(manifest, spec.kind)
    if duplicates:
        raise ConfigError(f"source {spec.source!r} has duplicate ids: {', '.join(map(repr, duplicates[:10]))}; "
                          "ids must be unique in a dataset")
    rows = list(read_source_rows(spec, manifest))
    plan = plan_build(rows, previous)
    planned = time.monotonic()
    if previous_id and _unchanged(plan, store.manifest(previous_id), spec):
        prev = store.manifest(previous_id)
        return BuildReport(
            name=spec.name, dest=spec.dest, version=previous_id, previous=prev.previous, rows=prev.rows,
            rejected=prev.rejected, hours=prev.hours, diff=plan.diff, made=0, carried=len(plan.carried),
            billed_requests=0, cost=None, elapsed_s=round(time.monotonic() - started, 3),
            filters_effect=prev.filters_effect, published=False,
        )
    made: dict[int, DatasetRow] = {r.position: _failed_row(r, r.problem) for r in rows if r.problem}
    billed, cost = 0, None
    if plan.to_make:
        produced, billed, cost = _make_rows(spec, plan, manifest, work, settings, progress, client_factory)
        made.update(produced)
    produced_at = time.monotonic()
    candidates = _candidates(store, previous_id, previous, plan, made)
    meta = candidates.meta
    verdict = judge(meta, spec.qc)
    mask = pa.array(verdict.accepted)
    accepted_rows = int(verdict.accepted.sum())
    reasons = pa.array([r or None for r in verdict.reasons], pa.list_(pa.string()))
    effect = reasons_effect(verdict)
    hours = round(float(pc.sum(meta.filter(mask)["duration"]).as_py() or 0.0) / 3600, 6)
    version_id = store.next_version_id()
    manifest_record = VersionManifest(
        id=version_id, name=spec.name, created_at=utc_now(), previous=previous_id, rows=accepted_rows,
        rejected=meta.num_rows - accepted_rows, hours=hours, diff=plan.diff, filters_effect=effect,
        models=sorted(set(filter(None, meta["model"].to_pylist()))),
        engines=sorted(set(filter(None, meta["engine"].to_pylist()))),
        billed_requests=billed, cost=cost, spec=spec.to_dict(),
    )
    new_ids = frozenset(made[p].id for p in made if made[p].failure is None)
    card = render_card(manifest_record, s_per_char_bounds=verdict.s_per_char_bounds)
    version = PreparedVersion(lambda: candidates.chunks(reasons), accepted_rows, manifest_record, card, new_ids)
    store.publish(version, spec.shard_rows)
    removed = store.apply_retention(spec.keep_versions)
    return BuildReport(
        name=spec.name, dest=spec.dest, version=version_id, previous=previous_id, rows=accepted_rows,
        rejected=meta.num_rows - accepted_rows, hours=hours, diff=plan.diff, made=len(plan.to_make),
        carried=len(plan.carried), billed_requests=billed, cost=cost, elapsed_s=round(time.monotonic() - started, 3),
        filters_effect=effect, removed_versions=tuple(removed),
        phases={"plan": round(planned - started, 3), "make": round(produced_at - planned, 3),
                "publish": round(time.monotonic() - produced_at, 3)},
    )


__all__ = ["BuildReport", "BuildStopped", "build_dataset", "work_dir_for"]
