"""Versioned, verified publish of a dataset under ``DEST`` (a local folder or any fsspec URL)::

    DEST/versions/<id>/data/train-00000-of-00002.parquet   accepted rows (the HF ``datasets`` layout)
    DEST/versions/<id>/rejects.parquet                      rejected rows, each with every reason
    DEST/versions/<id>/README.md                            the dataset card
    DEST/versions/<id>/SHA256SUMS                           checksums of every file above (sha256sum -c)
    DEST/versions/<id>/manifest.json                        counts, diff, files: written last = complete
    DEST/latest                                             symlink (local) or pointer object naming the version

A version is written (locally into a hidden ``.partial`` folder renamed into place; on object stores in
place, ``manifest.json`` last), read back and verified (row counts, checksums, audio decodes), and only
then does ``latest`` move: an atomic symlink replace locally, one small object PUT elsewhere. A published
version is never written again; a build that dies midway leaves ``latest`` where it was, and the next build
sweeps what it left. Retention removes the oldest versions beyond the spec's count, never ``latest``.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxmill.audio.measure import decode_float32, pcm16_wav_layout
from voxmill.dataset.rows import ROW_SCHEMA, with_hf_features
from voxmill.errors import ConfigError, VoxmillError
from voxmill.identity import content_hash

VERSIONS = "versions"
LATEST = "latest"
MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"
REJECTS = "rejects.parquet"
CARD = "README.md"
DATA = "data"
#: rows per Parquet row group inside a shard (audio makes rows big)
ROW_GROUP_ROWS = 64
#: carried-over rows whose audio is decoded again at verify (their bytes are checksummed anyway)
VERIFY_SAMPLE = 32


class PublishError(VoxmillError):
    """A version failed verification: it is removed and ``latest`` stays where it was."""


@dataclass(frozen=True)
class BuildDiff:
    """What changed against the previous version, by id: added, changed (new content), removed, unchanged."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: its path inside the version folder, size, sha256 and rows (Parquet)."""

    path: str
    bytes: int
    sha256: str
    rows: int | None = None


@dataclass(frozen=True)
class VersionManifest:
    """``manifest.json`` of a version: what it holds and how it came to be."""

    id: str
    name: str
    created_at: str
    previous: str | None
    rows: int
    rejected: int
    hours: float
    diff: BuildDiff
    filters_effect: dict[str, int]
    models: list[str]
    engines: list[str]
    billed_requests: int
    cost: float | None
    spec: dict[str, Any]
    files: list[FileEntry] = field(default_factory=list)

    def to_json(self) -> str:
        """The manifest as JSON text."""
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> VersionManifest:
        """Parse ``manifest.json``."""
        data = json.loads(text)
        data["diff"] = BuildDiff(**data["diff"])
        data["files"] = [FileEntry(**f) for f in data["files"]]
        return cls(**data)


@dataclass(frozen=True)
class PreparedVersion:
    """A version ready to publish: its rows as a stream of chunks (never the whole dataset in memory), plus
    what its manifest and card say."""

    #: yields tables in the row schema; a row whose ``reasons`` is null is accepted, else rejected
    chunks: Callable[[], Iterator[pa.Table]]
    accepted_rows: int
    manifest: VersionManifest
    card: str
    #: ids whose audio is new in this build (decoded in full at verify)
    new_ids: frozenset[str] = frozenset()


def version_number(version_id: str) -> int:
    """The build number of a version id ``v00012-20261130T010203Z``."""
    return int(version_id[1:].split("-", 1)[0])


def new_version_id(number: int) -> str:
    """``v<number>-<UTC time>``: ids sort in build order."""
    return f"v{number:05d}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"


def _sha256(data: bytes) -> str:
    return content_hash(data)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, compression="zstd")
    return sink.getvalue()


def _never_published(version_id: str, latest: str | None) -> bool:
    """Whether a version folder was never published: ``latest`` only ever moves forward, to the version a build
    just wrote, so a version newer than ``latest`` (or any, before the first publish) never became it."""
    if not version_id.startswith("v"):
        return False
    return latest is None or version_number(version_id) > version_number(latest)


def shard_name(index: int, count: int) -> str:
    """``data/train-0000i-of-0000n.parquet``: the split naming ``datasets`` understands."""
    return f"{DATA}/train-{index:05d}-of-{count:05d}.parquet"


def audio_decodes(data: bytes, name: str) -> bool:
    """Whether ``data`` decodes to at least one sample (16-bit WAV in-process, anything else by ffmpeg)."""
    layout = pcm16_wav_layout(data)
    if layout is not None:
        return layout.data_bytes > 0
    with tempfile.TemporaryDirectory(prefix="voxmill-verify-") as folder:
        path = Path(folder) / (Path(name).name or "clip")
        path.write_bytes(data)
        try:
            return len(decode_float32(path)) > 0
        except VoxmillError:
            return False


