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

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxmill.errors import ConfigError

RESULTS_FILE = "results.parquet"
FAILURES_FILE = "failures.parquet"
JOURNAL_DIR = "ledger"
_HASH_CHUNK = 1 << 20


def content_hash(data: bytes | str) -> str:
    """sha256 hex of text (UTF-8) or bytes."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def file_hash(path: str, opener=None) -> str:
    """sha256 hex of a file's bytes, streamed (a path or, with ``opener``, an fsspec URL)."""
    digest = hashlib.sha256()
    handle = opener(path) if opener else open(path, "rb")
    with handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def item_key(model: str, params: Mapping[str, Any], content: str) -> str:
    """The item's identity: sha256 of the model, its effective parameters and its content's hash.

    ``content`` is the text for TTS (with a voice reference's hash appended) or the audio file's
    sha256 for ASR. Parameters are serialised canonically, so their order does not matter.
    """
    payload = json.dumps({"m": model, "p": params, "c": content}, sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


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
    credits_remaining: str | None = None
    request_id: str | None = None
    reused_from: str | None = None
    warnings: str | None = None
    run_id: str | None = None
    flow_run_id: str | None = None


_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}


def _arrow_type(annotation: str) -> pa.DataType:
    base = annotation.replace(" | None", "").strip()
    return _ARROW_TYPES[base]


LEDGER_SCHEMA = pa.schema([pa.field(f.name, _arrow_type(f.type)) for f in fields(LedgerRow)])


def _key_bits(key: str) -> tuple[int, int]:
    return int(key[:16], 16), int(key[16:32], 16)


