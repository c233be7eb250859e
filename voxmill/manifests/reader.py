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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxmill.catalog import (
    ASR_MODELS,
    DEFAULT_TTS_MODEL,
    FORBIDDEN_CONTROL_RE2,
    MODELS,
    TTS_MODELS,
    UPLOAD_FILE_TYPES,
    get_model,
    validate,
)
from voxmill.errors import ConfigError, VoxmillError
from voxmill.identity import HashBuffer, id_hash64, id_hashes64
from voxmill.manifests.corpus import is_corpus
from voxmill.manifests.formats import (
    DEFAULT_BATCH_ROWS,
    iter_record_batches,
    manifest_format,
    open_binary,
    parquet_batches,
)

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


@dataclass(frozen=True)
class ItemTemplate:
    """What many TTS rows share: the model and the validated parameters other than the text."""

    model: str
    params: Mapping[str, Any]


@dataclass
class RowBatch:
    """One record batch of a manifest, read and validated but not yet turned into :class:`WorkItem` records.

    A TTS row whose cells besides id and text were already validated for another row is held as (template,
    text): planning can key it and skip it as done without building an item. Every other row (a problem, a
    warning, a voice reference, a duplicate id, any ASR row) is held as its item.
    """

    kind: JobKind
    rows: list[int]
    #: the item ids (``row-N`` where the manifest gives none), and whether the manifest gave them
    ids: list[str]
    own_ids: list[bool]
    #: per row: the index of its template and its text, or -1 / None where ``items`` holds the row
    template_of: list[int]
    texts: list[str | None]
    templates: list[ItemTemplate]
    items: dict[int, WorkItem]

    def __len__(self) -> int:
        return len(self.rows)

    def item(self, index: int, item_id: str | None = None) -> WorkItem:
        """The item of the ``index``-th row (named ``item_id`` instead of its id when given)."""
        built = self.items.get(index)
        if built is not None:
            return built if item_id is None else replace(built, item_id=item_id)
        template = self.templates[self.template_of[index]]
        # the fields set at once (a frozen dataclass's __init__ sets them one by one: a third of a big plan's time);
        # the tests hold these items equal to item_from_row's
        item = object.__new__(WorkItem)
        item.__dict__.update(item_id=item_id or self.ids[index], row=self.rows[index], kind=self.kind,
                             model=template.model, params={**template.params, "text": self.texts[index]},
                             audio=None, voice_ref=None, reference_text=None, problem=None, warnings=(),
                             has_own_id=self.own_ids[index])
        return item

    def _hold(self, index: int, item: WorkItem) -> None:
        self.items[index] = item
        self.ids.append(item.item_id)
        self.own_ids.append(item.has_own_id)
        self.template_of.append(-1)
        self.texts.append(None)


