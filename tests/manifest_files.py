"""Writing test manifests in each supported format (one helper for every test module)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def write_manifest(path: Path, rows: list[dict[str, Any]], fieldnames: list[str] | None = None) -> Path:
    """Write ``rows`` as CSV, Parquet or JSONL, chosen by ``path``'s suffix; returns ``path``."""
    fmt = Path(path).suffix.lstrip(".")
    if fmt == "csv":
        names = fieldnames or list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=names)
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "jsonl":
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        raise ValueError(f"no test writer for {fmt!r}")
    return path