def _id_bits(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


_HEX_VALUES = np.full(256, 255, dtype=np.uint8)
for _digit, _char in enumerate("0123456789abcdef"):
    _HEX_VALUES[ord(_char)] = _HEX_VALUES[ord(_char.upper())] = _digit
#: rows converted at a time when building an index (bounds the Python objects alive at once)
_INDEX_SLICE = 65536


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
    run are kept in a small overlay. ``output_of`` (for reusing an identical item's output) reads the
    ledger, which is rare.
    """

    def __init__(self, keys: list[str], ids: list[str], ledger: Ledger | None = None) -> None:
        self._build([(pa.array(keys, pa.string()), pa.array(ids, pa.string()))])
        self._overlay: dict[tuple[int, int], int] = {}
        self._ledger = ledger

    @classmethod
    def from_chunks(cls, chunks: Iterable[tuple[pa.Array, pa.Array]], ledger: Ledger | None = None) -> DoneIndex:
        """The index of (keys, ids) column chunks, streamed: memory stays at 24 bytes per done item."""
        index = cls.__new__(cls)
        index._build(chunks)
        index._overlay = {}
        index._ledger = ledger
        return index

    def _build(self, chunks: Iterable[tuple[pa.Array, pa.Array]]) -> None:
        his, los, id_bits = [], [], []
        for keys, ids in chunks:
            for start in range(0, len(keys), _INDEX_SLICE):
                key_slice = keys.slice(start, _INDEX_SLICE)
                hi, lo = _key_bits_array(key_slice)
                his.append(hi)
                los.append(lo)
                id_bits.append(np.fromiter((_id_bits(i) for i in ids.slice(start, _INDEX_SLICE).to_pylist()),
                                           dtype=np.uint64, count=len(key_slice)))
        hi = np.concatenate(his) if his else np.empty(0, np.uint64)
        lo = np.concatenate(los) if los else np.empty(0, np.uint64)
        order = np.lexsort((lo, hi))
        # three contiguous arrays: searchsorted on a field of a structured array copies it on every call
        self._hi, self._lo = hi[order], lo[order]
        self._ids = (np.concatenate(id_bits) if id_bits else np.empty(0, np.uint64))[order]

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

    def done_as(self, key: str, item_id: str) -> bool:
        """Whether this very item (same key, same id) is done."""
        return self._find(key) == _id_bits(item_id)

    def add(self, key: str, item_id: str) -> None:
        """Remember an item finished in this run."""
        self._overlay[_key_bits(key)] = _id_bits(item_id)

    def row_of(self, key: str) -> LedgerRow | None:
        """The ledger row of a done item with this key (reads the ledger)."""
        if self._ledger is None:
            return None
        table = self._ledger.read()
        match = table.filter(pc.and_(pc.equal(table["key"], key), pc.equal(table["status"], "done"))).to_pylist()
        return LedgerRow(**match[-1]) if match else None


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
        # the row's own __dict__ (fields in order, flat values): dataclasses.asdict deep-copies every value
        # and was ~0.3 ms per item, the biggest per-item cost of a run
        line = (json.dumps(row.__dict__, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._write_lock:
            if self._journal_fd is None:
                self.journal_dir.mkdir(parents=True, exist_ok=True)
                path = self.journal_dir / self.journal_name
                self._journal_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(self._journal_fd, line)

    def compact(self) -> pa.Table:
        """Fold journals into results.parquet (latest row per id) and failures.parquet; return the table."""
        table = self.read()
        if table.num_rows == 0:
            return table
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
        """
        schema = LEDGER_SCHEMA if columns is None else pa.schema([LEDGER_SCHEMA.field(c) for c in columns])
        parts: list[pa.Table] = []
        results = self.out_dir / RESULTS_FILE
        if results.exists():
            parts.append(pq.read_table(results, columns=columns).cast(schema))
        journal_rows = list(self._journal_rows(schema.names))
        if journal_rows:
            parts.append(pa.Table.from_pylist(journal_rows, schema=schema))
        if not parts:
            return schema.empty_table()
        table = pa.concat_tables(parts)
        return _latest_per_id(table)

    def _journal_rows(self, columns: list[str]) -> Iterator[dict[str, Any]]:
        if not self.journal_dir.exists():
            return
        names = set(columns)
        for journal in sorted(self.journal_dir.glob("journal-*.jsonl"), key=lambda p: p.stat().st_mtime):
            with open(journal, "rb") as handle:
                for line in handle:
                    if not line.endswith(b"\n"):
                        continue  # torn by a kill mid-write: the item was in flight
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    yield {k: v for k, v in row.items() if k in names}

    def done_index(self) -> DoneIndex:
        """The keys of every item done so far (what a rerun must not send again).

        Streamed from results.parquet a record batch at a time, then the journals. No latest-per-id pass
        is needed: a done key is never sent again, so a done row is never superseded for the same key.
        """
        return DoneIndex.from_chunks(self._done_chunks(), ledger=self)

    def _done_chunks(self) -> Iterator[tuple[pa.Array, pa.Array]]:
        columns = ["id", "key", "status"]
        results = self.out_dir / RESULTS_FILE
        if results.exists():
            for batch in pq.ParquetFile(results).iter_batches(batch_size=_INDEX_SLICE, columns=columns):
                done = batch.filter(pc.equal(batch.column("status"), "done"))
                yield done.column("key"), done.column("id")
        rows = [r for r in self._journal_rows(columns) if r.get("status") == "done"]
        if rows:
            yield pa.array([r["key"] for r in rows], pa.string()), pa.array([r["id"] for r in rows], pa.string())

    def has_journal_rows(self) -> bool:
        """Whether any journal holds rows not yet folded into results.parquet."""
        return self.journal_dir.exists() and any(
            p.stat().st_size > 0 for p in self.journal_dir.glob("journal-*.jsonl")
        )

    def failed_ids(self) -> set[str]:
        """Ids whose latest outcome is a failure."""
        table = self.read()
        return set(table.filter(pc.equal(table["status"], "failed"))["id"].to_pylist())


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


def _write_parquet_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_results(out_dir: Path) -> pa.Table:
    """The ledger of an output directory as a table (journals included), for reports and tests."""
    return Ledger(out_dir).read()


def rows_from_table(table: pa.Table) -> Iterable[LedgerRow]:
    """Typed rows from a ledger table."""
    for record in table.to_pylist():
        yield LedgerRow(**record)


__all__ = [
    "FAILURES_FILE",
    "LEDGER_SCHEMA",
    "RESULTS_FILE",
    "DoneIndex",
    "Ledger",
    "LedgerRow",
    "content_hash",
    "file_hash",
    "item_key",
    "read_results",
    "rows_from_table",
    "utc_now",
]