#: distinct combinations of cells besides id and text a reader validates once; rows past them are read one by one
_TEMPLATE_CACHE = 4096
#: the cells validated row by row (every other cell makes up the row's template)
_ROW_OWN = ("id", "text")


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
        """Items in manifest order, a record batch at a time (see :meth:`row_batches`)."""
        for batch in self.row_batches():
            yield [batch.item(i) for i in range(len(batch))]

    def row_batches(self) -> Iterator[RowBatch]:
        """Rows in manifest order, a record batch at a time, validated but not yet made items.

        An id used again after its first row makes that later row a ``duplicate_id`` problem (the first
        one runs); the later row's ledger id is suffixed so it never overwrites the first one's outcome.
        The ids used more than once come from :meth:`scan`, run before the first batch unless
        ``repeated_ids`` is given.
        """
        seen = 0  # rows of earlier batches
        checked_columns = False
        first_row_of: dict[str, int] = {}  # only ids that are repeated
        templates: dict[tuple[Any, ...], int | None] = {}  # cells besides id and text → template (None: row by row)
        template_list: list[ItemTemplate] = []
        for batch in iter_record_batches(self.source, self.batch_rows):
            if not checked_columns:
                self._check_columns(batch.schema.names)
                checked_columns = True
                if self.repeated_ids is None:
                    self.repeated_ids = self.scan().repeated_ids
            rows = self._row_batch(batch, seen, templates, template_list)
            if self.repeated_ids:
                self._mark_duplicates(rows, first_row_of)
            seen += batch.num_rows
            yield rows
        if not checked_columns:
            raise ConfigError(f"manifest {self.source!r} has no rows")

    def scan(self) -> ManifestScan:
        """One streaming pass before the first request: the rows (all of them, not a shard's slice) and the ids
        used more than once. A CSV or JSONL manifest is parsed whole, so a parse error anywhere stops the job
        before it sends anything; of a Parquet file only the ``id`` column is read (its footer counts the rows)."""
        rows = 0
        hashes = HashBuffer(_rows_hint(self.source))
        for ids in iter_id_cells(self.source, self.batch_rows):
            rows += len(ids)
            if ids.null_count == len(ids):
                continue
            hashes.add(id_hashes64(_given_ids(ids.cast(pa.string()))))
        return ManifestScan(rows, _repeated(hashes.take()))

    def _row_batch(self, batch: pa.RecordBatch, before: int, templates: dict[tuple[Any, ...], int | None],
                   template_list: list[ItemTemplate]) -> RowBatch:
        """The rows of ``batch`` to read (a shard's slice of them), ``before`` rows having come earlier."""
        names = batch.schema.names
        row_numbers = list(range(before + 1, before + 1 + batch.num_rows))
        if self.id_filter is not None and "id" in names:
            wanted = self.id_filter
            # the id as item_from_row makes it (str of the cell's value), so the slice matches Shard.holds exactly
            keep = [i for i, value in enumerate(batch.column("id").to_pylist())
                    if _cell(value) is None or wanted(str(_cell(value)))]
            batch = batch.take(pa.array(keep, pa.int64()))
            row_numbers = [before + 1 + i for i in keep]
        out = RowBatch(self.kind, row_numbers, [], [], [], [], template_list, {})
        if self.kind != "tts" or "voice_ref" in names or "__problem__" in names or any(
                pa.types.is_nested(field.type) for field in batch.schema):  # (nested cells cannot key a template)
            for index, (row, values) in enumerate(zip(row_numbers, batch.to_pylist(), strict=True)):
                out._hold(index, self.item_from_row(row, values))
            return out
        count = batch.num_rows
        shared = [n for n in names if n not in _ROW_OWN]
        cells = list(zip(*(batch.column(n).to_pylist() for n in shared), strict=True)) if shared else [()] * count

        def slot_of(signature: tuple[Any, ...]) -> int | None:
            slot = templates.get(signature, -1)
            if slot != -1:
                return slot
            if len(templates) >= _TEMPLATE_CACHE:
                return None
            template = self._template(dict(zip(shared, signature, strict=True)))
            if template is not None:
                template_list.append(template)
            templates[signature] = slot = len(template_list) - 1 if template is not None else None
            return slot

        slots = [slot_of(signature) for signature in cells] if shared else [slot_of(())] * count
        ids = batch.column("id").to_pylist() if "id" in names else [None] * count
        given = [_cell(value) for value in ids]
        out.ids = [f"row-{row}" if value is None else str(value) for value, row in zip(given, row_numbers,
                                                                                        strict=True)]
        out.own_ids = [value is not None for value in given]
        out.template_of = [-1 if slot is None else slot for slot in slots]
        text_column = batch.column("text")
        out.texts = text_column.to_pylist()
        # the rows whose text surely passes check_text with no warning go by their template; the others (and the
        # rows whose cells did not validate) are read one by one, so their problems and warnings are the usual ones
        limits = {slot: self._text_limit(template_list[slot].model) for slot in set(slots) if slot is not None}
        limit = (np.array([limits.get(slot, -1) for slot in slots], dtype=np.int64) if shared
                 else np.full(count, limits.get(slots[0], -1) if count else -1, dtype=np.int64))
        usable = _plain_texts(text_column) & (_lengths(text_column) <= limit)
        for index in np.flatnonzero(~usable).tolist():
            values = dict(zip(shared, cells[index], strict=True))
            values["id"], values["text"] = ids[index], out.texts[index]
            item = self.item_from_row(row_numbers[index], values)
            out.items[index] = item
            out.ids[index], out.own_ids[index] = item.item_id, item.has_own_id
            out.template_of[index], out.texts[index] = -1, None
        return out

    def _text_limit(self, model: str) -> int:
        """The longest text of ``model`` that passes with no warning (what check_text allows silently)."""
        spec = get_model(model)
        hard = self.defaults.text_hard_limit if self.defaults.text_hard_limit is not None else spec.text_hard_limit
        limits = [limit for limit in (hard, spec.text_soft_limit) if limit is not None]
        return min(limits) if limits else 2**62

    def _template(self, values: dict[str, Any]) -> ItemTemplate | None:
        """What rows with these cells besides id and text share; None when the cells do not validate (each such
        row is then read on its own, so its problem names it)."""
        model = str(_cell(values.get("model")) or self.defaults.model or _default_model(self.kind))
        try:
            if get_model(model).kind != self.kind:
                return None
            params = self._params(0, values)
            params["text"] = "x"  # a stand-in: the rules between parameters never look at the text
            request = validate(model, params, text_hard_limit=self.defaults.text_hard_limit)
        except VoxmillError:
            return None
        if request.warnings:
            return None
        return ItemTemplate(model, {k: v for k, v in request.params.items() if k != "text"})

    def _mark_duplicates(self, rows: RowBatch, first_row_of: dict[str, int]) -> None:
        """Make each repeat of an id after its first row a ``duplicate_id`` item."""
        repeated = np.fromiter(self.repeated_ids or (), dtype=np.uint64)
        own = np.array(rows.own_ids, dtype=bool)
        for index in np.flatnonzero(np.isin(id_hashes64(rows.ids), repeated) & own).tolist():
            item_id, row = rows.ids[index], rows.rows[index]
            first = first_row_of.setdefault(item_id, row)
            if first != row:
                item = _duplicate(rows.item(index), first)
                rows.items[index] = item
                rows.ids[index] = item.item_id
                rows.template_of[index] = -1
                rows.texts[index] = None

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


