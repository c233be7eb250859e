"""An output directory at a URL (``s3://bucket/out/tts``, any fsspec filesystem): the ledger in object storage.

Object stores have no append, no atomic rename and no ``flock``, so the ledger of a URL is built from what they
do have — immutable objects and a conditional create (``If-None-Match: *``) — the way Delta Lake's commit log,
lhotse Shar's write-once shards and datatrove's completion markers are::

    OUT/results.parquet, failures.parquet, job.json   published copies, for readers (rewritten at the end)
    OUT/summary.json                                  the last run's RunSummary (a shard's parent reads it)
    OUT/audio/…, OUT/transcripts/…                    outputs, each uploaded before its ledger record
    OUT/ledger/lease.json                             the writer's lease: created only if absent, renewed,
                                                      deleted at the end (a stale one may be taken over)
    OUT/ledger/segments/<run>-<seq>.jsonl             immutable journal segments, one per flush
    OUT/ledger/snapshots/<run>.parquet                a compacted ledger (latest row per id)
    OUT/ledger/HEAD.json                              the pointer: which snapshot, which segments it folded

The ledger is ``HEAD``'s snapshot plus every segment it did not fold, in name order; the done-index is their
union. A run works in a local scratch directory exactly as on a local disk (the local :class:`Ledger` with its
journals) while a :class:`Shipper` thread turns each journal's new complete lines into a segment, after
uploading the outputs those lines name. So a kill -9 loses what was in flight plus what finished in the last
:data:`FLUSH_S` and was not shipped yet; a rerun pays nothing a segment holds. At the end the run compacts
locally, uploads the snapshot as a new object, moves ``HEAD`` to it, then deletes the segments it folded
(a reader that meets one still listed in ``HEAD`` skips it).

The lease keeps two runs from writing one URL: ``lease.json`` is created with ``If-None-Match: *`` (only one
creator can win; S3 since 2024, and moto, enforce it), renewed every :data:`LEASE_RENEW_S` with ``If-Match`` on
its ETag, and counts as abandoned once :data:`LEASE_TTL_S` passes without renewal, or at once when its holder
ran on this host and its pid is gone (a killed run on the same machine). Taking over deletes the stale lease
with ``If-Match`` (so of two takers only one deletes it) and creates a new one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from voxmill.errors import ConfigError
from voxmill.processes import HOST, process_running

log = logging.getLogger(__name__)

LEDGER_PREFIX = "ledger"
LEASE_FILE = "ledger/lease.json"
HEAD_FILE = "ledger/HEAD.json"
SEGMENTS = "ledger/segments"
SNAPSHOTS = "ledger/snapshots"
#: a lease not renewed for this many seconds is abandoned (its holder died on another machine)
LEASE_TTL_S = 30.0
LEASE_RENEW_S = 10.0
#: journal lines finished this long ago at most are still unshipped
FLUSH_S = 0.5
#: output files that travel with a transcript's ``.txt`` row (``voxmill.subtitles`` writes them side by side)
TRANSCRIPT_SIDECARS = (".txt", ".srt", ".vtt", ".json")


def is_url(where: str | os.PathLike[str]) -> bool:
    """Whether an output location is a URL of a remote filesystem (``file://`` counts as local)."""
    text = str(where)
    return "://" in text and not text.startswith("file://")


def output_location(value: str) -> Path | str:
    """An output named on a command line: a URL as given (no trailing ``/``), else a path."""
    return value.rstrip("/") if is_url(value) else Path(value)


def join(url: str, *parts: str) -> str:
    """``url`` with ``parts`` appended, ``/``-separated."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p)])


def make_scratch(url: str) -> Path:
    """A fresh local working directory for a run writing to ``url`` (under TMPDIR; removed at the run's end)."""
    tail = url.rstrip("/").rsplit("/", 1)[-1] or "out"
    return Path(tempfile.mkdtemp(prefix=f"voxmill-{tail[:30]}-"))


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds an output URL: written into ``lease.json``."""

    run_id: str
    host: str
    pid: int
    expires: float  # wall-clock seconds

    def abandoned(self, now: float) -> bool:
        """Expired, or held by a process of this host that no longer exists."""
        if now > self.expires:
            return True
        return self.host == HOST and not process_running(self.pid)


class RemoteOut:
    """One output URL: its lease, its ledger (snapshot + segments) and the upload of outputs."""

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"output {url!r}: no filesystem for this URL ({exc}); for s3:// install s3fs") from None
        self.root = self.root.rstrip("/")
        self._lease_etag: str | None = None
        self._lease_lock = threading.Lock()

    def path(self, relative: str) -> str:
        """The filesystem path of ``relative`` under OUT."""
        return f"{self.root}/{relative}"

    # --- the lease ------------------------------------------------------------------------------------

    def acquire(self, run_id: str) -> None:
        """Take OUT for this run; ConfigError naming the holder if another live run has it."""
        for _ in range(3):
            if self._create_lease(run_id):
                return
            try:
                raw, etag = self._read_with_etag(LEASE_FILE)
            except FileNotFoundError:
                continue  # released meanwhile: try again
            holder = LeaseInfo(**json.loads(raw))
            if not holder.abandoned(time.time()):
                raise ConfigError(
                    f"{self.url} is in use by another voxmill run ({holder.run_id} on {holder.host}, "
                    f"pid {holder.pid}); wait for it, or choose another output URL (an abandoned lease expires "
                    f"{LEASE_TTL_S:.0f} s after its last renewal)"
                )
            log.warning("taking over %s: the lease of run %s (%s pid %d) was abandoned", self.url, holder.run_id,
                        holder.host, holder.pid)
            self._delete_if(LEASE_FILE, etag)
        raise ConfigError(f"{self.url}: could not take the output's lease (another run keeps taking it)")

    def _lease_body(self, run_id: str) -> bytes:
        info = LeaseInfo(run_id, HOST, os.getpid(), time.time() + LEASE_TTL_S)
        return json.dumps(info.__dict__).encode()

    def _create_lease(self, run_id: str) -> bool:
        self._run_id = run_id
        try:
            etag = self._put(LEASE_FILE, self._lease_body(run_id), create=True)
        except FileExistsError:
            return False
        with self._lease_lock:
            self._lease_etag = etag
        return True

    def renew(self) -> None:
        """Push the lease's expiry on (If-Match on its ETag: a lease taken over is not overwritten)."""
        with self._lease_lock:
            if self._lease_etag is None:
                return
            self._lease_etag = self._put(LEASE_FILE, self._lease_body(self._run_id), if_match=self._lease_etag)

    def release(self) -> None:
        """Give OUT back (deletes the lease if it is still this run's)."""
        with self._lease_lock:
            etag, self._lease_etag = self._lease_etag, None
        if etag is not None:
            try:
                self._delete_if(LEASE_FILE, etag)
            except OSError as exc:
                log.warning("could not release the lease of %s: %s (it expires in %.0f s)", self.url, exc, LEASE_TTL_S)

    # --- the ledger -----------------------------------------------------------------------------------

    def head(self) -> dict[str, Any]:
        """``HEAD.json`` (``{"snapshot": relative path or None, "folded": [segment names]}``)."""
        try:
            return json.loads(self.fs.cat_file(self.path(HEAD_FILE)))
        except FileNotFoundError:
            return {"snapshot": None, "folded": []}

    def segments(self, head: dict[str, Any] | None = None) -> list[str]:
        """Names of the segments not folded into ``head``'s snapshot, in write order."""
        head = head if head is not None else self.head()
        folded = set(head.get("folded", []))
        try:
            names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(self.path(SEGMENTS), detail=False, refresh=True)]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(".jsonl") and n not in folded)

    def materialize(self, scratch: Path, journal_dir: Path) -> int:
        """Copy the ledger into a local output directory: the snapshot as ``results.parquet``, the unfolded
        segments as one journal (the local ledger folds it in); the number of segment rows."""
        head = self.head()
        if head.get("snapshot"):
            self.fs.get_file(self.path(head["snapshot"]), str(scratch / "results.parquet"))
        lines = 0
        names = self.segments(head)
        if names:
            journal_dir.mkdir(parents=True, exist_ok=True)
            with open(journal_dir / "journal-0-bucket.jsonl", "wb") as handle:
                for name in names:
                    body = self.fs.cat_file(self.path(f"{SEGMENTS}/{name}"))
                    handle.write(body)
                    lines += body.count(b"\n")
        return lines

    def write_segment(self, name: str, body: bytes) -> None:
        """One immutable journal segment (created only if absent: a name is never rewritten)."""
        self._put(f"{SEGMENTS}/{name}", body, create=True)

    def publish(self, scratch: Path, run_id: str) -> None:
        """After the local compaction: the snapshot as a new object, HEAD moved to it, the folded segments
        deleted, and the readers' copies (results, failures) rewritten."""
        folded = self.segments({"folded": []})
        results = scratch / "results.parquet"
        if results.exists():
            snapshot = f"{SNAPSHOTS}/{run_id}.parquet"
            self.fs.put_file(str(results), self.path(snapshot))
            previous = self.head().get("snapshot")
            self._put(HEAD_FILE, json.dumps({"snapshot": snapshot, "folded": folded}).encode())
            for name in folded:
                self.fs.rm_file(self.path(f"{SEGMENTS}/{name}"))
            if previous and previous != snapshot:
                self.fs.rm_file(self.path(previous))
            if self.segments({"folded": []}) == []:
                self._put(HEAD_FILE, json.dumps({"snapshot": snapshot, "folded": []}).encode())
            for name in ("results.parquet", "failures.parquet"):
                if (scratch / name).exists():
                    self.fs.put_file(str(scratch / name), self.path(name))

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """The ledger (snapshot + unfolded segments, latest row per id) without a scratch directory."""
        from voxmill.ledger import Ledger

        with tempfile.TemporaryDirectory(prefix="voxmill-read-") as tmp:
            ledger = Ledger(Path(tmp))
            self.materialize(Path(tmp), ledger.journal_dir)
            return ledger.read(columns)

    # --- files ----------------------------------------------------------------------------------------

    def upload(self, scratch: Path, relative: str) -> None:
        """One output file from the scratch directory to the same place under OUT."""
        self.fs.put_file(str(scratch / relative), self.path(relative))

    def upload_many(self, scratch: Path, relatives: list[str]) -> None:
        """Several output files at once (concurrent requests on async filesystems such as s3fs)."""
        if not relatives:
            return
        if len(relatives) == 1:
            self.upload(scratch, relatives[0])
            return
        self.fs.put([str(scratch / r) for r in relatives], [self.path(r) for r in relatives])

    def upload_tree(self, scratch: Path, relative: str) -> int:
        """Every file under ``scratch/relative`` (e.g. an audiobook's folder); how many."""
        count = 0
        for path in sorted((scratch / relative).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                self.upload(scratch, str(path.relative_to(scratch)))
                count += 1
        return count

    def write_json(self, relative: str, record: dict[str, Any]) -> None:
        """A small JSON object under OUT (overwritten)."""
        self._put(relative, json.dumps(record, default=str).encode())

    def read_json(self, relative: str) -> dict[str, Any] | None:
        """A JSON object under OUT; None if there is none."""
        try:
            return json.loads(self.fs.cat_file(self.path(relative)))
        except FileNotFoundError:
            return None

    def exists(self, relative: str) -> bool:
        return bool(self.fs.exists(self.path(relative)))

    # --- object operations ----------------------------------------------------------------------------

    def _put(self, relative: str, body: bytes, *, create: bool = False, if_match: str | None = None) -> str | None:
        """Write one object; its ETag where the filesystem gives one. ``create``: FileExistsError if it exists."""
        path = self.path(relative)
        if _is_s3(self.fs):
            bucket, key, _ = self.fs.split_path(path)
            extra: dict[str, str] = {}
            if create:
                extra["IfNoneMatch"] = "*"
            if if_match:
                extra["IfMatch"] = if_match
            try:
                out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **extra)
            except OSError as exc:
                if create and exc.errno in (errno.EINVAL, None) and "If-None-Match" in str(exc):
                    raise FileExistsError(path) from None
                raise
            self.fs.invalidate_cache(path)
            return out.get("ETag")
        # another filesystem: exclusive create through the local O_EXCL where it is local, else best effort
        if create:
            if self.fs.exists(path):
                raise FileExistsError(path)
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with self.fs.open(path, "xb") as handle:
                handle.write(body)
            return None
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, body)
        return None

    def _read_with_etag(self, relative: str) -> tuple[bytes, str | None]:
        """The object and an ETag no newer than what was read (ETag first: a delete If-Match on it then
        fails, safely, if the object changed in between)."""
        path = self.path(relative)
        self.fs.invalidate_cache(path)
        etag = self.fs.info(path).get("ETag") if _is_s3(self.fs) else None
        return self.fs.cat_file(path), etag

    def _delete_if(self, relative: str, etag: str | None) -> None:
        path = self.path(relative)
        if _is_s3(self.fs) and etag:
            bucket, key, _ = self.fs.split_path(path)
            try:
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
            except (FileNotFoundError, OSError):
                pass  # another taker deleted it first, or it was renewed: the create decides
            self.fs.invalidate_cache(path)
            return
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass


