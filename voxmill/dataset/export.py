"""Exports of any published version for other toolkits: NeMo (one JSONL manifest) and lhotse (recordings,
supervisions and cuts, JSONL). Both need audio files, so the clips are written out next to the manifests.

Durations and sample counts are read from each clip itself (not the row's rounded ``duration``): lhotse checks
``num_samples / sampling_rate == duration`` and reads exactly that many samples.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from voxmill.audio.measure import decode_float32, pcm16_wav_layout, probe
from voxmill.audio.transcode import write_bytes_atomic
from voxmill.batch import output_stem
from voxmill.dataset.publish import DATA, DatasetStore
from voxmill.dataset.stats import voice_of
from voxmill.errors import ConfigError

EXPORT_FORMATS = ("nemo", "lhotse")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the manifest files, the audio folder and the row count."""

    files: tuple[Path, ...]
    audio_dir: Path
    rows: int


#: the fields of a NeMo ASR/TTS manifest line that voxmill writes (NeMo's documented required fields)
NEMO_FIELDS = ("audio_filepath", "duration", "text")


def _rows(store: DatasetStore, version_id: str):
    """Accepted rows of a version, a shard at a time (id, text, audio, sample_rate, params)."""
    for entry in store.manifest(version_id).files:
        if entry.path.startswith(f"{DATA}/"):
            with store.fs.open(f"{store.version_path(version_id)}/{entry.path}", "rb") as handle:
                table = pq.read_table(handle, columns=["id", "text", "audio", "sample_rate", "params"])
            yield from table.to_pylist()


def _samples(path: Path, data: bytes) -> tuple[int, int]:
    """(frames, sample rate) of a clip: 16-bit WAV from its header, anything else decoded by ffmpeg."""
    layout = pcm16_wav_layout(data)
    if layout is not None:
        return layout.data_bytes // (2 * layout.channels), layout.sample_rate
    rate = probe(path).sample_rate
    return len(decode_float32(path, sample_rate=rate)), rate


def export_version(dest: str, out_dir: Path, fmt: str, *, version_id: str | None = None,
                   language: str = "en") -> ExportResult:
    """Write ``version_id`` (default: latest) of the dataset at ``dest`` as ``fmt`` (nemo or lhotse) in ``out_dir``."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export format {fmt!r} is unknown; use one of {', '.join(EXPORT_FORMATS)}")
    store = DatasetStore(dest)
    version_id = version_id or store.latest_id()
    if version_id is None:
        raise ConfigError(f"{dest} has no published version yet; run `voxmill dataset build SPEC` first")
    out_dir = Path(out_dir).resolve()
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    nemo, recordings, supervisions, cuts = [], [], [], []
    for row in _rows(store, version_id):
        path = audio_dir / f"{output_stem(row['id'])}{Path(row['audio']['path'] or '.wav').suffix}"
        write_bytes_atomic(path, row["audio"]["bytes"])
        frames, rate = _samples(path, row["audio"]["bytes"])
        duration = frames / rate
        nemo.append({"audio_filepath": str(path), "duration": duration, "text": row["text"]})
        recording = {
            "id": row["id"], "sources": [{"type": "file", "channels": [0], "source": str(path)}],
            "sampling_rate": rate, "num_samples": frames, "duration": duration, "channel_ids": [0],
        }
        supervision = {"id": row["id"], "recording_id": row["id"], "start": 0.0, "duration": duration,
                       "channel": 0, "text": row["text"], "language": language, "speaker": voice_of(row["params"])}
        recordings.append(recording)
        supervisions.append(supervision)
        cuts.append({"id": row["id"], "start": 0.0, "duration": duration, "channel": 0,
                     "supervisions": [supervision], "recording": recording, "type": "MonoCut"})
    if fmt == "nemo":
        files = (_write_jsonl(out_dir / f"{version_id}.nemo.jsonl", nemo),)
    else:
        files = (_write_jsonl(out_dir / f"recordings_{version_id}.jsonl.gz", recordings),
                 _write_jsonl(out_dir / f"supervisions_{version_id}.jsonl.gz", supervisions),
                 _write_jsonl(out_dir / f"cuts_{version_id}.jsonl.gz", cuts))
    return ExportResult(files, audio_dir, len(nemo))


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    write_bytes_atomic(path, gzip.compress(text) if path.suffix == ".gz" else text)
    return path


__all__ = ["EXPORT_FORMATS", "NEMO_FIELDS", "ExportResult", "export_version"]
