"""Reading a manifest's rows as record batches: CSV (strict), JSONL, Parquet, or a corpus of audio files, from a
path or an fsspec URL, with every cell held to the input limits."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxmill.errors import ConfigError
from voxmill.limits import InputLimits, field_too_large
from voxmill.manifests.corpus import corpus_batches, is_corpus

#: rows per record batch: a manifest is never held whole
DEFAULT_BATCH_ROWS = 8192

def open_binary(source: str, what: str = "manifest"):
    """Open a local path or fsspec URL for reading bytes; ConfigError naming the source if it can't be."""
    try:
        return fsspec.open(source, "rb").open()
    except FileNotFoundError:
        raise ConfigError(f"{what} {source!r} does not exist") from None
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"cannot open {source!r}: {exc}") from None


_FORMAT_OF_SUFFIX = {
    ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
}


def manifest_format_suffix(source: str) -> str:
    """The suffix that names the manifest's type (``.csv`` of ``m.csv.gz``; ``.gz`` etc. are left to fsspec)."""
    suffixes = [s.lower() for s in PurePosixPath(source.split("?")[0]).suffixes]
    for suffix in reversed(suffixes):
        if suffix in _FORMAT_OF_SUFFIX:
            return suffix
    raise ConfigError(f"manifest {source!r}: unknown type; name it .csv, .tsv, .parquet or .jsonl")


def manifest_format(source: str) -> str:
    """csv, parquet or jsonl, from the file name (``.gz`` etc. are left to fsspec)."""
    return _FORMAT_OF_SUFFIX[manifest_format_suffix(source)]