@dataclass(frozen=True)
class ManifestScan:
    """What one pass over a whole manifest tells before a job starts."""

    rows: int
    #: 64-bit hashes (:func:`voxmill.identity.id_hash64`) of the ids used more than once
    repeated_ids: frozenset[int]


def iter_id_cells(source: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.Array]:
    """The ``id`` cells of a manifest a batch at a time (nulls where it has no ``id`` column); of a Parquet file
    only that column is read."""
    if not is_corpus(source) and manifest_format(source) == "parquet":
        with open_binary(source) as handle:
            try:
                parquet = pq.ParquetFile(handle)
                if "id" not in parquet.schema_arrow.names:
                    yield pa.nulls(parquet.metadata.num_rows)
                    return
                for batch in parquet_batches(parquet, batch_rows, columns=["id"]):
                    yield batch.column("id")
            except (pa.ArrowException, OSError) as exc:
                raise ConfigError(f"manifest {source!r} is not a readable Parquet file ({exc}); write it again, "
                                  f"or give the rows as CSV or JSONL") from None
        return
    for batch in iter_record_batches(source, batch_rows):
        yield batch.column("id") if "id" in batch.schema.names else pa.nulls(batch.num_rows)


def _plain_texts(texts: pa.Array) -> np.ndarray:
    """Where a text surely passes :func:`voxmill.catalog.check_text` but for its length: a string with an ASCII
    letter or digit (so speakable, and not blank) and no forbidden control character."""
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        return np.zeros(len(texts), dtype=bool)
    plain = pc.and_(pc.match_substring_regex(texts, "[A-Za-z0-9]"),
                    pc.invert(pc.match_substring_regex(texts, FORBIDDEN_CONTROL_RE2)))
    return pc.fill_null(plain, False).to_numpy(zero_copy_only=False)


def _lengths(texts: pa.Array) -> np.ndarray:
    """Characters of each text (0 for a null or a text that is not a string)."""
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        return np.zeros(len(texts), dtype=np.int64)
    return pc.fill_null(pc.utf8_length(texts), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _given_ids(ids: pa.Array) -> pa.Array:
    """The cells of an ``id`` column that give an id (``_cell`` is not None): vectorised where a cell holds a
    visible ASCII character, which no strip can remove; the rest (nulls, blanks, rare all-Unicode ids) one by one."""
    visible = pc.fill_null(pc.match_substring_regex(ids, "[!-~]"), False)
    if pc.all(visible).as_py():
        return ids
    keep = visible.to_numpy(zero_copy_only=False).copy()
    for index in np.flatnonzero(~keep).tolist():
        keep[index] = _cell(ids[index].as_py()) is not None
    return ids.filter(pa.array(keep))


def _rows_hint(source: str) -> int:
    """A Parquet manifest's rows (from its footer); 0 for other manifests (their rows are known only at the end)."""
    if is_corpus(source) or manifest_format(source) != "parquet":
        return 0
    try:
        with open_binary(source) as handle:
            return pq.ParquetFile(handle).metadata.num_rows
    except (pa.ArrowException, OSError, ConfigError):
        return 0  # the scan itself names the problem


def _repeated(hashes: np.ndarray) -> frozenset[int]:
    """The hashes that occur more than once (``hashes`` is sorted in place)."""
    if len(hashes) < 2:
        return frozenset()
    hashes.sort()
    return frozenset(int(h) for h in np.unique(hashes[1:][hashes[1:] == hashes[:-1]]))


def repeated_id_hashes(source: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> frozenset[int]:
    """64-bit hashes of the ids that occur more than once: one streaming pass holding 8 bytes per row."""
    return ManifestReader(source, "tts", batch_rows=batch_rows).scan().repeated_ids


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


__all__ = ["ItemProblem", "ItemTemplate", "JobKind", "ManifestReader", "ManifestScan", "RowBatch", "RunDefaults",
           "WorkItem", "find_duplicate_ids", "iter_id_cells", "repeated_id_hashes"]
