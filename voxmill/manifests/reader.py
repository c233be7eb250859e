"""Rows to typed work items: :class:`ManifestReader` validates each row against the catalogue and the run's
defaults; a row that cannot be used becomes an item with a ``problem``; duplicate ids are found in 8 bytes a row."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from voxmill.catalog import ASR_MODELS, DEFAULT_TTS_MODEL, MODELS, TTS_MODELS, UPLOAD_FILE_TYPES, get_model, validate
from voxmill.errors import ConfigError, VoxmillError
from voxmill.identity import id_hash64
from voxmill.manifests.formats import DEFAULT_BATCH_ROWS, iter_record_batches

JobKind = Literal["tts", "asr"]

#: columns with a meaning of their own (not catalogue parameters)
RESERVED_COLUMNS = {
    "tts": {"id", "model", "params", "voice_ref", "text"},
    "asr": {"id", "model", "params", "audio", "reference_text"},
}
REQUIRED_COLUMN = {"tts": "text", "asr": "audio"}
_ALL_PARAMS = {p.name for m in MODELS.values() for p in m.params}


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
    #: read only rows whose id passes (a shard's slice): other rows with an id are skipped before they are
    #: validated or keyed; rows without an id are always read (their identity is their key)
    id_filter: Callable[[str], bool] | None = None

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
        seen = 0  # rows of earlier batches
        checked_columns = False
        first_row_of: dict[str, int] = {}  # only ids that are repeated
        for batch in iter_record_batches(self.source, self.batch_rows):
            if not checked_columns:
                self._check_columns(batch.schema.names)
                checked_columns = True
                if self.repeated_ids is None:
                    self.repeated_ids = repeated_id_hashes(self.source, self.batch_rows)
            items = []
            for row, values in self._rows(batch, seen):
                item = self.item_from_row(row, values)
                if item.has_own_id and self.repeated_ids and id_hash64(item.item_id) in self.repeated_ids:
                    first = first_row_of.setdefault(item.item_id, row)
                    if first != row:
                        item = _duplicate(item, first)
                items.append(item)
            seen += batch.num_rows
            yield items
        if not checked_columns:
            raise ConfigError(f"manifest {self.source!r} has no rows")

    def _rows(self, batch: pa.RecordBatch, before: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(row number, values) of the rows of ``batch`` to read, ``before`` rows having come earlier."""
        if self.id_filter is None or "id" not in batch.schema.names:
            yield from enumerate(batch.to_pylist(), start=before + 1)
            return
        wanted = self.id_filter
        # the id as item_from_row makes it (str of the cell's value), so the slice matches Shard.holds exactly
        keep = [i for i, value in enumerate(batch.column("id").to_pylist())
                if _cell(value) is None or wanted(str(_cell(value)))]
        if keep:
            rows = batch.take(pa.array(keep, pa.int64())).to_pylist()
            yield from ((before + 1 + i, values) for i, values in zip(keep, rows, strict=True))

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


__all__ = ["ItemProblem", "JobKind", "ManifestReader", "RunDefaults", "WorkItem", "find_duplicate_ids",
           "repeated_id_hashes"]
