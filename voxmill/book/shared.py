"""Chunks shared by identity across the books of one output root: nothing spoken twice is paid for twice.

A book's folder is named after its file, but a chunk's identity is its key (model, effective parameters and
spoken text, :func:`voxmill.plan.key_of`). Before a book's chunks are sent, every chunk whose key this
folder's ledger does not hold is looked up in the ledgers of the other book folders under the same root
(``OUT/*/results.parquet``); a done row whose audio is still what it recorded is linked into this folder
and recorded in its ledger as reused (``reused_from`` = ``<folder>/<id>``). A renamed or moved copy of a
finished book therefore costs nothing, and an edited copy costs only the chunks whose text changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from voxmill.ledger import LEDGER_SCHEMA, RESULTS_FILE, Ledger, LedgerRow, read_results, utc_now
from voxmill.manifests import ManifestReader, RunDefaults


def _wanted_keys(manifest: Path, defaults: RunDefaults) -> dict[str, tuple[str, int]]:
    """key → (item id, manifest row) for every valid TTS row, keyed exactly as the engine keys it."""
    from voxmill.plan import key_of

    wanted: dict[str, tuple[str, int]] = {}
    for batch in ManifestReader(str(manifest), "tts", defaults).batches():
        for item in batch:
            if item.problem is None:
                wanted.setdefault(key_of(item), (item.item_id, item.row))
    return wanted


def _done_keys(out_dir: Path) -> set[str]:
    table = read_results(out_dir)
    if table.num_rows == 0:
        return set()
    table = table.select(["key", "status"])
    return set(table.filter(pc.equal(table["status"], "done"))["key"].to_pylist())


def _sibling_rows(root: Path, out_dir: Path, keys: set[str]) -> Iterator[tuple[Path, LedgerRow]]:
    """Done rows with one of ``keys`` in the other book folders under ``root`` (folders in name order)."""
    for sibling in sorted(p for p in root.iterdir() if p.is_dir() and p.resolve() != out_dir.resolve()):
        if not (sibling / RESULTS_FILE).exists() or not keys:
            continue
        table = read_results(sibling)
        table = table.filter(pc.and_(pc.equal(table["status"], "done"),
                                     pc.is_in(table["key"], pa.array(sorted(keys)))))
        for row in table.to_pylist():
            if row["key"] in keys and row.get("output_path"):
                yield sibling, LedgerRow(**{name: row.get(name) for name in LEDGER_SCHEMA.names})


def adopt_shared_chunks(out_dir: Path, manifest: Path, defaults: RunDefaults, root: Path | None = None) -> int:
    """Link chunks already made under ``root`` (default: ``out_dir``'s parent) into ``out_dir``'s ledger.

    Returns how many chunks were adopted; each is one request the run that follows does not send.
    """
    from voxmill.batch import _adopt_outputs, output_stem  # the engine's own naming and checked linking

    out_dir = Path(out_dir)
    root = Path(root) if root is not None else out_dir.parent
    if not root.is_dir():
        return 0
    wanted = _wanted_keys(manifest, defaults)
    done = _done_keys(out_dir)
    missing = {key: ident for key, ident in wanted.items() if key not in done}
    if not missing:
        return 0
    adopted: list[LedgerRow] = []
    for sibling, source_row in _sibling_rows(root, out_dir, set(missing)):
        if source_row.key not in missing:
            continue  # an earlier folder already gave it
        item_id, row_number = missing[source_row.key]
        source = sibling / source_row.output_path
        target = out_dir / "audio" / f"{output_stem(item_id)}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not _adopt_outputs([(source, target)], source_row):
            continue  # its audio is gone or no longer what its ledger says
        adopted.append(dataclasses.replace(
            source_row, id=item_id, row=row_number, output_path=str(target.relative_to(out_dir)),
            reused_from=f"{sibling.name}/{source_row.id}", attempts=0, latency_s=0.0, request_id=None,
            started_at=utc_now(), finished_at=utc_now(), run_id=None, flow_run_id=None,
        ))
        del missing[source_row.key]
    if adopted:
        ledger = Ledger(out_dir)
        ledger.lock()
        try:
            ledger.absorb(pa.Table.from_pylist([row.__dict__ for row in adopted], schema=LEDGER_SCHEMA))
        finally:
            ledger.close()
    return len(adopted)


def count_to_send(out_dir: Path, texts: list[str], defaults: RunDefaults, root: Path | None = None) -> int:
    """How many requests ``texts`` (spoken chunk texts) still need: keys neither ``out_dir`` nor a book folder
    beside it has made (identical texts count once)."""
    import tempfile

    from voxmill.ledger import write_table

    out_dir = Path(out_dir)
    root = Path(root) if root is not None else out_dir.parent
    with tempfile.TemporaryDirectory() as scratch:
        manifest = Path(scratch) / "chunks.parquet"
        write_table(pa.table({"id": [f"c{i}" for i in range(len(texts))], "text": texts}), manifest)
        wanted = _wanted_keys(manifest, defaults)
    made = _done_keys(out_dir) if out_dir.is_dir() else set()
    missing = set(wanted) - made
    if missing and root.is_dir():
        missing -= {row.key for _, row in _sibling_rows(root, out_dir, missing)}
    return len(missing)  # identical texts are one request: the engine reuses the first one's audio


__all__ = ["adopt_shared_chunks", "count_to_send"]
