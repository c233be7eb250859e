"""The rows of a dataset version: one Arrow schema for shards and rejects, laid out the way Hugging Face
``datasets`` loads Parquet directly (an ``audio`` column of ``{bytes, path}`` typed ``Audio`` in the schema's
``huggingface`` metadata)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

AUDIO_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])

#: every column of a dataset row; ``reasons`` is filled only in rejects.parquet
ROW_SCHEMA = pa.schema([
    pa.field("id", pa.string()),
    pa.field("text", pa.string()),
    pa.field("audio", AUDIO_TYPE),
    pa.field("duration", pa.float64()),
    pa.field("sample_rate", pa.int64()),
    pa.field("model", pa.string()),
    pa.field("engine", pa.string()),
    pa.field("params", pa.string()),
    #: the content key (model + parameters + content): what incremental builds compare
    pa.field("key", pa.string()),
    pa.field("chars_per_s", pa.float64()),
    pa.field("s_per_char", pa.float64()),
    pa.field("leading_silence_s", pa.float64()),
    pa.field("trailing_silence_s", pa.float64()),
    pa.field("peak_dbfs", pa.float64()),
    pa.field("clipped_fraction", pa.float64()),
    pa.field("lufs", pa.float64()),
    pa.field("wer", pa.float64()),
    #: tts: what ASR heard in the round trip; asr: the source's reference text
    pa.field("check_text", pa.string()),
    #: why the row has no usable audio (API failure, bad manifest row); None when it has
    pa.field("failure", pa.string()),
    pa.field("reasons", pa.list_(pa.string())),
    #: sha256 of the audio bytes (identical-clip dedup); null in rows carried from versions before it existed
    pa.field("audio_sha256", pa.string()),
    #: with [dedup] flag: the id of the first row this one duplicates (same normalised text or same audio)
    pa.field("duplicate_of", pa.string()),
    #: TTS: the clip as the API returned it (16-bit WAV), kept so a new output format, rate or loudness is
    #: derived locally without a call; null when ``audio`` itself is that clip (output = wav as generated)
    pa.field("master", pa.binary()),
])

#: columns holding audio bytes
AUDIO_COLUMNS = ("audio", "master")
#: every column but the audio: what planning and judging read
META_COLUMNS = [name for name in ROW_SCHEMA.names if name not in AUDIO_COLUMNS]
META_SCHEMA = pa.schema([ROW_SCHEMA.field(name) for name in META_COLUMNS])


@dataclass(frozen=True)
class DatasetRow:
    """One row made in this build, before it joins the carried-over rows as Arrow. Its clip stays on disk
    until the row is written, so a build never holds all its new audio in memory."""

    id: str
    text: str
    #: the local file holding the clip (None: no audio)
    audio_file: str | None
    #: the clip's name inside the dataset (``audio.path``)
    audio_path: str | None
    duration: float | None
    sample_rate: int | None
    model: str
    engine: str | None
    params: str
    key: str
    chars_per_s: float | None = None
    s_per_char: float | None = None
    leading_silence_s: float | None = None
    trailing_silence_s: float | None = None
    peak_dbfs: float | None = None
    clipped_fraction: float | None = None
    lufs: float | None = None
    wer: float | None = None
    check_text: str | None = None
    failure: str | None = None
    audio_sha256: str | None = None
    duplicate_of: str | None = None
    #: the local file holding the master clip when it differs from ``audio_file`` (None: the audio is the master)
    master_file: str | None = None

    def to_dict(self, *, with_audio: bool = True) -> dict[str, object]:
        """The row as a dict in :data:`ROW_SCHEMA` (reads the clips), or :data:`META_SCHEMA` without them."""
        values = dict(self.__dict__)
        source, name, master = values.pop("audio_file"), values.pop("audio_path"), values.pop("master_file")
        if with_audio:
            values["audio"] = None if source is None else {"bytes": Path(source).read_bytes(), "path": name}
            values["master"] = None if master is None else Path(master).read_bytes()
        values["reasons"] = None
        return values


def rows_table(rows: list[DatasetRow], *, with_audio: bool = True) -> pa.Table:
    """New rows as a table in :data:`ROW_SCHEMA` (clips read from their files) or :data:`META_SCHEMA`."""
    schema = ROW_SCHEMA if with_audio else META_SCHEMA
    return pa.Table.from_pylist([r.to_dict(with_audio=with_audio) for r in rows], schema=schema)


def _feature(dtype: pa.DataType) -> dict[str, object]:
    if dtype == AUDIO_TYPE:
        return {"_type": "Audio"}
    if pa.types.is_list(dtype):
        return {"feature": _feature(dtype.value_type), "_type": "Sequence"}
    names = {pa.string(): "string", pa.float64(): "float64", pa.int64(): "int64", pa.binary(): "binary"}
    return {"dtype": names[dtype], "_type": "Value"}


def with_hf_features(table: pa.Table) -> pa.Table:
    """The table with ``huggingface`` schema metadata, so ``datasets`` types ``audio`` as Audio (decodable)."""
    features = {field.name: _feature(field.type) for field in table.schema}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return table.replace_schema_metadata(meta)


__all__ = ["AUDIO_COLUMNS", "AUDIO_TYPE", "DatasetRow", "META_COLUMNS", "META_SCHEMA", "ROW_SCHEMA", "rows_table",
           "with_hf_features"]
