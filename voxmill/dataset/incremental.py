"""Planning a build against the previous version, by content key, and by what the spec changed.

Every source row gets the same key a job would give it (:func:`voxmill.plan.key_of`: model + effective
parameters + text, or the audio file's bytes). A row whose key the previous version holds with audio is
carried over (its audio, measures and id; no request); every other row goes to the build's job, whose
ledger makes a killed build resume without paying twice. Rows gone from the source are simply not planned.

A carried row takes one of these paths, decided by what changed in the spec since the previous version:

- ``carry``: as it is (QC thresholds are re-applied to every row at every build anyway: no call);
- ``rederive``: the output format, rate, channels, bitrate or loudness changed: the new audio is derived
  locally from the row's master clip (what the API returned), no call;
- ``asr``: the round trip is on and the row has no WER yet: one ASR call, no TTS;
- (both, when both changed). Model, voice, parameters or text change the key: the row is ``generate``d.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxmill.audio.formats import audio_format
from voxmill.dataset.publish import BuildDiff
from voxmill.dataset.spec import DatasetSpec
from voxmill.errors import ConfigError
from voxmill.manifests import ManifestReader, RunDefaults, WorkItem, iter_record_batches, manifest_format
from voxmill.plan import key_of


@dataclass(frozen=True)
class SourceRow:
    """A source row as planned: its position, id, key (None when the row cannot be used) and item."""

    position: int
    item: WorkItem
    key: str | None
    problem: str | None = None


@dataclass
class BuildPlan:
    """What a build does with each source row: carry it over (index into the previous rows) or make it."""

    rows: list[SourceRow]
    #: source position → row index in the previous version's table (every row not made anew)
    carried: dict[int, int] = field(default_factory=dict)
    #: source positions to send to the job
    to_make: list[int] = field(default_factory=list)
    diff: BuildDiff = field(default_factory=BuildDiff)
    #: carried positions whose audio is derived again from the master (a new output spec): no call
    rederive: list[int] = field(default_factory=list)
    #: carried positions that need the round trip's ASR (no WER yet): one ASR call each, no TTS
    asr: list[int] = field(default_factory=list)

    @property
    def refreshed(self) -> list[int]:
        """Carried positions whose row changes in this build (rederived and/or transcribed), in order."""
        return sorted(set(self.rederive) | set(self.asr))

    def path_of(self, position: int) -> str:
        """The path of one source row: generate, carry, rederive, asr, rederive+asr or invalid."""
        if position in self.carried:
            parts = [name for name, rows in (("rederive", self.rederive), ("asr", self.asr)) if position in rows]
            return "+".join(parts) or "carry"
        return "invalid" if self.rows[position].key is None else "generate"


def run_defaults(spec: DatasetSpec) -> RunDefaults:
    """The job defaults a spec implies (its model and parameters)."""
    params = dict(spec.params)
    if spec.kind == "asr":
        params.setdefault("language", spec.language)
    return RunDefaults(model=spec.model, params=params)


def _is_manifest(source: str) -> bool:
    try:
        manifest_format(source)
    except ConfigError:
        return False
    return not source.rstrip("/").endswith("/")


def audio_listing(source: str) -> pa.Table:
    """An ASR manifest (``id``, ``audio``) of a folder or glob of audio files; ids are the relative stems."""
    fs, path = fsspec.core.url_to_fs(source)
    pattern = path if any(c in path for c in "*?[") else path.rstrip("/") + "/**"
    base = path.split("*", 1)[0].rstrip("/") if "*" in path else path.rstrip("/")
    files = []
    for found in sorted(fs.glob(pattern)):
        suffix = found.rsplit(".", 1)[-1].lower() if "." in found.rsplit("/", 1)[-1] else ""
        try:
            audio_format(suffix)
        except ConfigError:
            continue
        relative = found[len(base):].lstrip("/") if found.startswith(base) else found.rsplit("/", 1)[-1]
        files.append((relative.rsplit(".", 1)[0], found if fs.protocol in ("file", ("file", "local")) else
                      fs.unstrip_protocol(found)))
    if not files:
        raise ConfigError(f"source {source!r} holds no audio files; point it at a folder, a glob or a manifest")
    return pa.table({"id": [f[0] for f in files], "audio": [f[1] for f in files]})


def source_manifest(spec: DatasetSpec, work: Path) -> str:
    """The spec's source as a manifest: itself, or (asr) a Parquet listing of its folder/glob of audio."""
    if _is_manifest(spec.source):
        return spec.source
    if spec.kind != "asr":
        raise ConfigError(f"source {spec.source!r} is not a manifest (CSV, Parquet, JSONL); tts builds need texts")
    target = work / "source.parquet"
    work.mkdir(parents=True, exist_ok=True)
    pq.write_table(audio_listing(spec.source), target)
    return str(target)


