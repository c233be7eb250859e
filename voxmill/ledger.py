"""The ledger: what was done, with what, and what it cost — the memory that makes reruns free.

An output directory holds::

    results.parquet        one row per item (the latest outcome for each id)
    failures.parquet       the failed rows of results.parquet, with their reasons
    ledger/journal-*.jsonl rows appended during a run, one line per finished item

Every finished item is one ``write()`` of one JSON line to the run's journal, so a kill -9 at any
instant loses only the items in flight (a torn last line is skipped on reading); at the end of a run
(and at the start of the next) journals are compacted into ``results.parquet``, written to a temp name
and renamed. A lock file keeps two runs from working on one output directory at once.

Resume reads the done set first and sends nothing for an item whose key is done: the key hashes the
model, the effective parameters and the content (the text, or the audio file's bytes), so a changed
text or parameter is a new key and only that item is redone.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from voxmill.errors import ConfigError, DiskFull, disk_full_error
from voxmill.identity import HashBuffer, id_hash64, id_hashes64
from voxmill.manifests.formats import parquet_batches

RESULTS_FILE = "results.parquet"
#: reads of the ledger before one finds results.parquet unchanged from start to end (see Ledger.read)
READ_TRIES = 5
#: results.parquet's metadata key holding the run record (JSON)
RUN_RECORD_KEY = b"voxmill.run"
FAILURES_FILE = "failures.parquet"
JOURNAL_DIR = "ledger"


def utc_now() -> str:
    """An ISO-8601 UTC timestamp with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class LedgerRow:
    """One item's outcome: what was asked, what came back, what was written, what it cost."""

    id: str
    key: str
    row: int
    kind: str
    model: str
    status: str  # done | failed
    params: str  # effective parameters as JSON (without the text)
    text: str | None = None  # TTS input text
    input: str | None = None  # ASR input audio path/URL
    engine: str | None = None
    error_kind: str | None = None
    error_message: str | None = None
    attempts: int = 0
    http_status: int | None = None
    latency_s: float | None = None
    started_at: str | None = None
    finished_at: str | None = None
    output_path: str | None = None
    output_format: str | None = None
    duration_s: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    lufs: float | None = None
    peak_dbfs: float | None = None
    transcript: str | None = None
    language: str | None = None
    wer: float | None = None
    #: ASR hallucination signals (voxmill.quality.transcript_qc): compression ratio, characters per
    #: second, and the flags that fired (repetitive, too_fast, too_slow, text_on_silence), comma-separated
    qc_compression_ratio: float | None = None
    qc_chars_per_s: float | None = None
    qc_flags: str | None = None
    credits_remaining: str | None = None
    request_id: str | None = None
    reused_from: str | None = None
    warnings: str | None = None
    run_id: str | None = None
    flow_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row's fields in schema order, flat values (a shallow copy: ``dataclasses.asdict`` deep-copies every
        value and cost ~0.3 ms per item, the biggest per-item cost of a run)."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> LedgerRow:
        """A row from :meth:`to_dict`'s output or a ledger table's record."""
        return cls(**record)


_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}


def _arrow_type(annotation: str) -> pa.DataType:
    base = annotation.replace(" | None", "").strip()
    return _ARROW_TYPES[base]


LEDGER_SCHEMA = pa.schema([pa.field(f.name, _arrow_type(f.type)) for f in fields(LedgerRow)])


def _key_bits(key: str) -> tuple[int, int]:
    return int(key[:16], 16), int(key[16:32], 16)


def _id_bits(item_id: str) -> int:
    return id_hash64(item_id)


_HEX_VALUES = np.full(256, 255, dtype=np.uint8)
for _digit, _char in enumerate("0123456789abcdef"):
    _HEX_VALUES[ord(_char)] = _HEX_VALUES[ord(_char.upper())] = _digit
#: rows converted at a time when building an index (bounds the Python objects alive at once)
_INDEX_SLICE = 65536
#: rows per Parquet row group of the tables written here: a reader decompresses one group at a time, so this
#: bounds what streaming a 10M-row ledger costs (a whole 1M-row group of 64-character keys is ~100 MB)
ROW_GROUP_ROWS = 65536


