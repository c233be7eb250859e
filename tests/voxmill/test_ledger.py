"""Ledger: journal rows survive a kill (torn last line skipped), compaction keeps the latest per id."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from voxmill.errors import ConfigError
from voxmill.identity import item_key
from voxmill.ledger import LEDGER_SCHEMA, Ledger, LedgerRow


def row(item_id, status="done", key=None, **extra):
    return LedgerRow(id=item_id, key=key or f"{item_id:0<64}"[:64].replace(item_id, "a" * len(item_id)),
                     row=1, kind="tts", model="higgs2p5", status=status, params="{}", **extra)


def hexkey(n: int) -> str:
    return f"{n:016x}" * 4


def test_append_compact_and_latest_per_id(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(row("a", "failed", key=hexkey(1), error_kind="transient"))
    ledger.append(row("b", key=hexkey(2)))
    ledger.append(row("a", "done", key=hexkey(1)))
    table = ledger.compact()
    assert table.num_rows == 2
    assert dict(zip(table["id"].to_pylist(), table["status"].to_pylist())) == {"a": "done", "b": "done"}
    assert pq.read_schema(tmp_path / "results.parquet").names == LEDGER_SCHEMA.names
    assert pq.read_table(tmp_path / "failures.parquet").num_rows == 0
    assert not any((tmp_path / "ledger").glob("journal-*.jsonl")) or all(
        p.stat().st_size == 0 for p in (tmp_path / "ledger").glob("journal-*.jsonl"))
    ledger.close()


def test_torn_journal_line_is_skipped(tmp_path):
    ledger = Ledger(tmp_path, run_id="r1")
    ledger.append(row("a", key=hexkey(1)))
    ledger.close()
    journal = tmp_path / "ledger" / "journal-r1.jsonl"
    with open(journal, "ab") as handle:
        handle.write(b'{"id": "b", "key": "')  # a kill in the middle of a write
    index = Ledger(tmp_path).done_index()
    assert index.done_as(hexkey(1), "a")
    assert not index.has_key(hexkey(2))
    assert len(index) == 1


def test_compaction_reads_every_whole_line_whichever_reader_parses_the_journal(tmp_path):
    # Arrow's JSON reader takes a clean journal whole; a torn line in the middle (a kill, then a rerun appending
    # after it) or a NaN (json.dumps writes one, Arrow refuses it) sends that journal to the line-by-line reader
    clean = Ledger(tmp_path / "clean", run_id="r1")
    clean.append(row("a", key=hexkey(1), duration_s=1.5, lufs=-20.0))
    clean.append(row("b", key=hexkey(2), text="naïve ünïcode"))
    expected = [row("a", key=hexkey(1), duration_s=1.5, lufs=-20.0), row("b", key=hexkey(2), text="naïve ünïcode")]
    assert sorted(clean.compact().to_pylist(), key=lambda r: r["id"]) == [r.to_dict() for r in expected]
    clean.close()
    odd = Ledger(tmp_path / "odd", run_id="r1")
    odd.append(row("a", key=hexkey(1), lufs=float("-inf")))
    with open(tmp_path / "odd" / "ledger" / "journal-r1.jsonl", "ab") as handle:
        handle.write(b'{"id": "torn", "key": "\n')
    odd.append(row("b", key=hexkey(2), lufs=float("nan")))
    table = odd.compact()
    assert sorted(table["id"].to_pylist()) == ["a", "b"]
    assert dict(zip(table["id"].to_pylist(), table["lufs"].to_pylist()))["a"] == float("-inf")
    odd.close()


def test_done_index_distinguishes_id_and_key(tmp_path):
    ledger = Ledger(tmp_path)
    for n in range(1000):
        ledger.append(row(f"i{n}", key=item_key("m", {"n": n}, "c")))
    ledger.append(row("f", "failed", key=hexkey(5)))
    index = ledger.done_index()
    assert len(index) == 1000
    key = item_key("m", {"n": 7}, "c")
    assert index.done_as(key, "i7") and not index.done_as(key, "i8") and index.has_key(key)
    assert not index.has_key(hexkey(5))  # failed is not done
    assert ledger.failed_ids() == {"f"}
    ledger.close()


def test_item_key_is_canonical():
    assert item_key("m", {"a": 1, "b": 2}, "x") == item_key("m", {"b": 2, "a": 1}, "x")
    assert item_key("m", {"a": 1}, "x") != item_key("m", {"a": 2}, "x")
    assert item_key("m", {"a": 1}, "x") != item_key("m", {"a": 1}, "y")
    assert item_key("m", {}, "x") != item_key("n", {}, "x")


def test_second_run_on_same_out_dir_is_refused(tmp_path):
    first = Ledger(tmp_path)
    first.lock()
    with pytest.raises(ConfigError, match="in use by another voxmill run"):
        Ledger(tmp_path).lock()
    first.close()
    second = Ledger(tmp_path)
    second.lock()
    second.close()


def test_compaction_is_atomic(tmp_path, monkeypatch):
    """A compaction that dies at its rename leaves the old table whole and the journal's rows still there."""
    ledger = Ledger(tmp_path)
    ledger.append(row("a", key=hexkey(1)))
    ledger.compact()
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []
    before = (tmp_path / "results.parquet").read_bytes()
    ledger.append(row("b", key=hexkey(2)))

    def dies_at_the_rename(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", dies_at_the_rename)
    with pytest.raises(OSError):
        ledger.compact()
    monkeypatch.undo()
    assert (tmp_path / "results.parquet").read_bytes() == before, "the old table was written over in place"
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == [], "the half-written copy is removed"
    assert pq.read_table(tmp_path / "results.parquet")["id"].to_pylist() == ["a"]
    ledger.close()
    reopened = Ledger(tmp_path)
    assert sorted(reopened.read()["id"].to_pylist()) == ["a", "b"], "b's journal line survived the failed compaction"
    reopened.close()


def test_a_read_meeting_a_compaction_loses_no_row(tmp_path, monkeypatch):
    """A reader without the lock (``voxmill status`` during a run) reads results.parquet, then a compaction by the
    run folds the journals into a new table and removes them, then the reader looks for journals: it must read
    again, not return the old table without the journals' rows (nor fail on a journal that vanished)."""
    import voxmill.ledger as ledger_module

    writer = Ledger(tmp_path, run_id="r1")
    writer.append(row("a", key=hexkey(1)))
    writer.compact()
    writer.close()
    second = Ledger(tmp_path, run_id="r2")  # a later run: its row only in its journal, as yet
    second.append(row("b", key=hexkey(2)))
    real_read_table, compacted = ledger_module.pq.read_table, []

    def read_then_compaction(*args, **kwargs):
        table = real_read_table(*args, **kwargs)
        if not compacted:
            compacted.append(True)
            second.compact()  # between the reader's table and its journals
        return table

    monkeypatch.setattr(ledger_module.pq, "read_table", read_then_compaction)
    assert sorted(Ledger(tmp_path).read()["id"].to_pylist()) == ["a", "b"]
    assert compacted, "the compaction happened during the read"
    second.close()


def test_results_written_before_the_qc_columns_still_resume(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(row("a", key=hexkey(1)))
    ledger.compact()
    ledger.close()
    qc_columns = ["qc_compression_ratio", "qc_chars_per_s", "qc_flags"]
    old = pq.read_table(tmp_path / "results.parquet").drop_columns(qc_columns)
    pq.write_table(old, tmp_path / "results.parquet")
    reopened = Ledger(tmp_path)
    table = reopened.read()
    assert table.schema == LEDGER_SCHEMA and table["qc_flags"].to_pylist() == [None]
    assert reopened.done_index().done_as(hexkey(1), "a")
    reopened.close()


def test_row_of_reads_the_ledger_at_most_once_per_run(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path)
    for n in range(50):
        ledger.append(row(f"old{n}", key=hexkey(n), output_path=f"audio/old{n}.wav"))
    ledger.compact()
    index = ledger.done_index()
    reads = []
    real_read = Ledger.read
    monkeypatch.setattr(Ledger, "read", lambda self, *a, **k: reads.append(1) or real_read(self, *a, **k))
    for n in range(50):  # identical items done in earlier runs: one read, then answered from it
        assert index.row_of(hexkey(n)).output_path == f"audio/old{n}.wav"
    this_run = row("new", key=hexkey(500), output_path="audio/new.wav")
    ledger.append(this_run)
    index.add(this_run.key, this_run.id, this_run)
    assert index.row_of(hexkey(500)) == this_run  # done in this run: from memory
    assert index.row_of(hexkey(999)) is None  # never done: one more read to be sure
    assert len(reads) == 2
    ledger.close()