def iter_record_batches(source: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Stream a manifest as record batches of string-typed (CSV, JSONL, corpus) or native (Parquet) columns."""
    if is_corpus(source):
        yield from corpus_batches(source, batch_rows)
        return
    fmt = manifest_format(source)
    if fmt == "parquet":
        with open_binary(source) as handle:
            try:
                for batch in parquet_batches(pq.ParquetFile(handle), batch_rows):
                    _check_cells(batch, source)
                    yield batch
            except (pa.ArrowException, OSError) as exc:
                raise ConfigError(
                    f"manifest {source!r} is not a readable Parquet file ({exc}); write it again, "
                    f"or give the rows as CSV or JSONL"
                ) from None
    elif fmt == "csv":
        yield from _csv_batches(source, batch_rows)
    else:
        yield from _jsonl_batches(source, batch_rows)


#: row groups up to this many rows are read whole (then cut into batches); bigger ones are streamed
_WHOLE_GROUP_ROWS = 1 << 18


def parquet_batches(parquet: pq.ParquetFile, batch_rows: int, columns: list[str] | None = None
                    ) -> Iterator[pa.RecordBatch]:
    """A Parquet file's rows as record batches, one row group at a time, on this thread.

    ``iter_batches`` reads ahead across row groups and the allocator keeps what it freed: streaming a
    10M-row file that way held ~70 MB more than one row group. Here each group is read, sliced, and its memory
    handed back to the system before the next one.
    """
    pool = pa.default_memory_pool()
    for group in range(parquet.metadata.num_row_groups):
        if parquet.metadata.row_group(group).num_rows <= _WHOLE_GROUP_ROWS:
            yield from parquet.read_row_group(group, columns=columns, use_threads=False).to_batches(batch_rows)
        else:
            yield from parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns,
                                            use_threads=False)
        pool.release_unused()


def _check_cells(batch: pa.RecordBatch, source: str) -> None:
    """LimitExceeded when a string or binary cell of a Parquet batch is over ``field_mb``."""
    limits = InputLimits.from_env()
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_string(column.type) or pa.types.is_binary(column.type) or pa.types.is_large_string(
                column.type):
            lengths = pc.binary_length(column)
            longest = pc.max(lengths).as_py() if len(column) else None
            if longest is not None and longest > limits.bytes_of("field_mb"):
                raise field_too_large(f"manifest {source!r} column {name!r}", longest, limits)


def _csv_batches(source: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """CSV/TSV rows as string columns (empty cells null), with Python's C csv parser in strict mode.

    Every problem is a ConfigError naming the file, the line and the fix: bytes that are not UTF-8 (on
    any line), a row with more or fewer cells than the header (an unquoted comma), a quote that is never
    closed (never a silent merge of the following rows).
    """
    delimiter = "\t" if manifest_format_suffix(source) == ".tsv" else ","
    where = f"manifest {source!r}"
    limits = InputLimits.from_env()
    csv.field_size_limit(limits.bytes_of("field_mb"))  # in characters: a cell is refused past it, never read whole
    with open_binary(source) as handle:
        reader = csv.reader(io.TextIOWrapper(handle, encoding="utf-8-sig", newline=""), delimiter=delimiter,
                            strict=True)
        previous_line = 0  # where the last record ended: the next one starts on the line after
        try:
            header = next(reader, None)
            if not header or not any(c.strip() for c in header):
                raise ConfigError(f"{where} is empty: it needs a header row (e.g. id,text)")
            columns = [c.strip() for c in header]
            width = len(columns)
            rows: list[list[str]] = []
            previous_line = reader.line_num
            for values in reader:
                if len(values) != width:
                    if values:
                        raise ConfigError(_cell_count_message(where, previous_line + 1, len(values), columns,
                                                              delimiter))
                    previous_line = reader.line_num  # a blank line
                    continue
                rows.append(values)
                previous_line = reader.line_num
                if len(rows) >= batch_rows:
                    yield _string_batch(columns, rows)
                    rows = []
        except UnicodeDecodeError:
            raise _not_utf8_error(source) from None
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                raise field_too_large(f"{where} line {reader.line_num}", limits.bytes_of("field_mb"), limits) from None
            if "end of data" in str(exc):
                raise ConfigError(
                    f"{where} line {previous_line + 1}: a quoted value opened on this line is never closed, so "
                    f"every line after it would merge into one text; close the quote (write a quote inside a "
                    f"quoted text as two quotes: \"\")"
                ) from None
            raise ConfigError(
                f"{where} line {reader.line_num}: not valid CSV ({exc}); quote values that hold the delimiter, "
                f"quotes or line breaks, and double any quote inside a quoted value"
            ) from None
    if rows:
        yield _string_batch(columns, rows)


def _not_utf8_error(source: str) -> ConfigError:
    """The error for a file that is not UTF-8, naming the first bad line and byte (a second, rare pass)."""
    with open_binary(source) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return ConfigError(
                    f"manifest {source!r} line {number} is not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                    f"{exc.start + 1}, perhaps cp1252/latin-1); re-save the file as UTF-8 "
                    f"(e.g. `iconv -f cp1252 -t utf-8 in.csv > out.csv`)"
                )
    return ConfigError(f"manifest {source!r} is not UTF-8 text; re-save the file as UTF-8")


def _cell_count_message(where: str, line: int, count: int, columns: list[str], delimiter: str) -> str:
    name = "tab" if delimiter == "\t" else "comma"
    fix = (f"a {name} inside a value needs the value in double quotes (\"like{delimiter} this\")"
           if count > len(columns) else "every row needs a value (or an empty cell) for each column")
    return f"{where} line {line}: {count} cells where the header has {len(columns)} ({', '.join(columns)}); {fix}"


def _string_batch(columns: list[str], rows: list[list[str]]) -> pa.RecordBatch:
    # a list, not zip's tuple: pyarrow converts lists ~40x faster; an empty cell is null
    arrays = [pa.array([value or None for value in values], pa.string()) for values in zip(*rows, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, names=columns)


#: what a folder given as an ASR corpus contributes: files with these suffixes (any case)


def _jsonl_batches(source: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    rows: list[dict[str, Any]] = []
    limits = InputLimits.from_env()
    max_line = limits.bytes_of("field_mb")
    with open_binary(source) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
        line_number = 0
        try:
            while line := text.readline(max_line + 1):  # bounded: a line with no end is never read whole
                line_number += 1
                if len(line) > max_line:
                    raise field_too_large(f"manifest {source!r} line {line_number}", max_line, limits)
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    value = {"__problem__": f"line {line_number} is not valid JSON ({exc.msg})"}
                if not isinstance(value, dict):
                    value = {"__problem__": f"line {line_number} is not a JSON object"}
                rows.append({k: _jsonl_cell(v) for k, v in value.items()})
                if len(rows) >= batch_rows:
                    yield pa.RecordBatch.from_pylist(rows)
                    rows = []
        except UnicodeDecodeError:
            raise ConfigError(f"manifest {source!r} line {line_number + 1} is not UTF-8; re-save it as UTF-8") from None
    if rows:
        yield pa.RecordBatch.from_pylist(rows)


def _jsonl_cell(value: Any) -> Any:
    # nested objects travel as JSON text so every batch has a stable, simple schema
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None or isinstance(value, str):
        return value
    return str(value) if not isinstance(value, bool) else ("true" if value else "false")





__all__ = ["DEFAULT_BATCH_ROWS", "iter_record_batches", "manifest_format", "manifest_format_suffix", "open_binary",
           "parquet_batches"]