def read_source_rows(spec: DatasetSpec, manifest: str) -> Iterator[SourceRow]:
    """Every source row with its key, in order; unusable rows carry their problem instead."""
    reader = ManifestReader(manifest, spec.kind, run_defaults(spec))
    for position, item in enumerate(reader):
        if item.problem is not None:
            yield SourceRow(position, item, None, f"invalid: {item.problem.message}")
            continue
        try:
            key = key_of(item)
        except (ConfigError, OSError, ValueError) as exc:
            reason = exc.message if isinstance(exc, ConfigError) else str(exc)
            yield SourceRow(position, item, None, f"invalid: {item.label}: cannot read its file: {reason}")
            continue
        if not item.has_own_id:
            item = replace(item, item_id=key[:16])  # as the job names it: by content
        yield SourceRow(position, item, key)


def plan_build(rows: list[SourceRow], previous: pa.Table | None, *, rederive: bool = False,
               regenerate: bool = False, need_wer: bool = False, remake_rejected: bool = False) -> BuildPlan:
    """Carry over rows whose key the previous version holds with audio; plan the rest; count the diff.

    ``previous`` needs the columns ``id``, ``key``, ``failure`` (None: the row has audio) and ``wer``.
    ``rederive``: the output spec changed (carried rows get new audio from their master); ``regenerate``: it
    changed and the previous version kept no master (made by older code): carried rows are made again.
    ``need_wer``: the round trip is on, so carried rows without a WER are transcribed. ``remake_rejected``:
    rows the previous version rejected are made again instead of carried (``previous`` needs ``reasons``).
    """
    plan = BuildPlan(rows)
    prev_wer = previous["wer"].to_pylist() if previous is not None and need_wer else []
    prev_ids: dict[str, str] = {}
    prev_key_index: dict[str, int] = {}
    if previous is not None and previous.num_rows:
        ids = previous["id"].to_pylist()
        keys = previous["key"].to_pylist()
        usable = pc.is_null(previous["failure"]).to_pylist()
        if remake_rejected:
            usable = [ok and not reasons for ok, reasons in zip(usable, previous["reasons"].to_pylist(),
                                                                strict=True)]
        prev_ids = dict(zip(ids, keys, strict=True))
        for index, (key, ok) in enumerate(zip(keys, usable, strict=True)):
            if ok and key is not None and not regenerate:
                prev_key_index.setdefault(key, index)
    added = changed = unchanged = 0
    source_ids: set[str] = set()
    for row in rows:
        row_id = row.item.item_id
        source_ids.add(row_id)
        if row.key is not None and row.key in prev_key_index:
            index = prev_key_index[row.key]
            plan.carried[row.position] = index
            if rederive:
                plan.rederive.append(row.position)
            if need_wer and prev_wer[index] is None:
                plan.asr.append(row.position)
        elif row.key is not None:
            plan.to_make.append(row.position)
        if row_id not in prev_ids:
            added += 1
        elif prev_ids[row_id] != (row.key or ""):  # a bad row is kept with an empty key
            changed += 1
        else:
            unchanged += 1
    removed = sum(1 for i in prev_ids if i not in source_ids)
    plan.diff = BuildDiff(added=added, changed=changed, removed=removed, unchanged=unchanged)
    return plan


def write_delta_manifest(manifest: str, positions: list[int], target: Path) -> str:
    """The source rows at ``positions`` (0-based, in order) as a Parquet manifest for the build's job."""
    wanted = pa.array(positions, pa.int64())
    parts, offset = [], 0
    for batch in iter_record_batches(manifest):
        local = pc.subtract(wanted, offset)
        mask = pc.and_(pc.greater_equal(local, 0), pc.less(local, batch.num_rows))
        picked = pc.filter(local, mask)
        if len(picked):
            parts.append(pa.Table.from_batches([batch]).take(picked))
        offset += batch.num_rows
    table = pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)
    return str(target)


__all__ = [
    "BuildPlan",
    "SourceRow",
    "audio_listing",
    "plan_build",
    "read_source_rows",
    "run_defaults",
    "source_manifest",
    "write_delta_manifest",
]
