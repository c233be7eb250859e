"""Manifests: CSV, Parquet and JSONL lists of work, read as a stream of typed items.

A manifest is never held whole: rows arrive in record batches (pyarrow for CSV and Parquet, line by
line for JSONL) and become :class:`WorkItem` records. A row that cannot be used becomes an item with a
``problem`` (naming the row, the column and the fix), so the run records it as a failure and goes on;
a manifest that cannot be read at all is a :class:`ConfigError` before any request.

Columns
- TTS: ``text`` (required), ``id``, ``model``, ``voice_ref`` (a WAV/MP3 to upload once and use as
  ``voice_id``), any catalogue parameter of the model as its own column, or ``params`` (a JSON object).
- ASR: ``audio`` (required: path or fsspec URL), ``id``, ``model``, ``language``, ``reference_text``.
Precedence: a row's own column, then its ``params`` JSON, then the run's defaults. Empty cells count as
absent. Columns that are no parameter of any model are ignored (reported once).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from voxmill.catalog import ASR_MODELS, DEFAULT_TTS_MODEL, MODELS, TTS_MODELS, UPLOAD_FILE_TYPES, get_model, validate
from voxmill.errors import ConfigError, VoxmillError
from voxmill.identity import id_hash64

JobKind = Literal["tts", "asr"]

#: columns with a meaning of their own (not catalogue parameters)
RESERVED_COLUMNS = {
    "tts": {"id", "model", "params", "voice_ref", "text"},
    "asr": {"id", "model", "params", "audio", "reference_text"},
}
REQUIRED_COLUMN = {"tts": "text", "asr": "audio"}
_ALL_PARAMS = {p.name for m in MODELS.values() for p in m.params}
DEFAULT_BATCH_ROWS = 8192


@dataclass(frozen=True)
class RunDefaults:
    """What the run fills in where a row leaves a cell empty."""

    model: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    text_hard_limit: int | None = None


@dataclass(frozen=True)
class ItemProblem:
    """Why a row cannot be sent: an error kind for the ledger and a message naming row and column."""

    kind: str
    message: str


@dataclass(frozen=True)
class WorkItem:
    """One unit of work from one manifest row: validated parameters, or the problem that stops it."""

    item_id: str
    row: int
    kind: JobKind
    model: str
    #: validated, coerced parameters (TTS: includes ``text``; ASR: excludes ``file``)
    params: Mapping[str, Any]
    audio: str | None = None
    voice_ref: str | None = None
    reference_text: str | None = None
    problem: ItemProblem | None = None
    warnings: tuple[str, ...] = ()
    #: whether the id came from the manifest (else it is derived from the item key)
    has_own_id: bool = True

    @property
    def label(self) -> str:
        """How messages name this item."""
        return f"row {self.row} (id {self.item_id!r})"


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
        yield from _corpus_batches(source, batch_rows)
        return
    fmt = manifest_format(source)
    if fmt == "parquet":
        with open_binary(source) as handle:
            try:
                yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_rows)
            except (pa.ArrowException, OSError) as exc:
                raise ConfigError(
                    f"manifest {source!r} is not a readable Parquet file ({exc}); write it again, "
                    f"or give the rows as CSV or JSONL"
                ) from None
    elif fmt == "csv":
        yield from _csv_batches(source, batch_rows)
    else:
        yield from _jsonl_batches(source, batch_rows)


def _csv_batches(source: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """CSV/TSV rows as string columns (empty cells null), with Python's C csv parser in strict mode.

    Every problem is a ConfigError naming the file, the line and the fix: bytes that are not UTF-8 (on
    any line), a row with more or fewer cells than the header (an unquoted comma), a quote that is never
    closed (never a silent merge of the following rows).
    """
    delimiter = "\t" if manifest_format_suffix(source) == ".tsv" else ","
    where = f"manifest {source!r}"
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
CORPUS_AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".webm", ".aac", ".mp4"})
_GLOB_MAGIC = re.compile(r"[*?\[]")


def is_corpus(source: str) -> bool:
    """Whether ``source`` is a local folder or glob of audio files (an ASR corpus) rather than a manifest file."""
    if "://" in source:
        return False
    return bool(_GLOB_MAGIC.search(source)) or Path(source).is_dir()


def iter_corpus(source: str) -> Iterator[tuple[str, Path]]:
    """(id, path) of each file of a folder (audio suffixes only) or glob (``'corpus/**/*.flac'``), streamed
    in a stable order (names sorted at each level, hidden entries skipped); ids are paths relative to the
    folder, or to the glob's fixed leading folders."""
    parts = PurePosixPath(source).parts
    fixed = next((i for i, part in enumerate(parts) if _GLOB_MAGIC.search(part)), len(parts))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    pattern = "/".join(parts[fixed:])
    matches = _glob_regex(pattern).match if pattern else None
    depth = None if not pattern or "**" in pattern else pattern.count("/") + 1
    if not base.is_dir():
        raise ConfigError(f"corpus {source!r}: folder {str(base)!r} does not exist")
    for relative, path in _walk_sorted(base, "", depth):
        if matches(relative) if matches else path.suffix.lower() in CORPUS_AUDIO_SUFFIXES:
            yield relative, path