class DatasetStore:
    """The versions under one destination, on whatever filesystem fsspec gives for it."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self.fs, root = fsspec.core.url_to_fs(dest)
        self.root = root.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    # --- paths and reading -------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def version_path(self, version_id: str) -> str:
        """Where a version's files live (an fs path, without the protocol)."""
        return self._path(VERSIONS, version_id)

    def url(self, version_id: str) -> str:
        """The version folder as a URL or local path (what ``datasets.load_dataset`` is given)."""
        path = self.version_path(version_id)
        return path if self.local else self.fs.unstrip_protocol(path)

    def version_ids(self) -> list[str]:
        """Published versions, oldest first: complete (their manifest.json exists) and not newer than ``latest``."""
        folder = self._path(VERSIONS)
        latest = self.latest_id()
        if latest is None or not self.fs.exists(folder):
            return []
        self.fs.invalidate_cache(folder)
        ids = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)]
        complete = [i for i in ids if i.startswith("v") and not _never_published(i, latest)
                    and self.fs.exists(self._path(VERSIONS, i, MANIFEST))]
        return sorted(complete, key=version_number)

    def latest_id(self) -> str | None:
        """The published version ``latest`` points at, or None before the first publish."""
        pointer = self._path(LATEST)
        if self.local and os.path.islink(pointer):
            return os.readlink(pointer).rstrip("/").rsplit("/", 1)[-1]
        self.fs.invalidate_cache(self.root)
        if not self.fs.exists(pointer):
            return None
        return self.fs.cat_file(pointer).decode().strip().rstrip("/").rsplit("/", 1)[-1]

    def manifest(self, version_id: str) -> VersionManifest:
        """The manifest.json of a version."""
        try:
            return VersionManifest.from_json(self.fs.cat_file(self._path(VERSIONS, version_id, MANIFEST)).decode())
        except FileNotFoundError:
            raise ConfigError(f"{self.dest}: no complete version {version_id!r}") from None

    def parquet_files(self, version_id: str) -> list[FileEntry]:
        """The Parquet files of a version in order: shards, then rejects."""
        return [e for e in self.manifest(version_id).files if e.path.endswith(".parquet")]

    def read_file(self, version_id: str, entry: FileEntry, columns: list[str] | None = None) -> pa.Table:
        """One Parquet file of a version, in the row schema (or ``columns`` of it)."""
        with self.fs.open(self._path(VERSIONS, version_id, entry.path), "rb") as handle:
            table = pq.read_table(handle, columns=columns).replace_schema_metadata(None)
        schema = ROW_SCHEMA if columns is None else pa.schema([ROW_SCHEMA.field(c) for c in columns])
        return table.select(schema.names).cast(schema)

    def read_rows(self, version_id: str, columns: list[str] | None = None) -> pa.Table:
        """Every row of a version, accepted shards then rejects (``reasons`` says which)."""
        return pa.concat_tables([self.read_file(version_id, e, columns) for e in self.parquet_files(version_id)])

    # --- publishing --------------------------------------------------------------------------------------

    def sweep_unpublished(self) -> list[str]:
        """Remove what killed builds left: partial folders, version folders with no manifest.json, and complete
        versions newer than ``latest`` (killed after writing the version, before moving ``latest``)."""
        folder = self._path(VERSIONS)
        if not self.fs.exists(folder):
            return []
        self.fs.invalidate_cache(folder)
        removed = []
        latest = self.latest_id()
        for path in self.fs.ls(folder, detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            partial = name.startswith(".") and name.endswith(".partial")
            incomplete = not partial and name != latest and (
                _never_published(name, latest) or not self.fs.exists(f"{path.rstrip('/')}/{MANIFEST}"))
            if partial or incomplete:
                self.fs.rm(path, recursive=True)
                removed.append(name)
        return removed

    def next_version_id(self) -> str:
        """The id for a new build: one past the highest complete version."""
        ids = self.version_ids()
        return new_version_id(version_number(ids[-1]) + 1 if ids else 1)

    def publish(self, version: PreparedVersion, shard_rows: int) -> VersionManifest:
        """Write, verify, then move ``latest``; PublishError (and nothing published) when verify fails."""
        version_id = version.manifest.id
        final = self.version_path(version_id)
        staging = self._path(VERSIONS, f".{version_id}.partial") if self.local else final
        if self.fs.exists(final):
            raise PublishError(f"{self.dest}: version {version_id} exists already; published versions are immutable")
        files = self._write_files(staging, version, shard_rows)
        manifest = VersionManifest(**{**asdict(version.manifest), "diff": version.manifest.diff, "files": files})
        self._write(staging, MANIFEST, manifest.to_json().encode())  # last: marks the version complete
        try:
            self.verify(staging, manifest, version.new_ids)
        except PublishError:
            self.fs.rm(staging, recursive=True)
            raise
        if self.local:
            os.rename(staging, final)
        self._move_latest(version_id)
        return manifest

    def _write(self, folder: str, name: str, data: bytes) -> None:
        path = f"{folder}/{name}"
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        with self.fs.open(path, "wb") as handle:
            handle.write(data)

    def _write_files(self, folder: str, version: PreparedVersion, shard_rows: int) -> list[FileEntry]:
        """Route each chunk's rows to shards of ``shard_rows`` or to the rejects; write card and checksums."""
        count = max(1, -(-version.accepted_rows // shard_rows))
        entries: list[FileEntry] = []

        def write_table(name: str, table: pa.Table) -> None:
            data = _parquet_bytes(with_hf_features(table))
            self._write(folder, name, data)
            entries.append(FileEntry(name, len(data), _sha256(data), table.num_rows))

        pending: list[pa.Table] = []
        buffered = 0
        rejects: list[pa.Table] = []
        for chunk in version.chunks():
            accepted = pc.is_null(chunk["reasons"])
            rejects.append(chunk.filter(pc.invert(accepted)))
            pending.append(chunk.filter(accepted))
            buffered += pending[-1].num_rows
            while buffered >= shard_rows and len(entries) < count - 1:
                combined = pa.concat_tables(pending)
                write_table(shard_name(len(entries), count), combined.slice(0, shard_rows))
                pending, buffered = [combined.slice(shard_rows)], buffered - shard_rows
        last = pa.concat_tables(pending) if pending else ROW_SCHEMA.empty_table()
        if len(entries) != count - 1 or last.num_rows + len(entries) * shard_rows != \
                version.accepted_rows:
            raise PublishError(f"{version.manifest.id}: the rows do not add up to {version.accepted_rows} accepted")
        write_table(shard_name(count - 1, count), last)
        write_table(REJECTS, pa.concat_tables(rejects) if rejects else ROW_SCHEMA.empty_table())
        card = version.card.encode()
        self._write(folder, CARD, card)
        entries.append(FileEntry(CARD, len(card), _sha256(card)))
        sums = "".join(f"{e.sha256}  {e.path}\n" for e in entries).encode()
        self._write(folder, CHECKSUMS, sums)
        return entries

    def verify(self, folder: str, manifest: VersionManifest, new_ids: Iterable[str] = ()) -> None:
        """Read a version back: every file's sha256 and rows, and its audio decodes (all new rows, a sample
        of the carried ones). PublishError naming the first problem."""
        new = set(new_ids)
        total = 0
        for entry in manifest.files:
            path = f"{folder}/{entry.path}"
            try:
                data = self.fs.cat_file(path)
            except FileNotFoundError:
                raise PublishError(f"verify {manifest.id}: {entry.path} is missing") from None
            if _sha256(data) != entry.sha256 or len(data) != entry.bytes:
                raise PublishError(f"verify {manifest.id}: {entry.path} does not match its checksum")
            if not entry.path.startswith(f"{DATA}/"):
                continue
            table = pq.read_table(io.BytesIO(data), columns=["id", "audio"])
            if table.num_rows != entry.rows:
                raise PublishError(f"verify {manifest.id}: {entry.path} has {table.num_rows} rows, not {entry.rows}")
            total += table.num_rows
            self._verify_audio(manifest.id, entry.path, table, new)
        if total != manifest.rows:
            raise PublishError(f"verify {manifest.id}: shards hold {total} rows, the manifest says {manifest.rows}")

    @staticmethod
    def _verify_audio(version_id: str, shard: str, table: pa.Table, new: set[str]) -> None:
        ids = table["id"].to_pylist()
        carried = [i for i, row_id in enumerate(ids) if row_id not in new]
        sample = set(random.sample(carried, min(VERIFY_SAMPLE, len(carried))))
        audio = table["audio"]
        for index, row_id in enumerate(ids):
            if row_id not in new and index not in sample:
                continue
            clip = audio[index].as_py()
            if not clip or not clip["bytes"] or not audio_decodes(clip["bytes"], clip["path"] or row_id):
                raise PublishError(f"verify {version_id}: the audio of row {row_id!r} in {shard} does not decode")

    def _move_latest(self, version_id: str) -> None:
        target = f"{VERSIONS}/{version_id}"
        pointer = self._path(LATEST)
        if self.local:
            temporary = f"{pointer}.{os.getpid()}.tmp"
            if os.path.lexists(temporary):
                os.unlink(temporary)
            os.symlink(target, temporary)
            os.replace(temporary, pointer)  # atomic: readers see the old version or the new one
        else:
            self.fs.pipe_file(pointer, (target + "\n").encode())  # one PUT: atomic on object stores

    def apply_retention(self, keep: int) -> list[str]:
        """Remove the oldest complete versions beyond ``keep`` (never the one ``latest`` names)."""
        ids = self.version_ids()
        latest = self.latest_id()
        removable = [i for i in ids[: max(0, len(ids) - keep)] if i != latest]
        for version_id in removable:
            self.fs.rm(self.version_path(version_id), recursive=True)
        return removable


__all__ = [
    "BuildDiff",
    "DatasetStore",
    "FileEntry",
    "PreparedVersion",
    "PublishError",
    "VersionManifest",
    "audio_decodes",
    "new_version_id",
    "shard_name",
    "version_number",
]
