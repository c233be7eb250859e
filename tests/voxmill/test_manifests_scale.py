"""Big manifests are read a record batch at a time and planned in bulk; these tests hold the bulk path to the
row-by-row one: the same items, the same problems (named by row), the same keys, the same rows skipped as done."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from voxmill.identity import item_key
from voxmill.ledger import DoneIndex
from voxmill.manifests import ManifestReader, RunDefaults, iter_record_batches
from voxmill.plan import PlanCounts, key_of, plan_items

# every kind of row the bulk path must hand back to the row-by-row one, between ordinary rows
ROWS = [
    {"id": "a", "text": "Hello there.", "voice": "", "stream": ""},
    {"id": "", "text": "No id of its own.", "voice": "", "stream": ""},
    {"id": "b", "text": "", "voice": "", "stream": ""},  # empty text
    {"id": "c", "text": "   ", "voice": "", "stream": ""},  # whitespace only
    {"id": "d", "text": "bell \x07 inside", "voice": "", "stream": ""},  # control character
    {"id": "e", "text": "?!…", "voice": "", "stream": ""},  # unspeakable
    {"id": "f", "text": "word " * 300, "voice": "", "stream": ""},  # past the soft limit: a warning
    {"id": "g", "text": "Another voice.", "voice": "belinda", "stream": ""},
    {"id": "h", "text": "Too fast.", "voice": "", "stream": "maybe"},  # a bad parameter: its row is named
    {"id": "a", "text": "A repeated id.", "voice": "", "stream": ""},  # duplicate of row 1
    {"id": "i", "text": "Same voice again.", "voice": "belinda", "stream": ""},
    {"id": "j", "text": "Quotes \" and \\ and ünïcode 😀.", "voice": "", "stream": "true"},
    {"id": "", "text": "Hello there.", "voice": "", "stream": ""},  # no id, same text as row 1
]


def _copies(count: int) -> list[dict[str, str]]:
    """``ROWS`` ``count`` times, the ids of copy k suffixed with k (so only the "a"s within a copy repeat)."""
    return [{**row, "id": f"{row['id']}{k}" if row["id"] else ""} for k in range(count) for row in ROWS]


def _write_csv(path: Path, rows: list[dict[str, str]]) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _row_by_row(source: str, reader: ManifestReader) -> list:
    """The items ``item_from_row`` makes of every row (the reference the bulk path must equal)."""
    items, row = [], 0
    for batch in iter_record_batches(source, reader.batch_rows):
        for values in batch.to_pylist():
            row += 1
            items.append(reader.item_from_row(row, values))
    return items


def test_bulk_items_equal_row_by_row_items(tmp_path: Path) -> None:
    source = _write_csv(tmp_path / "m.csv", _copies(3))  # three batches of 13 rows; later ones hit the cache
    reader = ManifestReader(source, "tts", RunDefaults(model="higgs2p5"), batch_rows=13)
    bulk = list(reader)
    expected = _row_by_row(source, reader)
    assert len(bulk) == len(expected) == 39
    duplicates = [item for item in bulk if item.problem is not None and item.problem.kind == "duplicate_id"]
    # the first "a" of each copy runs; the later one is refused, naming the first one's row
    assert [item.row for item in duplicates] == [10, 23, 36]
    assert [item.problem.message.split("already used by ")[1][:6] for item in duplicates] == [
        "row 1,", "row 14", "row 27"]
    for got, want in zip(bulk, expected, strict=True):
        if got in duplicates:
            continue
        assert got == want, f"row {want.row}"
    problems = {item.row: item.problem.message for item in bulk if item.problem is not None}
    assert sorted(problems) == sorted(row + offset for offset in (0, 13, 26) for row in (3, 4, 5, 6, 9, 10))
    assert all(message.startswith(f"row {row} ") for row, message in problems.items())
    assert bulk[6].warnings and bulk[6].problem is None  # the long text keeps its warning


def test_bulk_plan_equals_item_by_item_plan(tmp_path: Path) -> None:
    source = _write_csv(tmp_path / "m.csv", _copies(2))
    reader = ManifestReader(source, "tts", batch_rows=5)
    items = list(reader)
    # done: row 1 ("a"), row 12 ("j"), and the id-less row 2 (named by its key)
    done_rows = [items[0], items[11], dataclasses.replace(items[1], item_id=key_of(items[1])[:16])]
    keys = [key_of(item) for item in done_rows]
    done = DoneIndex(keys, [item.item_id for item in done_rows])
    done.add(key_of(items[10]), items[10].item_id)  # finished in this run (the overlay)

    bulk_counts, plain_counts = PlanCounts(), PlanCounts()
    bulk = list(plan_items(ManifestReader(source, "tts", batch_rows=5), done, counts=bulk_counts))
    plain = list(plan_items(iter(items), done, counts=plain_counts))
    assert bulk == plain
    assert bulk_counts == plain_counts
    # rows 1, 2, 11, 12 and 13 (the same text and no id, as row 2) are done
    assert [bulk_counts.rows, bulk_counts.skipped_done, bulk_counts.pending] == [26, 5, 21]


def test_bulk_plan_skips_failed_ids_when_asked(tmp_path: Path) -> None:
    source = _write_csv(tmp_path / "m.csv", _copies(1))
    items = list(ManifestReader(source, "tts"))
    done = DoneIndex([], [])
    failed = {"a0", "g0", "h0"}
    bulk_counts, plain_counts = PlanCounts(), PlanCounts()
    bulk = list(plan_items(ManifestReader(source, "tts"), done, failed_ids=failed, retry_failed=False,
                           counts=bulk_counts))
    plain = list(plan_items(iter(items), done, failed_ids=failed, retry_failed=False, counts=plain_counts))
    assert bulk == plain and bulk_counts == plain_counts
    assert bulk_counts.skipped_failed == 3


def test_done_mask_agrees_with_done_as_on_keys_sharing_their_first_64_bits() -> None:
    base = item_key("higgs2p5", {}, "x")
    twin = base[:16] + ("0" if base[16] != "0" else "1") + base[17:]  # same first 64 bits, another key
    other = item_key("higgs2p5", {}, "y")
    done = DoneIndex([twin, base, other], ["t", "b", "o"])
    keys = [base, twin, other, other, item_key("higgs2p5", {}, "z")]
    ids = ["b", "t", "o", "not-o", "z"]
    assert done.done_mask(keys, ids).tolist() == [done.done_as(k, i) for k, i in zip(keys, ids, strict=True)]
    assert done.done_mask(keys, ids).tolist() == [True, True, True, False, False]


def test_scan_counts_rows_and_repeated_ids_from_the_id_column_of_parquet(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["x", "y", "x", None, "z", "y"], "text": ["t"] * 6}), path, row_group_size=2)
    scan = ManifestReader(str(path), "tts", batch_rows=2).scan()
    assert scan.rows == 6
    assert len(scan.repeated_ids) == 2  # x and y
    no_ids = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["t"] * 5}), no_ids)
    assert ManifestReader(str(no_ids), "tts").scan() == type(scan)(5, frozenset())


def test_bulk_plan_of_a_shard_equals_the_item_by_item_plan_of_its_slice(tmp_path: Path) -> None:
    from voxmill.jobs import Shard

    source = _write_csv(tmp_path / "m.csv", _copies(2))
    items = list(ManifestReader(source, "tts", batch_rows=7))
    seen = []
    for index in range(3):
        shard = Shard(index, 3)
        bulk_counts, plain_counts = PlanCounts(), PlanCounts()
        bulk = list(plan_items(ManifestReader(source, "tts", batch_rows=7, id_filter=shard.holds_id),
                               DoneIndex([], []), counts=bulk_counts, holds=shard.holds_id))
        # a repeated id's later row is refused in the shard of its id (the first row's), never dropped
        in_slice = [item for item in items if (shard.holds_id(item.item_id.split(" (duplicate")[0])
                                               if item.has_own_id else shard.holds(item))]
        plain = list(plan_items(iter(in_slice), DoneIndex([], []), counts=plain_counts))
        assert bulk == plain and bulk_counts == plain_counts
        seen += [planned.item.row for planned in bulk]
    assert sorted(seen) == list(range(1, 27))  # every row in exactly one shard


def test_nested_parquet_cells_are_read_row_by_row(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["One.", "Two."],
                             "params": pa.array([{"voice": "belinda"}, None],
                                                pa.struct([("voice", pa.string())]))}), path)
    reader = ManifestReader(str(path), "tts")
    bulk = list(reader)
    assert bulk == _row_by_row(str(path), reader)
    assert bulk[0].params["voice"] == "belinda" and "voice" not in bulk[1].params