def _walk_sorted(folder: Path, prefix: str, depth: int | None) -> Iterator[tuple[str, Path]]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise ConfigError(f"corpus folder {str(folder)!r} cannot be listed: {exc.strerror}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        relative = prefix + entry.name
        if entry.is_dir():
            if depth is None or depth > 1:
                yield from _walk_sorted(Path(entry.path), relative + "/", None if depth is None else depth - 1)
        elif entry.is_file():
            yield relative, Path(entry.path)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over relative POSIX paths as a regex: ``**`` spans folders, ``*`` and ``?`` stay within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _corpus_batches(source: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    ids: list[str] = []
    paths: list[str] = []
    found = 0
    for item_id, path in iter_corpus(source):
        found += 1
        ids.append(item_id)
        paths.append(str(path))
        if len(ids) >= batch_rows:
            yield pa.RecordBatch.from_arrays([pa.array(ids, pa.string()), pa.array(paths, pa.string())],
                                             names=["id", "audio"])
            ids, paths = [], []
    if ids:
        yield pa.RecordBatch.from_arrays([pa.array(ids, pa.string()), pa.array(paths, pa.string())],
                                         names=["id", "audio"])
    if not found:
        raise ConfigError(f"corpus {source!r} matched no audio files; check the folder or quote the glob "
                          f"('corpus/**/*.flac') so the shell does not expand it")


def _jsonl_batches(source: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    rows: list[dict[str, Any]] = []
    with open_binary(source) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
        line_number = 0
        try:
            for line in text:
                line_number += 1
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


@dataclass
class ManifestReader:
    """Turns a manifest into WorkItems, row by row, validating each against the catalogue."""

    source: str
    kind: JobKind
    defaults: RunDefaults = field(default_factory=RunDefaults)
    batch_rows: int = DEFAULT_BATCH_ROWS
    ignored_columns: set[str] = field(default_factory=set)
    #: hashes of ids used more than once (found by a first pass when iteration starts); None: not yet known
    repeated_ids: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if self.defaults.model is not None:
            allowed = TTS_MODELS if self.kind == "tts" else ASR_MODELS
            if self.defaults.model not in allowed:
                raise ConfigError(
                    f"model {self.defaults.model!r} cannot {'synthesize' if self.kind == 'tts' else 'transcribe'}; "
                    f"choose one of {', '.join(allowed)}"
                )

    def check_header(self) -> None:
        """Read the first batch only: the file opens, parses and has the required column (ConfigError if not)."""
        for batch in iter_record_batches(self.source, self.batch_rows):
            self._check_columns(batch.schema.names)
            return
        raise ConfigError(f"manifest {self.source!r} has no rows")

    def batches(self) -> Iterator[list[WorkItem]]:
        """Items in manifest order, a record batch at a time.

        An id used again after its first row makes that later row a ``duplicate_id`` problem (the first
        one runs); the later row's ledger id is suffixed so it never overwrites the first one's outcome.
        """
        row = 0
        checked_columns = False
        first_row_of: dict[str, int] = {}  # only ids that are repeated
        for batch in iter_record_batches(self.source, self.batch_rows):
            if not checked_columns:
                self._check_columns(batch.schema.names)
                checked_columns = True
                if self.repeated_ids is None:
                    self.repeated_ids = repeated_id_hashes(self.source, self.batch_rows)
            items = []
            for values in batch.to_pylist():
                row += 1
                item = self.item_from_row(row, values)
                if item.has_own_id and self.repeated_ids and id_hash64(item.item_id) in self.repeated_ids:
                    first = first_row_of.setdefault(item.item_id, row)
                    if first != row:
                        item = _duplicate(item, first)
                items.append(item)
            yield items
        if not checked_columns:
            raise ConfigError(f"manifest {self.source!r} has no rows")

    def __iter__(self) -> Iterator[WorkItem]:
        for items in self.batches():
            yield from items

    def _check_columns(self, names: list[str]) -> None:
        required = REQUIRED_COLUMN[self.kind]
        if required not in names:
            raise ConfigError(
                f"manifest {self.source!r} has no {required!r} column (columns: {', '.join(names)}); "
                f"a {'TTS' if self.kind == 'tts' else 'ASR'} manifest needs one"
            )
        self.ignored_columns = {
            n for n in names if n not in RESERVED_COLUMNS[self.kind] and n not in _ALL_PARAMS and n != "__problem__"
        }

    def item_from_row(self, row: int, values: Mapping[str, Any]) -> WorkItem:
        """One WorkItem from one row; never raises for a bad row (the item carries the problem)."""
        item_id = _cell(values.get("id"))
        has_own_id = item_id is not None
        item_id = str(item_id) if has_own_id else f"row-{row}"
        model = _cell(values.get("model")) or self.defaults.model or _default_model(self.kind)
        base = dict(item_id=item_id, row=row, kind=self.kind, model=str(model), params={}, has_own_id=has_own_id)
        if values.get("__problem__"):
            return WorkItem(**base, problem=ItemProblem("manifest", f"row {row}: {values['__problem__']}"))
        try:
            params = self._params(row, values)
            return self._validated(base, row, values, params)
        except VoxmillError as exc:
            return WorkItem(**base, problem=ItemProblem(exc.kind, f"row {row} (id {item_id!r}): {exc.message}"))

    def _params(self, row: int, values: Mapping[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {k: v for k, v in self.defaults.params.items() if v is not None}
        raw_json = _cell(values.get("params"))
        if raw_json is not None:
            try:
                extra = json.loads(raw_json) if isinstance(raw_json, str) else raw_json
            except json.JSONDecodeError as exc:
                raise ConfigError(f"column 'params' is not valid JSON ({exc.msg})") from None
            if not isinstance(extra, dict):
                raise ConfigError("column 'params' must hold a JSON object")
            params.update({k: v for k, v in extra.items() if v is not None})
        for name, value in values.items():
            if name in _ALL_PARAMS and name not in ("file",) and _cell(value) is not None:
                params[name] = value
        return params

    def _validated(self, base: dict[str, Any], row: int, values: Mapping[str, Any], params: dict[str, Any]) -> WorkItem:
        model = base["model"]
        spec = get_model(model)
        if spec.kind != self.kind:
            raise ConfigError(
                f"model {model!r} is a {spec.kind.upper()} model, but this is a {self.kind.upper()} manifest"
            )
        if self.kind == "tts":
            text = values.get("text")
            params["text"] = "" if text is None else str(text)
            voice_ref = _cell(values.get("voice_ref"))
            if voice_ref is not None:
                suffix = PurePosixPath(str(voice_ref)).suffix.lower().lstrip(".")
                if suffix not in UPLOAD_FILE_TYPES:
                    raise ConfigError(
                        f"column 'voice_ref' = {voice_ref!r}: a voice reference must be one of "
                        f"{', '.join(UPLOAD_FILE_TYPES)}"
                    )
                if "voice_id" in params:
                    raise ConfigError("give either 'voice_ref' or 'voice_id', not both")
                # the uploaded reference becomes a voice_id: validate as if it were there
                params["voice_id"] = "voice-ref-pending"
            request = validate(model, params, text_hard_limit=self.defaults.text_hard_limit)
            validated = dict(request.params)
            if voice_ref is not None:
                del validated["voice_id"]
            return WorkItem(**{**base, "params": validated}, voice_ref=voice_ref, warnings=request.warnings)
        audio = _cell(values.get("audio"))
        if audio is None:
            raise ConfigError("column 'audio' is empty: give the path or URL of the audio file")
        # the file itself is checked (exists, decodes, converted if needed) when the item is prepared
        request = validate(model, {**params, "file": b""})
        validated = {k: v for k, v in request.params.items() if k != "file"}
        return WorkItem(
            **{**base, "params": validated},
            audio=str(audio),
            reference_text=_cell(values.get("reference_text")),
            warnings=request.warnings,
        )


def _duplicate(item: WorkItem, first_row: int) -> WorkItem:
    message = (f"{item.label}: the id {item.item_id!r} is already used by row {first_row}, which runs; "
               f"this row does not (give it an id of its own to run it)")
    return replace(item, item_id=f"{item.item_id} (duplicate, row {item.row})", params={},
                   problem=ItemProblem("duplicate_id", message))


def _default_model(kind: JobKind) -> str:
    return DEFAULT_TTS_MODEL if kind == "tts" else ASR_MODELS[0]


def _cell(value: Any) -> Any:
    """None for empty cells (None, "", whitespace-free NaN), else the value."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() != "" else None
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def repeated_id_hashes(source: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> frozenset[int]:
    """64-bit hashes of the ids that occur more than once: one streaming pass holding 8 bytes per row."""
    chunks = []
    for batch in iter_record_batches(source, batch_rows):
        if "id" not in batch.schema.names:
            return frozenset()
        ids = batch.column("id").cast(pa.string()).to_pylist()
        chunks.append(np.fromiter((id_hash64(v) for v in ids if _cell(v) is not None), dtype=np.uint64))
    if not chunks:
        return frozenset()
    hashes = np.concatenate(chunks)
    del chunks
    hashes.sort()  # in place: the pass peaks at 16 bytes per row, then holds only the repeated ones
    return frozenset(int(h) for h in np.unique(hashes[1:][hashes[1:] == hashes[:-1]]))


def find_duplicate_ids(source: str, kind: JobKind, batch_rows: int = DEFAULT_BATCH_ROWS) -> list[str]:
    """Ids that appear more than once, sorted (a second pass names them only when there are any)."""
    repeated = repeated_id_hashes(source, batch_rows)
    if not repeated:
        return []
    counts: dict[str, int] = {}
    for batch in iter_record_batches(source, batch_rows):
        for value in batch.column("id").cast(pa.string()).to_pylist():
            if _cell(value) is not None and id_hash64(value) in repeated:
                counts[value] = counts.get(value, 0) + 1
    return sorted(n for n, c in counts.items() if c > 1)


__all__ = [
    "DEFAULT_BATCH_ROWS",
    "ItemProblem",
    "JobKind",
    "ManifestReader",
    "RunDefaults",
    "WorkItem",
    "find_duplicate_ids",
    "is_corpus",
    "iter_corpus",
    "repeated_id_hashes",
    "iter_record_batches",
    "manifest_format",
    "open_binary",
]
