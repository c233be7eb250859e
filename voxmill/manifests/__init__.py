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

Modules: :mod:`~voxmill.manifests.formats` (rows as record batches), :mod:`~voxmill.manifests.corpus`
(folders and globs of audio), :mod:`~voxmill.manifests.reader` (typed items, duplicate ids).
"""

from voxmill.manifests.corpus import CORPUS_AUDIO_SUFFIXES, is_corpus, iter_corpus
from voxmill.manifests.formats import (
    DEFAULT_BATCH_ROWS,
    iter_record_batches,
    manifest_format,
    manifest_format_suffix,
    open_binary,
)
from voxmill.manifests.reader import (
    ItemProblem,
    ItemTemplate,
    JobKind,
    ManifestReader,
    ManifestScan,
    RowBatch,
    RunDefaults,
    WorkItem,
    find_duplicate_ids,
    iter_id_cells,
    repeated_id_hashes,
)

__all__ = [
    "CORPUS_AUDIO_SUFFIXES",
    "DEFAULT_BATCH_ROWS",
    "ItemProblem",
    "ItemTemplate",
    "JobKind",
    "ManifestReader",
    "ManifestScan",
    "RowBatch",
    "RunDefaults",
    "WorkItem",
    "find_duplicate_ids",
    "is_corpus",
    "iter_corpus",
    "iter_id_cells",
    "iter_record_batches",
    "manifest_format",
    "manifest_format_suffix",
    "open_binary",
    "repeated_id_hashes",
]