def _key_bits_array(keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``_key_bits`` of every key at once: the first 32 hex digits as two big-endian uint64."""
    if len(keys) == 0:
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    prefixes = pc.utf8_slice_codeunits(keys.cast(pa.string()), 0, 32)
    if prefixes.null_count or pc.min(pc.binary_length(prefixes)).as_py() != 32:
        raise ValueError("a ledger key is missing or shorter than 32 hex digits")
    # every value is 32 bytes, so the values lie back to back from the first one's offset
    _, offsets, values = prefixes.buffers()
    first = int(np.frombuffer(offsets, dtype=np.int32, count=1, offset=4 * prefixes.offset)[0])
    digits = np.frombuffer(values, dtype=np.uint8, count=32 * len(prefixes), offset=first)
    nibbles = _HEX_VALUES[digits].reshape(-1, 32)
    if (nibbles == 255).any():
        raise ValueError("a ledger key is not hexadecimal")
    packed = np.ascontiguousarray((nibbles[:, 0::2] << 4) | nibbles[:, 1::2])  # (n, 16) bytes
    return packed[:, :8].view(">u8").ravel().astype(np.uint64), packed[:, 8:].view(">u8").ravel().astype(np.uint64)


class DoneIndex:
    """The keys of done items, 24 bytes each (128 bits of key + 64 of id hash), for resume at scale.

    A million done items take ~24 MB instead of ~300 MB of Python strings. Items finished during this
    run are kept in a small overlay. :meth:`row_of` (for reusing an identical item's output) answers from
    the last ``RECENT_ROWS`` rows done in this run, else from the ledger as read once (read again only
    for a row of this run that has left the recent ones).
    """

    def __init__(self, keys: list[str], ids: list[str], ledger: Ledger | None = None) -> None:
        self._build([(pa.array(keys, pa.string()), pa.array(ids, pa.string()))])
        self._init_rows(ledger)

    def _init_rows(self, ledger: Ledger | None) -> None:
        self._overlay: dict[tuple[int, int], int] = {}
        self._ledger = ledger
        self._recent: OrderedDict[str, LedgerRow] = OrderedDict()
        self._read: pa.Table | None = None

    @classmethod
    def from_chunks(cls, chunks: Iterable[tuple[pa.Array, pa.Array]], ledger: Ledger | None = None,
                    size_hint: int = 0) -> DoneIndex:
        """The index of (keys, ids) column chunks, streamed: memory stays at 24 bytes per done item (filled in
        place when ``size_hint`` is at least their number of rows)."""
        index = cls.__new__(cls)
        index._build(chunks, size_hint)
        index._init_rows(ledger)
        return index

    def _build(self, chunks: Iterable[tuple[pa.Array, pa.Array]], size_hint: int = 0) -> None:
        # filled in place where the number of rows is known (``size_hint``, at least it): no chunk lists, no joins
        his, los, id_bits = HashBuffer(size_hint), HashBuffer(size_hint), HashBuffer(size_hint)
        for keys, ids in chunks:
            for start in range(0, len(keys), _INDEX_SLICE):
                hi, lo = _key_bits_array(keys.slice(start, _INDEX_SLICE))
                his.add(hi)
                los.add(lo)
                id_bits.add(id_hashes64(ids.slice(start, _INDEX_SLICE)))
        hi, lo = his.take(), los.take()
        order = np.lexsort((lo, hi))
        # three contiguous arrays: searchsorted on a field of a structured array copies it on every call; each
        # reordered through one temporary at a time (the peak is 48 bytes per done item, briefly)
        hi[:] = hi[order]
        lo[:] = lo[order]
        self._hi, self._lo = hi, lo
        ids = id_bits.take()
        ids[:] = ids[order]
        self._ids = ids
        del order
        self._sorted_ids: np.ndarray | None = None  # built by has_id, for retry-failed's counts

    def __len__(self) -> int:
        return len(self._hi) + len(self._overlay)

    def _find(self, key: str) -> int | None:
        bits = _key_bits(key)
        if bits in self._overlay:
            return self._overlay[bits]
        # a numpy scalar: with a plain int below 2**63 numpy converts the whole array to compare (O(n))
        key_hi = np.uint64(bits[0])
        start = int(self._hi.searchsorted(key_hi, side="left"))
        end = int(self._hi.searchsorted(key_hi, side="right"))
        for index in range(start, end):
            if int(self._lo[index]) == bits[1]:
                return int(self._ids[index])
        return None

    def has_key(self, key: str) -> bool:
        """Whether some item with this key is done."""
        return self._find(key) is not None

    def has_id(self, item_id: str) -> bool:
        """Whether an item with this id was done before this run (8 more bytes per done item, on first use)."""
        if self._sorted_ids is None:
            self._sorted_ids = np.sort(self._ids)
        bits = np.uint64(_id_bits(item_id))
        index = int(self._sorted_ids.searchsorted(bits))
        return index < len(self._sorted_ids) and self._sorted_ids[index] == bits

    def done_as(self, key: str, item_id: str) -> bool:
        """Whether this very item (same key, same id) is done."""
        return self._find(key) == _id_bits(item_id)

    def done_mask(self, keys: list[str], item_ids: list[str]) -> np.ndarray:
        """:meth:`done_as` of many items at once (a bool array): one vectorised search for a manifest's batch."""
        count = len(keys)
        if count == 0 or len(self) == 0:
            return np.zeros(count, dtype=bool)
        hi, lo = _key_bits_array(pa.array(keys, pa.string()))
        found = np.zeros(count, dtype=np.uint64)
        known = np.zeros(count, dtype=bool)
        if len(self._hi):
            start = np.minimum(self._hi.searchsorted(hi, side="left"), len(self._hi) - 1)
            same_hi = self._hi[start] == hi
            known = same_hi & (self._lo[start] == lo)
            found[known] = self._ids[start[known]]
            # another key with the same first 64 bits sorts first: look these few up one by one
            for index in np.flatnonzero(same_hi & ~known).tolist():
                match = self._find(keys[index])
                if match is not None:
                    known[index], found[index] = True, match
        if self._overlay:  # items done in this run come first, as in _find
            for index, bits in enumerate(zip(hi.tolist(), lo.tolist(), strict=True)):
                match = self._overlay.get(bits)
                if match is not None:
                    known[index], found[index] = True, match
        candidates = np.flatnonzero(known)
        mask = np.zeros(count, dtype=bool)
        if len(candidates):
            mask[candidates] = found[candidates] == id_hashes64([item_ids[i] for i in candidates.tolist()])
        return mask

    def add(self, key: str, item_id: str, row: LedgerRow | None = None) -> None:
        """Remember an item finished in this run (and its row, for :meth:`row_of`)."""
        self._overlay[_key_bits(key)] = _id_bits(item_id)
        if row is not None:
            recent = self._recent
            recent[key] = row
            if len(recent) > RECENT_ROWS:
                recent.popitem(last=False)

    def row_of(self, key: str) -> LedgerRow | None:
        """The ledger row of a done item with this key (None: none is done)."""
        row = self._recent.get(key)
        if row is not None:
            return row
        if self._ledger is None:
            return None
        if self._read is not None:
            row = _done_row(self._read, key)
            if row is not None:
                return row
        self._read = self._ledger.read()  # first use, or a row of this run no longer among the recent ones
        return _done_row(self._read, key)


#: rows done in this run that :meth:`DoneIndex.row_of` answers from memory
RECENT_ROWS = 4096


def _done_row(table: pa.Table, key: str) -> LedgerRow | None:
    match = table.filter(pc.and_(pc.equal(table["key"], key), pc.equal(table["status"], "done"))).to_pylist()
    return LedgerRow.from_dict(match[-1]) if match else None


class Ledger:
    """The ledger of one output directory. Not for two runs at once: :meth:`lock` enforces that.

    Within one run, the process that holds the lock may be helped by worker processes (a process or Dask
    task runner): each appends to its own journal (``writer`` names it) and never compacts; the lock
    holder folds every journal in at the end.
    """

    def __init__(self, out_dir: Path, run_id: str | None = None, *, writer: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.journal_dir = self.out_dir / JOURNAL_DIR
        self.run_id = run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        self.journal_name = f"journal-{self.run_id}{f'-{writer}' if writer else ''}.jsonl"
        self._journal_fd: int | None = None
        self._lock_fd: int | None = None
        self._write_lock = threading.Lock()

    # --- locking ------------------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the output directory for this run; ConfigError if another run holds it."""
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.journal_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"{self.out_dir} is in use by another voxmill run; wait for it or choose another output directory"
            ) from None
        self._lock_fd = fd

    def close(self) -> None:
        """Close the journal and release the lock."""
        with self._write_lock:
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- writing ------------------------------------------------------------------------------------

    def append(self, row: LedgerRow) -> None:
        """Record one finished item durably: one line, one ``write()`` to this run's journal."""
        line = (json.dumps(row.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        where = str(self.journal_dir / self.journal_name)
        with self._write_lock:
            try:
                if self._journal_fd is None:
                    self.journal_dir.mkdir(parents=True, exist_ok=True)
                    self._journal_fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                end = os.lseek(self._journal_fd, 0, os.SEEK_END)
                try:
                    written = os.write(self._journal_fd, line)
                except OSError:
                    os.ftruncate(self._journal_fd, end)
                    raise
            except OSError as exc:
                failure = disk_full_error(exc, where)
                if failure is None:
                    raise
                raise failure from None
            if written != len(line):  # a short write on a full disk: cut the torn line so later rows parse
                os.ftruncate(self._journal_fd, end)
                raise DiskFull.writing(where)

    def compact(self, run: Mapping[str, Any] | None = None) -> pa.Table:
        """Fold journals into results.parquet (latest row per id) and failures.parquet; return the table.

        ``run``: the run record (how the run went: its id, the learned rate and in-flight limit…), kept in
        results.parquet's metadata under ``voxmill.run`` (:func:`read_run_record`)."""
        table = self.read()
        if table.num_rows == 0:
            return table
        if run is not None:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   RUN_RECORD_KEY: json.dumps(dict(run)).encode()})
        _write_parquet_atomic(table, self.out_dir / RESULTS_FILE)
        failures = table.filter(pc.equal(table["status"], "failed"))
        _write_parquet_atomic(failures, self.out_dir / FAILURES_FILE)
        with self._write_lock:
            current = self.journal_name
            for journal in self.journal_dir.glob("journal-*.jsonl"):
                if journal.name == current and self._journal_fd is not None:
                    os.ftruncate(self._journal_fd, 0)
                else:
                    journal.unlink()
        return table

    def absorb(self, rows: pa.Table) -> pa.Table:
        """Fold rows from elsewhere (a shard's results) into results.parquet and failures.parquet.

        Call it holding the lock; ``rows`` supersede what the ledger holds for the same ids.
        """
        table = _latest_per_id(pa.concat_tables([self.read(), rows.select(LEDGER_SCHEMA.names).cast(LEDGER_SCHEMA)]))
        _write_parquet_atomic(table, self.out_dir / RESULTS_FILE)
        _write_parquet_atomic(table.filter(pc.equal(table["status"], "failed")), self.out_dir / FAILURES_FILE)
        return table

    # --- reading ------------------------------------------------------------------------------------

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All rows (results.parquet plus journals), the latest per id, in the ledger schema.

        ``columns`` (which must include ``id``) reads only those: much less memory for a big ledger.

        A reader that does not hold the output's lock (``voxmill status``, a test watching a run) may meet a
        compaction: it writes results.parquet anew, then empties the journals. Rows read from the old table
        whose journals then vanished would be lost to this read, so a read during which results.parquet
        changed is read again.
        """
        schema = LEDGER_SCHEMA if columns is None else pa.schema([LEDGER_SCHEMA.field(c) for c in columns])
        results = self.out_dir / RESULTS_FILE
        for _ in range(READ_TRIES):
            before = _file_stamp(results)
            parts = self._read_parts(results if before is not None else None, schema)
            if _file_stamp(results) == before:
                break
        if not parts:
            return schema.empty_table()
        return _latest_per_id(pa.concat_tables(parts))

    def _read_parts(self, results: Path | None, schema: pa.Schema) -> list[pa.Table]:
        """results.parquet (unless None), then the journals' rows."""
        parts: list[pa.Table] = []
        if results is not None:
            with contextlib.suppress(FileNotFoundError):  # gone since its stamp was taken: read again
                parts.append(_conform(pq.read_table(results, columns=_present(results, schema.names)), schema))
        parts.extend(self._journal_tables(schema))
        return parts

    def _journal_tables(self, schema: pa.Schema) -> Iterator[pa.Table]:
        """Each journal's rows as a table, oldest journal first: parsed whole by Arrow's JSON reader (~5× faster
        than a ``json.loads`` per line, which made most of a 10,000-row compaction at a job's end), or line by
        line (:meth:`_rows_of`) when the reader refuses it: a line torn by a kill, a ``NaN``."""
        if not self.journal_dir.exists():
            return
        for _, _, journal in self._journals():
            try:
                data = journal.read_bytes()
            except FileNotFoundError:  # removed by a compaction since it was listed
                continue
            whole = data[: data.rfind(b"\n") + 1]  # a last line without its newline was torn by a kill mid-write
            if not whole:
                continue
            try:
                table = pa_json.read_json(io.BytesIO(whole), parse_options=pa_json.ParseOptions(
                    explicit_schema=schema, unexpected_field_behavior="ignore"))
                yield table.select(schema.names).cast(schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                rows = list(_rows_of(whole.splitlines(keepends=True), set(schema.names)))
                if rows:
                    yield pa.Table.from_pylist(rows, schema=schema)

    def _journals(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of each journal, oldest first (one a compaction removes meanwhile is left out)."""
        found = []
        for journal in self.journal_dir.glob("journal-*.jsonl"):
            with contextlib.suppress(FileNotFoundError):
                stat = journal.stat()
                found.append((stat.st_mtime, stat.st_size, journal))
        return sorted(found)

    def _journal_rows(self, columns: list[str]) -> Iterator[dict[str, Any]]:
        if not self.journal_dir.exists():
            return
        names = set(columns)
        for _, _, journal in self._journals():
            try:
                handle = open(journal, "rb")  # noqa: SIM115 (closed by the with below)
            except FileNotFoundError:  # removed by a compaction since it was listed
                continue
            with handle:
                yield from _rows_of(handle, names)

    def done_index(self) -> DoneIndex:
        """The keys of every item done so far (what a rerun must not send again).

        Streamed from results.parquet a record batch at a time, then the journals. No latest-per-id pass
        is needed: a done key is never sent again, so a done row is never superseded for the same key.
        """
        results = self.out_dir / RESULTS_FILE
        return DoneIndex.from_chunks(self._done_chunks(), ledger=self,
                                     size_hint=pq.ParquetFile(results).metadata.num_rows if results.exists() else 0)

    def _done_chunks(self) -> Iterator[tuple[pa.Array, pa.Array]]:
        columns = ["id", "key", "status"]
        results = self.out_dir / RESULTS_FILE
        if results.exists():
            for batch in parquet_batches(pq.ParquetFile(results), _INDEX_SLICE, columns):
                done = batch.filter(pc.equal(batch.column("status"), "done"))
                yield done.column("key"), done.column("id")
        rows = [r for r in self._journal_rows(columns) if r.get("status") == "done"]
        if rows:
            yield pa.array([r["key"] for r in rows], pa.string()), pa.array([r["id"] for r in rows], pa.string())

    def has_journal_rows(self) -> bool:
        """Whether any journal holds rows not yet folded into results.parquet."""
        return self.journal_dir.exists() and any(size > 0 for _, size, _ in self._journals())

    def failed_ids(self) -> set[str]:
        """Ids whose latest outcome is a failure."""
        table = self.read()
        return set(table.filter(pc.equal(table["status"], "failed"))["id"].to_pylist())


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when ``path`` is written anew (inode, size, mtime); None while there is no such file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _present(results: Path, names: list[str]) -> list[str]:
    """Those of ``names`` that ``results`` holds (a ledger written before a column was added lacks it)."""
    held = set(pq.read_schema(results).names)
    return [n for n in names if n in held]


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in ``schema``: columns it lacks are added as nulls, in schema order, types cast."""
    columns = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.table(columns, schema=schema)


def _latest_per_id(table: pa.Table) -> pa.Table:
    """Keep the last row for each id (rows are in write order: results first, then journals)."""
    if table.num_rows == 0:
        return table
    indices = pa.array(range(table.num_rows), pa.int64())
    grouped = (
        pa.table({"id": table["id"], "i": indices}).group_by("id", use_threads=False).aggregate([("i", "max")])
    )
    keep = pc.sort_indices(grouped["i_max"])
    return table.take(pc.take(grouped["i_max"], keep))


def _rows_of(lines: Iterable[bytes], names: set[str]) -> Iterator[dict[str, Any]]:
    """The rows of a journal's lines (only the ``names`` fields); a torn line (no newline, or not JSON) is skipped:
    its item was in flight when the run was killed."""
    for line in lines:
        if not line.endswith(b"\n"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        yield {k: v for k, v in row.items() if k in names}


def _write_parquet_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # the old table stays as it was; a full disk is one clear error
        tmp.unlink(missing_ok=True)
        failure = disk_full_error(exc, str(path))
        if failure is None:
            raise
        raise failure from None
    except BaseException:
        tmp.unlink(missing_ok=True)  # the old table stands; leave no half-written copy beside it
        raise


def write_table(table: pa.Table, path: Path) -> None:
    """Write a metadata table (Parquet, zstd) atomically: the one writer of tables beside the ledger's own."""
    _write_parquet_atomic(table, Path(path))


def read_run_record(out_dir: Path) -> dict[str, Any] | None:
    """The record of the run that last compacted results.parquet (see :meth:`Ledger.compact`), or None."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.exists():
        return None
    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(RUN_RECORD_KEY)
    return json.loads(raw) if raw else None


def read_results(out_dir: Path) -> pa.Table:
    """The ledger of an output directory as a table (journals included), for reports and tests."""
    return Ledger(out_dir).read()


__all__ = [
    "FAILURES_FILE",
    "LEDGER_SCHEMA",
    "RESULTS_FILE",
    "DoneIndex",
    "Ledger",
    "LedgerRow",
    "read_results",
    "read_run_record",
    "utc_now",
    "write_table",
]
