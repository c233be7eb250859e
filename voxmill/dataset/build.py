"""A dataset build from end to end, without Prefect: plan against ``latest``, make only what is new or
changed through the ordinary job engine, measure, judge, publish a verified version.

The work folder holds ordinary job output directories (``made/``, and ``roundtrip/`` for the TTS round
trip), each with its ledger: a build killed at any point and rerun plans the same rows and the ledgers
skip what was already paid for. Carried-over rows come from the previous version's own Parquet rows.

TTS rows keep their *master*: the clip as the API returned it (the job writes it as generated, 16-bit WAV).
The dataset's audio is derived from it locally by the spec's ``[output]``, so a new format, rate or loudness
re-derives carried rows without a call (see :mod:`voxmill.dataset.incremental` for every path a row takes).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxmill.audio.formats import audio_format
from voxmill.audio.measure import measure_file
from voxmill.audio.transcode import OutputSpec, transcode_file
from voxmill.batch import output_stem
from voxmill.dataset.card import card_tables, markdown_table, render_card
from voxmill.dataset.dedup import AUDIO_REASON, audio_duplicates, drop_text_duplicates, text_duplicates
from voxmill.dataset.gates import PublishRefused, check_gates
from voxmill.dataset.incremental import (
    BuildPlan,
    SourceRow,
    plan_build,
    read_source_rows,
    run_defaults,
    source_manifest,
    write_delta_manifest,
)
from voxmill.dataset.plots import render_plots
from voxmill.dataset.publish import BuildDiff, DatasetStore, PreparedVersion, VersionManifest
from voxmill.dataset.qc import Verdict, finite_or_none, judge, measure_clip, reasons_effect
from voxmill.dataset.rows import META_COLUMNS, DatasetRow, rows_table
from voxmill.dataset.spec import DatasetSpec
from voxmill.dataset.stats import dataset_stats, rows_frame
from voxmill.errors import ConfigError, VoxmillError
from voxmill.estimate import PriceTable
from voxmill.identity import content_hash, file_hash
from voxmill.jobs import JobRequest, RunSummary, run_job
from voxmill.ledger import Ledger, read_results, utc_now
from voxmill.manifests import RunDefaults, find_duplicate_ids, open_binary
from voxmill.progress import ProgressBoard
from voxmill.settings import Settings

#: the job that makes new rows (TTS: master clips, written as the API returned them)
JOB_DIR = "made"
#: audio derived from masters by the spec's [output], and the carried rows' clips written out to work on
DERIVED_DIR = "derived"
CARRIED_DIR = "carried"
#: threads deriving and measuring clips (ffmpeg subprocesses and numpy release the GIL)
DERIVE_WORKERS = max(2, os.cpu_count() or 2)
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
    #: publish gates the version failed: it was refused (``published`` False), or published with ``force``
    gate_failures: tuple[str, ...] = ()
    #: carried rows whose audio was derived again from their master (a new [output]), and carried rows that
    #: were transcribed for the round trip (no WER yet)
    rederived: int = 0
    transcribed: int = 0
    #: the card's tables (title → rows) and its plots (path in the version → URL or local path)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)

    def card_markdown(self) -> str:
        """The card's tables and links to its plots, as Markdown (the flow's artifact)."""
        lines = [f"# {self.headline()}", ""]
        for title, rows in self.tables.items():
            lines += [f"## {title}", "", *markdown_table(rows), ""]
        if self.images:
            lines += ["## Plots", "", *(f"- [{Path(p).stem}]({url})" for p, url in self.images.items()), ""]
        return "\n".join(lines)

    def headline(self) -> str:
        """One line for logs and the CLI."""
        d = self.diff
        if not self.published and not self.gate_failures:
            return f"{self.name}: nothing changed since {self.version} (same rows, same spec); latest stays"
        line = (f"{self.name} {self.version}: {self.rows} rows ({self.hours:.3f} h), {self.rejected} rejected; "
                f"added {d.added}, changed {d.changed}, removed {d.removed}, unchanged {d.unchanged}; "
                f"{self.billed_requests} billed requests, {self.carried} rows carried over "
                f"({self.rederived} re-derived locally, {self.transcribed} transcribed), in {self.elapsed_s:.1f}s")
        if self.gate_failures and not self.published:
            return f"{line}; NOT PUBLISHED, failed gates: {'; '.join(self.gate_failures)}"
        if self.gate_failures:
            return f"{line}; published with --force despite: {'; '.join(self.gate_failures)}"
        return line

    def summary_table(self) -> list[dict[str, Any]]:
        """Measure/value rows (the flow's summary artifact)."""
        d = self.diff
        return [{"measure": name, "value": value} for name, value in (
            ("version", self.version), ("previous", self.previous or "-"), ("added", d.added),
            ("changed", d.changed), ("removed", d.removed), ("unchanged", d.unchanged), ("rows", self.rows),
            ("rejected", self.rejected), ("hours", round(self.hours, 4)), ("billed requests", self.billed_requests),
            ("cost", "unknown" if self.cost is None else round(self.cost, 4)), ("destination", self.dest),
            ("published", "yes" if self.published else "no"),
            ("failed gates", "; ".join(self.gate_failures) or "none"),
        )]


def work_dir_for(spec: DatasetSpec, store: DatasetStore, settings: Settings) -> Path:
    """The spec's work folder, ``DEST/.work`` for a local destination, else under the cache folder."""
    if spec.work_dir:
        return Path(spec.work_dir)
    if store.local:
        return Path(store.root) / ".work"
    digest = content_hash(spec.dest)[:12]
    return Path(settings.cache_dir) / "datasets" / f"{spec.name}-{digest}"


def price_table() -> PriceTable | None:
    """The price table VOXMILL_PRICES names, or None."""
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


def is_master_output(output: OutputSpec) -> bool:
    """Whether ``output`` keeps clips as generated (WAV, no change): the audio is then its own master."""
    return output == OutputSpec()


def _derive(spec: DatasetSpec, master: Path, work: Path, row_id: str) -> tuple[Path, Path | None, int]:
    """The row's audio made from its master by the spec's [output] (no call): (audio, master or None when the
    audio is the master, sample rate)."""
    if is_master_output(spec.output):
        return master, None, measure_file(master, loudness=False).sample_rate
    if not master.is_file():
        raise ConfigError(f"{row_id}: its master clip {master} is missing; rerun the build")
    target = work / DERIVED_DIR / f"{output_stem(row_id)}.{audio_format(spec.output.format).extension}"
    info = transcode_file(master, "wav", target, spec.output, keep_source=True)
    return target, master, info.sample_rate


def _measured(row: DatasetRow, path: Path, sample_rate: int) -> DatasetRow:
    """``row`` with its audio at ``path`` and every QC measure taken from that clip."""
    measures = measure_clip(path)
    duration = measures.duration_s
    chars = len(row.text.strip())
    return replace(
        row, audio_file=str(path), audio_path=f"{row.id}{path.suffix}", duration=duration, sample_rate=sample_rate,
        chars_per_s=round(chars / duration, 4) if duration else None,
        s_per_char=round(duration / chars, 5) if chars else None,
        leading_silence_s=measures.leading_silence_s, trailing_silence_s=measures.trailing_silence_s,
        peak_dbfs=finite_or_none(measures.peak_dbfs), clipped_fraction=measures.clipped_fraction,
        lufs=finite_or_none(measures.lufs), audio_sha256=file_hash(path),
    )


def _new_row(spec: DatasetSpec, source: SourceRow, done: dict[str, Any], work: Path) -> DatasetRow:
    """A row made in this build, measured (TTS: its audio derived from the master the job wrote)."""
    item = source.item
    base = DatasetRow(
        id=item.item_id, text="", audio_file=None, audio_path=None, duration=None, sample_rate=None,
        model=item.model, engine=done["engine"], params=done["params"], key=source.key or "",
    )
    if spec.kind == "tts":
        path, master, rate = _derive(spec, work / JOB_DIR / done["output_path"], work, item.item_id)
        row = replace(base, text=done["text"] or "", master_file=None if master is None else str(master))
        return _measured(row, path, rate)
    path = _local_audio(str(item.audio), work)
    row = replace(base, text=done["transcript"] or "", check_text=item.reference_text, wer=done["wer"])
    row = _measured(row, path, done["sample_rate"])
    return replace(row, duration=done["duration_s"] or row.duration)


def _failed_row(source: SourceRow, reason: str) -> DatasetRow:
    item = source.item
    params = {k: v for k, v in item.params.items() if k != "text"}
    return DatasetRow(
        id=item.item_id, text=str(item.params.get("text", "")), audio_file=None, audio_path=None,
        duration=None, sample_rate=None, model=item.model, engine=None,
        params=json.dumps(params, sort_keys=True, default=str), key=source.key or "", failure=reason,
    )


def _roundtrip(spec: DatasetSpec, rows: list[DatasetRow], work: Path, settings: Settings,
               progress: ProgressBoard | None, client_factory) -> tuple[dict[str, dict[str, Any]], RunSummary]:
    """Transcribe clips back (an ASR job of their masters, the texts as references); its rows by id."""
    manifest = pa.table({
        "id": [r.id for r in rows],
        "audio": [str(Path(r.master_file or r.audio_file or "").resolve()) for r in rows],
        "reference_text": [r.text for r in rows],
    })
    target = work / "roundtrip.parquet"
    pq.write_table(manifest, target)
    request = JobRequest("asr", str(target), work / ROUNDTRIP_DIR,
                         defaults=RunDefaults(model=spec.asr_model, params={"language": spec.language}))
    summary = _run(request, settings, progress, client_factory)
    table = read_results(work / ROUNDTRIP_DIR)
    done = table.filter(pc.equal(table["status"], "done")).to_pylist()
    return {r["id"]: r for r in done}, summary


def _generate(spec: DatasetSpec, plan: BuildPlan, manifest: str, work: Path, settings: Settings,
              progress: ProgressBoard | None, client_factory) -> tuple[dict[int, DatasetRow], RunSummary]:
    """Send the rows to generate through the job; their rows by position (measured, no WER yet), summary."""
    positions = plan.to_make
    delta = write_delta_manifest(manifest, positions, work / "delta.parquet")
    # TTS: the job keeps the master (as generated); the spec's [output] is derived from it locally
    request = JobRequest(spec.kind, delta, work / JOB_DIR, defaults=run_defaults(spec), output=OutputSpec())
    summary = _run(request, settings, progress, client_factory)
    by_id = {r["id"]: r for r in read_results(work / JOB_DIR).to_pylist()}
    rows: dict[int, DatasetRow] = {}
    done: list[tuple[int, dict[str, Any]]] = []
    for position in positions:
        source = plan.rows[position]
        row = by_id.get(source.item.item_id)
        if row is None or row["key"] != source.key:
            rows[position] = _failed_row(source, "failed: the job produced no row for it; rerun the build")
        elif row["status"] != "done":
            rows[position] = _failed_row(source, _failure_text(row))
        else:
            done.append((position, row))
    # deriving (ffmpeg) and measuring run in threads: the work is in subprocesses and numpy
    with ThreadPoolExecutor(DERIVE_WORKERS) as pool:
        made = pool.map(lambda pair: _new_row(spec, plan.rows[pair[0]], pair[1], work), done)
        rows.update(zip((position for position, _ in done), made, strict=True))
    return rows, summary


def _previous_rows(store: DatasetStore, version_id: str, indices: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Full rows (audio and master included) of a version at ``indices`` (ascending), a file at a time."""
    wanted, offset = sorted(indices), 0
    cursor = 0
    for entry in store.parquet_files(version_id):
        end, first = offset + (entry.rows or 0), cursor
        while cursor < len(wanted) and wanted[cursor] < end:
            cursor += 1
        if cursor > first:
            picked = wanted[first:cursor]
            table = store.read_file(version_id, entry).take([i - offset for i in picked])
            yield from zip(picked, table.to_pylist(), strict=True)
        offset = end


def _refresh_carried(spec: DatasetSpec, store: DatasetStore, previous_id: str, plan: BuildPlan,
                     work: Path) -> dict[int, DatasetRow]:
    """Carried rows that change in this build, by position: audio re-derived from the master (a new [output];
    no call) and/or written out for the round trip's ASR. Their clips are written under ``WORK/carried``."""
    by_index: dict[int, list[int]] = {}
    for position in plan.refreshed:
        by_index.setdefault(plan.carried[position], []).append(position)
    folder = work / CARRIED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fields = set(DatasetRow.__dataclass_fields__) - {"audio_file", "audio_path", "master_file"}
    rows: dict[int, DatasetRow] = {}
    for index, previous in _previous_rows(store, previous_id, list(by_index)):
        audio = previous["audio"]
        for position in by_index[index]:
            row_id = plan.rows[position].item.item_id
            stem = output_stem(row_id)
            # scratch copies (the version keeps the bytes): no fsync, a rerun writes them again
            audio_file = folder / f"{stem}{Path(audio['path'] or '.wav').suffix}"
            audio_file.write_bytes(audio["bytes"])
            master_file = None
            if previous["master"] is not None:
                master_file = folder / f"{stem}.master.wav"
                master_file.write_bytes(previous["master"])
            rows[position] = DatasetRow(**{**{k: previous[k] for k in fields}, "id": row_id},
                                        audio_file=str(audio_file), audio_path=f"{row_id}{audio_file.suffix}",
                                        master_file=None if master_file is None else str(master_file))

    def rederived(position: int) -> DatasetRow:
        # the planner sends a row here only when its master exists: a master column, or audio as generated
        row = rows[position]
        path, master, rate = _derive(spec, Path(row.master_file or row.audio_file or ""), work, row.id)
        return _measured(replace(row, master_file=None if master is None else str(master)), path, rate)

    with ThreadPoolExecutor(DERIVE_WORKERS) as pool:
        rows.update(zip(plan.rederive, pool.map(rederived, plan.rederive), strict=True))
    return rows


def _make_rows(spec: DatasetSpec, plan: BuildPlan, manifest: str, work: Path, store: DatasetStore,
               previous_id: str | None, settings: Settings, progress: ProgressBoard | None,
               client_factory) -> tuple[dict[int, DatasetRow], int, float | None]:
    """Rows this build makes or changes, by position: generated (job), re-derived or transcribed carried rows,
    each with its round trip when the spec asks; billed requests; cost."""
    rows: dict[int, DatasetRow] = {}
    summary = asr_summary = None
    if plan.to_make:
        rows, summary = _generate(spec, plan, manifest, work, settings, progress, client_factory)
    if plan.refreshed and previous_id is not None:
        rows.update(_refresh_carried(spec, store, previous_id, plan, work))
    if spec.kind == "tts" and spec.qc.roundtrip:
        needs = [p for p in plan.to_make if rows[p].failure is None] + plan.asr
        if needs:
            checks, asr_summary = _roundtrip(spec, [rows[p] for p in needs], work, settings, progress,
                                             client_factory)
            for position in needs:
                check = checks.get(rows[position].id)
                if check is not None:
                    rows[position] = replace(rows[position], wer=check["wer"], check_text=check["transcript"])
    billed = (summary.done if summary else 0) + (asr_summary.done if asr_summary else 0)
    generated = [rows[p] for p in plan.to_make if rows[p].failure is None]
    transcribed = [rows[p] for p in plan.asr] if asr_summary else []
    return rows, billed, _cost(spec, generated, transcribed, summary, asr_summary)


def _cost(spec: DatasetSpec, generated: list[DatasetRow], transcribed: list[DatasetRow], summary: RunSummary | None,
          asr_summary: RunSummary | None) -> float | None:
    """What this build's calls cost by the price table (VOXMILL_PRICES); None without one."""
    prices = price_table()
    if prices is None:
        return None
    minutes = sum(r.duration or 0 for r in generated) / 60
    parts = []
    if summary is not None:
        chars = sum(len(r.text) for r in generated) if spec.kind == "tts" else 0
        parts.append(prices.cost(spec.model, chars=chars, minutes=0 if spec.kind == "tts" else minutes,
                                 requests=summary.done))
    if asr_summary is not None:
        asr_minutes = minutes + sum(r.duration or 0 for r in transcribed) / 60
        parts.append(prices.cost(spec.asr_model, chars=0, minutes=asr_minutes, requests=asr_summary.done))
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

    def chunks(self, columns: dict[str, pa.Array]) -> Iterator[pa.Table]:
        """Full rows in ``meta`` order, each chunk with its slice of the judged ``columns`` (``reasons``: null
        when accepted; ``duplicate_of``)."""
        cursor, offset = 0, 0
        for entry in self.store.parquet_files(self.previous_id) if self.previous_id else []:
            end, first = offset + (entry.rows or 0), cursor
            while cursor < len(self.carried) and self.carried[cursor][0] < end:
                cursor += 1
            if cursor > first:
                picked = self.carried[first:cursor]
                table = self.store.read_file(self.previous_id, entry).take([i - offset for i, _ in picked])
                table = _set(table, "id", pa.array([row_id for _, row_id in picked], pa.string()))
                for name, values in columns.items():
                    table = _set(table, name, values.slice(first, cursor - first))
                yield table
            offset = end
        for start in range(0, len(self.made), MADE_CHUNK_ROWS):
            table = rows_table(self.made[start:start + MADE_CHUNK_ROWS])  # reads these clips from disk
            for name, values in columns.items():
                table = _set(table, name, values.slice(len(self.carried) + start, table.num_rows))
            yield table


def _candidates(store: DatasetStore, previous_id: str | None, previous: pa.Table | None, plan: BuildPlan,
                made: dict[int, DatasetRow]) -> Candidates:
    carried = sorted((index, plan.rows[position].item.item_id) for position, index in plan.carried.items()
                     if position not in made)
    made_rows = [made[p] for p in sorted(made)]
    parts = [rows_table(made_rows, with_audio=False)]
    if carried:
        kept = previous.take([i for i, _ in carried])
        parts.insert(0, _set(kept, "id", pa.array([row_id for _, row_id in carried], pa.string())))
    return Candidates(store, previous_id, carried, made_rows, pa.concat_tables(parts))


def _judge(spec: DatasetSpec, meta: pa.Table, text_duplicates: dict[str, str]
           ) -> tuple[Verdict, pa.Array, dict[str, int]]:
    """QC's verdict with [dedup] applied: the verdict (dropped audio duplicates get their reason), the
    ``duplicate_of`` column (flagged rows), and how many duplicates of each kind were found."""
    verdict = judge(meta, spec.qc)
    ids = meta["id"].to_pylist()
    duplicate_of: list[str | None] = [None] * len(ids)
    if spec.dedup.text == "flag":
        for index, row_id in enumerate(ids):
            duplicate_of[index] = text_duplicates.get(row_id)
    audio = audio_duplicates(meta) if spec.dedup.audio != "off" else {}
    for index, first in audio.items():
        if spec.dedup.audio == "drop":
            verdict.reasons[index].append(AUDIO_REASON.format(first=first))
        else:
            duplicate_of[index] = duplicate_of[index] or first
    counts = {"text": len(text_duplicates), "audio": len(audio)}
    return verdict, pa.array(duplicate_of, pa.string()), counts


def _spec_dict(spec: DatasetSpec) -> dict[str, Any]:
    """The spec as its version manifest stores it (JSON round trip: tuples become lists)."""
    return json.loads(json.dumps(spec.to_dict()))


#: spec sections that change no row (the publish gates judge a version; they do not make one)
_NOT_CONTENT = ("publish",)


def spec_changes(spec: DatasetSpec, previous: VersionManifest | None) -> list[str]:
    """The spec sections that differ from the previous version's (``output``, ``qc``, ``model``…)."""
    if previous is None:
        return []
    now = _spec_dict(spec)
    # a section newer than the previous version's code counts as its default there
    defaults = _spec_dict(DatasetSpec(name="", kind=spec.kind, source="", dest="", model=spec.model))
    return sorted(k for k in set(now) | set(previous.spec)
                  if k not in _NOT_CONTENT and now.get(k) != previous.spec.get(k, defaults.get(k)))


@dataclass
class PlannedBuild:
    """Everything a build decides before it sends anything: the previous version, the source rows and what
    happens to each (:class:`~voxmill.dataset.incremental.BuildPlan`), and which spec sections changed."""

    previous_id: str | None
    previous_manifest: VersionManifest | None
    #: the previous version's rows without audio
    previous: pa.Table | None
    #: the source as a manifest path
    manifest: str
    rows: list[SourceRow]
    plan: BuildPlan
    changes: list[str]
    #: the output changed but the previous version kept no master clips (older code): carried rows are made again
    regenerated_for_output: bool = False
    #: id → id of the earlier source row with the same normalised text ([dedup] text flag or drop)
    text_duplicates: dict[str, str] = field(default_factory=dict)

    @property
    def unchanged(self) -> bool:
        """Whether a build would publish what ``latest`` holds: no row added, changed or removed, same spec."""
        diff, plan = self.plan.diff, self.plan
        same_rows = diff.added == diff.changed == diff.removed == 0 and not plan.to_make and not plan.refreshed
        return self.previous_id is not None and same_rows and not self.changes


def plan_dataset(spec: DatasetSpec, store: DatasetStore, work: Path, *, remake_rejected: bool = False
                 ) -> PlannedBuild:
    """Plan a build of ``spec`` against ``store``'s latest version; sends nothing."""
    previous_id = store.latest_id()
    previous_manifest = store.manifest(previous_id) if previous_id else None
    previous = store.read_rows(previous_id, META_COLUMNS) if previous_id else None
    manifest = source_manifest(spec, work)
    same_ids = find_duplicate_ids(manifest, spec.kind)
    if same_ids:
        raise ConfigError(f"source {spec.source!r} has duplicate ids: {', '.join(map(repr, same_ids[:10]))}; "
                          "ids must be unique in a dataset")
    rows = list(read_source_rows(spec, manifest))
    same_texts = text_duplicates(rows) if spec.dedup.text != "off" else {}
    if spec.dedup.text == "drop":
        rows = drop_text_duplicates(rows, same_texts)
    changes = spec_changes(spec, previous_manifest)
    rederive = regenerate = False
    if spec.kind == "tts" and "output" in changes and previous_id is not None and previous_manifest is not None:
        old_output = OutputSpec(**previous_manifest.spec["output"])
        masters = is_master_output(old_output) or store.has_column(previous_id, "master")
        rederive, regenerate = masters, not masters
    need_wer = spec.kind == "tts" and spec.qc.roundtrip
    plan = plan_build(rows, previous, rederive=rederive, regenerate=regenerate, need_wer=need_wer,
                      remake_rejected=remake_rejected)
    return PlannedBuild(previous_id, previous_manifest, previous, manifest, rows, plan, changes, regenerate,
                        {rows[p].item.item_id: first for p, first in same_texts.items()})


def build_dataset(
    spec: DatasetSpec,
    settings: Settings,
    *,
    progress: ProgressBoard | None = None,
    client_factory: Callable[[Settings], Any] | None = None,
    force: bool = False,
    remake_rejected: bool = False,
) -> BuildReport:
    """Build, verify and publish a new version of ``spec``'s dataset; the report of what happened.

    One build per work folder at a time (a lock; the deployment also runs one at a time). A version that fails
    the spec's publish gates is written but not published: PublishRefused (carrying the report), unless
    ``force``. ``remake_rejected`` (after fixing a broken engine): rows the latest version rejected are made
    again, and the work folder's earlier results are not reused for any row made in this build (paid again).
    """
    store = DatasetStore(spec.dest)
    work = work_dir_for(spec, store, settings)
    work.mkdir(parents=True, exist_ok=True)
    lock = Ledger(work)  # the ledger's lock file: a second build of the same dataset is refused, not interleaved
    lock.lock()
    try:
        if remake_rejected:
            for folder in (JOB_DIR, ROUNDTRIP_DIR):
                shutil.rmtree(work / folder, ignore_errors=True)
        return _build(spec, settings, store, work, progress, client_factory, force, remake_rejected)
    finally:
        lock.close()


def _build(spec: DatasetSpec, settings: Settings, store: DatasetStore, work: Path, progress: ProgressBoard | None,
           client_factory: Callable[[Settings], Any] | None, force: bool, remake_rejected: bool) -> BuildReport:
    started = time.monotonic()
    store.sweep_unpublished()
    planned_build = plan_dataset(spec, store, work, remake_rejected=remake_rejected)
    previous_id, previous, plan = planned_build.previous_id, planned_build.previous, planned_build.plan
    rows = planned_build.rows
    planned = time.monotonic()
    if planned_build.unchanged:
        prev = planned_build.previous_manifest
        assert prev is not None and previous_id is not None
        elapsed = round(time.monotonic() - started, 3)
        return BuildReport(
            name=spec.name, dest=spec.dest, version=previous_id, previous=prev.previous, rows=prev.rows,
            rejected=prev.rejected, hours=prev.hours, diff=plan.diff, made=0, carried=len(plan.carried),
            billed_requests=0, cost=None, elapsed_s=elapsed, filters_effect=prev.filters_effect, published=False,
            phases={"plan": round(planned - started, 3), "make": 0.0, "publish": 0.0},
        )
    made: dict[int, DatasetRow] = {r.position: _failed_row(r, r.problem) for r in rows if r.problem}
    billed, cost = 0, None
    if plan.to_make or plan.refreshed:
        produced, billed, cost = _make_rows(spec, plan, planned_build.manifest, work, store, previous_id, settings,
                                            progress, client_factory)
        made.update(produced)
    produced_at = time.monotonic()
    candidates = _candidates(store, previous_id, previous, plan, made)
    verdict, duplicate_of, duplicates = _judge(spec, candidates.meta, planned_build.text_duplicates)
    meta = _set(candidates.meta, "duplicate_of", duplicate_of)
    mask = pa.array(verdict.accepted)
    accepted_rows = int(verdict.accepted.sum())
    reasons = pa.array([r or None for r in verdict.reasons], pa.list_(pa.string()))
    effect = reasons_effect(verdict)
    hours = round(float(pc.sum(meta.filter(mask)["duration"]).as_py() or 0.0) / 3600, 6)
    mean_wer = pc.mean(meta.filter(mask)["wer"]).as_py()
    # dropped duplicates are deliberate: they do not count against the reject gate
    qc_rejected = sum(1 for r in verdict.reasons if r and not all(x.startswith("duplicate:") for x in r))
    failures = [str(f) for f in check_gates(
        spec.publish, rows=accepted_rows, rejected=qc_rejected, hours=hours, mean_wer=mean_wer,
        previous=planned_build.previous_manifest)]
    stats = dataset_stats(meta, verdict.accepted, language=spec.language, targets=spec.balance.target,
                          tolerance=spec.balance.tolerance)
    version_id = store.next_version_id()
    manifest_record = VersionManifest(
        id=version_id, name=spec.name, created_at=utc_now(), previous=previous_id, rows=accepted_rows,
        rejected=meta.num_rows - accepted_rows, hours=hours, diff=plan.diff, filters_effect=effect,
        models=sorted(set(filter(None, meta["model"].to_pylist()))),
        engines=sorted(set(filter(None, meta["engine"].to_pylist()))),
        billed_requests=billed, cost=cost, spec=spec.to_dict(), gate_failures=failures,
        stats=stats.to_dict(), duplicates=duplicates,
    )
    new_ids = frozenset(made[p].id for p in made if made[p].failure is None)
    plots = render_plots(rows_frame(meta, spec.language)[verdict.accepted], effect)
    card = render_card(manifest_record, s_per_char_bounds=verdict.s_per_char_bounds, plots=list(plots))
    judged = {"reasons": reasons, "duplicate_of": duplicate_of}
    version = PreparedVersion(lambda: candidates.chunks(judged), accepted_rows, manifest_record, card, new_ids,
                              plots)
    publishing = force or not failures
    store.publish(version, spec.shard_rows, move_latest=publishing)
    removed = store.apply_retention(spec.keep_versions) if publishing else []
    report = BuildReport(
        name=spec.name, dest=spec.dest, version=version_id, previous=previous_id, rows=accepted_rows,
        rejected=meta.num_rows - accepted_rows, hours=hours, diff=plan.diff, made=len(plan.to_make),
        carried=len(plan.carried), billed_requests=billed, cost=cost, elapsed_s=round(time.monotonic() - started, 3),
        filters_effect=effect, removed_versions=tuple(removed), rederived=len(plan.rederive),
        transcribed=len(plan.asr),
        phases={"plan": round(planned - started, 3), "make": round(produced_at - planned, 3),
                "publish": round(time.monotonic() - produced_at, 3)},
        published=publishing, gate_failures=tuple(failures),
        tables=card_tables(manifest_record),
        images={path: f"{store.url(version_id)}/{path}" for path in plots},
    )
    if not publishing:
        raise PublishRefused(
            f"{spec.name} {version_id} was NOT published: it failed its publish gates: {'; '.join(failures)}. "
            f"latest stays at {previous_id or '(none)'}; the refused version is at {store.url(version_id)} for "
            "inspection (the next build removes it). Fix the cause, loosen [publish] in the spec, or rerun with "
            "--force to publish it anyway. If the engine was at fault, rerun with --remake-rejected once it is "
            "fixed: its rows are paid for again (a plain rerun reuses what this build paid for).", report)
    return report


__all__ = ["BuildReport", "BuildStopped", "PlannedBuild", "build_dataset", "plan_dataset", "price_table",
           "spec_changes", "work_dir_for"]