def _is_s3(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "s3" in protocol


class Shipper:
    """Turns a scratch directory's journal lines into segments at OUT, outputs first (see the module doc).

    Runs in a thread of the process holding the run's lease; ``flush()`` ships whatever is complete now.
    """

    def __init__(self, remote: RemoteOut, scratch: Path, journal_dir: Path, run_id: str) -> None:
        self.remote, self.scratch, self.journal_dir, self.run_id = remote, scratch, journal_dir, run_id
        self._offsets: dict[str, int] = {}
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_renewing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="voxmill-shipper", daemon=True)
        self._renewer = threading.Thread(target=self._renew_loop, name="voxmill-lease", daemon=True)
        self.error: BaseException | None = None
        self.shipped_rows = 0
        # journals already folded (the materialised bucket journal): start at their ends
        for journal in journal_dir.glob("journal-*.jsonl") if journal_dir.exists() else ():
            self._offsets[journal.name] = journal.stat().st_size

    def start(self) -> None:
        self._thread.start()
        self._renewer.start()

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_S):
            try:
                self.flush()
            except Exception as exc:  # a store hiccup: try again next round; the end of the run re-raises
                log.warning("shipping the ledger to %s failed (will retry): %s", self.remote.url, exc)
                self.error = exc

    def _renew_loop(self) -> None:
        """The lease, renewed on its own thread: a long upload must not let it expire."""
        while not self._stop_renewing.wait(LEASE_RENEW_S):
            try:
                self.remote.renew()
            except Exception as exc:  # the lease outlives a few missed renewals
                log.warning("could not renew the lease of %s: %s", self.remote.url, exc)

    def stop(self) -> None:
        """Stop shipping in the background and ship what is left (raises if that fails); the lease is still
        renewed until :meth:`stop_renewing` (the end of the run compacts and publishes under it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()
        self.error = None

    def stop_renewing(self) -> None:
        """Stop renewing the lease (just before it is released)."""
        self._stop_renewing.set()
        if self._renewer.is_alive():
            self._renewer.join()

    def flush(self) -> int:
        """Ship every complete journal line not shipped yet; how many rows."""
        with self._lock:
            lines: list[bytes] = []
            moved: dict[str, int] = {}
            for journal in sorted(self.journal_dir.glob("journal-*.jsonl")) if self.journal_dir.exists() else ():
                start = self._offsets.get(journal.name, 0)
                with open(journal, "rb") as handle:
                    if os.fstat(handle.fileno()).st_size < start:
                        start = 0  # compacted (truncated) by a job that went on writing it: its lines are new
                    handle.seek(start)
                    data = handle.read()
                end = data.rfind(b"\n") + 1
                if end:
                    lines.extend(data[:end].splitlines(keepends=True))
                    moved[journal.name] = start + end
            if not lines:
                return 0
            self.remote.upload_many(self.scratch, [r for r in _outputs_of(lines) if (self.scratch / r).exists()])
            self.remote.write_segment(f"{self.run_id}-{self._seq:06d}.jsonl", b"".join(lines))
            self._seq += 1
            self._offsets.update(moved)
            self.shipped_rows += len(lines)
            return len(lines)


def _outputs_of(lines: list[bytes]) -> Iterator[str]:
    """The output files the rows of ``lines`` name (a transcript's sidecars too)."""
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        path = row.get("output_path")
        if row.get("status") != "done" or not path:
            continue
        if row.get("kind") == "asr":
            stem = path[: -len(".txt")] if path.endswith(".txt") else path
            yield from (stem + suffix for suffix in TRANSCRIPT_SIDECARS)
        else:
            yield path


@dataclass(frozen=True)
class FetchOutputs:
    """Downloads outputs of earlier runs from an output URL into the run's scratch folder, so an identical item
    reuses them instead of paying again (picklable: worker processes carry it in the job spec)."""

    url: str
    scratch: str

    def __call__(self, relatives: list[str]) -> None:
        remote: RemoteOut | None = None
        for relative in relatives:
            target = Path(self.scratch) / relative
            if target.exists():
                continue
            remote = remote or RemoteOut(self.url)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                remote.fs.get_file(remote.path(relative), str(target))
            except FileNotFoundError:
                continue  # gone from the bucket: the item is sent


@contextlib.contextmanager
def mirrored(url: str, run_id: str | None = None) -> Iterator[Path]:
    """A local copy of everything at ``url`` for a job that needs its files on disk (an audiobook assembles its
    chunks): OUT's lease is taken (and renewed) for the whole block; the files and the ledger come down into a
    scratch folder, which is yielded. While the block runs, what the scratch folder's ledger records is shipped
    as it goes (a :class:`Shipper`: the outputs, then the segment that names them), so a killed job's rerun pays
    only for what no segment holds. Afterwards (also after an error: what was done is kept) the ledger is
    published the usual way and every other file goes up, then the scratch folder is removed."""
    from voxmill.ledger import Ledger

    remote = RemoteOut(url)
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}-mirror"
    remote.acquire(run_id)
    scratch = make_scratch(url)
    shipper: Shipper | None = None
    try:
        for path in remote.fs.find(remote.root):
            relative = path[len(remote.root):].lstrip("/")
            if relative.startswith(f"{LEDGER_PREFIX}/") or relative in ("results.parquet", "failures.parquet"):
                continue
            (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
            remote.fs.get_file(path, str(scratch / relative))
        journal_dir = Ledger(scratch).journal_dir
        remote.materialize(scratch, journal_dir)
        shipper = Shipper(remote, scratch, journal_dir, run_id)  # from the journals' ends: the rest came from OUT
        shipper.start()  # it renews the lease too
        yield scratch
    finally:
        try:
            if shipper is not None:
                shipper.stop()  # every journal line in a segment before the journals are compacted
            ledger = Ledger(scratch, run_id)
            if ledger.has_journal_rows():
                ledger.compact()
            remote.publish(scratch, run_id)
            files = [str(p.relative_to(scratch)) for p in sorted(scratch.rglob("*"))
                     if p.is_file() and not p.name.startswith(".") and p.relative_to(scratch).parts[0] != LEDGER_PREFIX
                     and p.name not in ("results.parquet", "failures.parquet")]
            remote.upload_many(scratch, files)
        finally:
            if shipper is not None:
                shipper.stop_renewing()
            remote.release()
            remove_scratch(scratch)


def remove_scratch(scratch: Path) -> None:
    """Delete a run's scratch directory (everything in it is in the bucket by now)."""
    shutil.rmtree(scratch, ignore_errors=True)


def read_url_results(url: str, columns: list[str] | None = None) -> pa.Table:
    """The ledger at ``url`` as a table (for reports, merges and tests)."""
    return RemoteOut(url).read_table(columns)


def read_results_at(where: str | os.PathLike[str]) -> pa.Table:
    """The ledger of an output directory or URL as a table (journals or segments included)."""
    from voxmill.ledger import read_results

    return read_url_results(str(where)) if is_url(where) else read_results(Path(where))


def write_parquet_to(table: pa.Table, url: str) -> None:
    """Write a table as Parquet at ``url`` (uploads a local temp file)."""
    remote = RemoteOut(url.rsplit("/", 1)[0])
    with tempfile.TemporaryDirectory(prefix="voxmill-up-") as tmp:
        local = Path(tmp) / "t.parquet"
        pq.write_table(table, local, compression="zstd")
        remote.fs.put_file(str(local), remote.path(url.rsplit("/", 1)[1]))


__all__ = [
    "FLUSH_S",
    "FetchOutputs",
    "LEASE_TTL_S",
    "RemoteOut",
    "Shipper",
    "is_url",
    "join",
    "make_scratch",
    "output_location",
    "mirrored",
    "read_results_at",
    "read_url_results",
    "remove_scratch",
]
