"""What an output directory holds: counts, failures by kind, audio hours (``voxmill status``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc

from voxmill.bucket import is_url, read_results_at
from voxmill.errors import ConfigError


@dataclass(frozen=True)
class OutDirReport:
    """Counts of an output directory's ledger and a readable text of them."""

    done: int
    failed: int
    #: rows of the job's manifest (None when the output holds no job.json or the manifest is gone)
    rows: int | None
    #: manifest rows with no outcome recorded yet (None when ``rows`` is)
    not_sent: int | None
    audio_hours: float
    failures_by_kind: dict[str, int]
    engines: dict[str, int]
    text: str


def describe_out_dir(out_dir: Path | str, *, failures: int = 10) -> OutDirReport:
    """Read the ledger of ``out_dir`` (a path or URL; journals or segments of a killed run included) and
    summarise it."""
    url = is_url(out_dir)
    if not url and not Path(out_dir).exists():
        raise ConfigError(f"{out_dir} does not exist")
    table = read_results_at(out_dir if url else Path(out_dir))
    if table.num_rows == 0:
        raise ConfigError(f"{out_dir} holds no results yet (no results.parquet or journal)")
    statuses = Counter(table["status"].to_pylist())
    failed = table.filter(pc.equal(table["status"], "failed"))
    by_kind = Counter(failed["error_kind"].to_pylist())
    done = table.filter(pc.equal(table["status"], "done"))
    seconds = pc.sum(done["duration_s"]).as_py() or 0.0
    engines = Counter(e or "?" for e in done["engine"].to_pylist())
    rows = manifest_rows(out_dir if url else Path(out_dir))
    not_sent = None if rows is None else max(0, rows - table.num_rows)
    counted = (f"{not_sent} not yet sent, of {rows} rows" if rows is not None
               else f"{table.num_rows} items; the job's manifest cannot be read")
    lines = [
        f"{out_dir}: {statuses.get('done', 0)} done, {statuses.get('failed', 0)} failed, {counted}; "
        f"audio {seconds / 3600:.3f} h",
    ]
    if engines:
        lines.append("engines: " + ", ".join(f"{name} ×{count}" for name, count in engines.most_common()))
    qc_flags = Counter(f for cell in done["qc_flags"].to_pylist() if cell for f in cell.split(","))
    if qc_flags:
        lines.append("transcripts flagged by QC (qc_flags column): "
                     + ", ".join(f"{k} ×{n}" for k, n in qc_flags.most_common()))
    if by_kind:
        lines.append("failures by kind: " + ", ".join(f"{k} ×{n}" for k, n in by_kind.most_common()))
        for row in failed.select(["id", "error_kind", "error_message"]).slice(0, failures).to_pylist():
            lines.append(f"  {row['id']}: [{row['error_kind']}] {row['error_message']}")
        if failed.num_rows > failures:
            lines.append(f"  … {failed.num_rows - failures} more in failures.parquet")
    from voxmill.book.qc import describe_book  # an audiobook folder adds its title, hours and QC

    if not url:
        lines += describe_book(Path(out_dir))
    return OutDirReport(
        done=statuses.get("done", 0),
        failed=statuses.get("failed", 0),
        rows=rows,
        not_sent=not_sent,
        audio_hours=seconds / 3600,
        failures_by_kind=dict(by_kind),
        engines=dict(engines),
        text="\n".join(lines),
    )


def manifest_rows(out_dir: Path | str) -> int | None:
    """Rows of the manifest the job in ``out_dir`` was run on (its job.json), or None when unknown.

    A shard's folder counts its share of the rows (the manifest filtered by the shard, one pass).
    """
    from voxmill.jobs import count_rows, load_job_record

    try:
        request = load_job_record(out_dir)
        if request.shard is None:
            return count_rows(request.manifest)
        from voxmill.manifests import ManifestReader

        return sum(1 for item in ManifestReader(request.manifest, request.kind, request.defaults)
                   if request.shard.holds(item))
    except (ConfigError, OSError, KeyError, ValueError):
        return None


__all__ = ["OutDirReport", "describe_out_dir", "manifest_rows"]
