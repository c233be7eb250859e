"""Round trip: speech made by a TTS job, transcribed back and compared with its text (WER)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxmill.bucket import is_url, join, read_results_at, write_parquet_to
from voxmill.errors import ConfigError


def asr_manifest_from_results(tts_out: Path | str, target: Path | str) -> int:
    """Write an ASR manifest (id, audio, reference_text) for every done item of a TTS output directory or URL
    (``target`` may be a URL too)."""
    table = read_results_at(tts_out)
    done = table.filter(pc.and_(pc.equal(table["status"], "done"), pc.equal(table["kind"], "tts")))
    if done.num_rows == 0:
        raise ConfigError(f"{tts_out} has no finished speech to transcribe")
    if is_url(tts_out):
        audio = [join(str(tts_out), p) for p in done["output_path"].to_pylist()]
    else:
        audio = [str((Path(tts_out) / p).resolve()) for p in done["output_path"].to_pylist()]
    manifest = pa.table({"id": done["id"], "audio": audio, "reference_text": done["text"]})
    if is_url(target):
        write_parquet_to(manifest, str(target))
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(manifest, target)
    return manifest.num_rows


@dataclass(frozen=True)
class RoundTripReport:
    """WER of each transcribed item against the text it was made from."""

    items: int
    mean_wer: float
    worst: tuple[tuple[str, float], ...]


def round_trip_report(asr_out: Path | str) -> RoundTripReport:
    """Mean and worst WER of an ASR output directory whose manifest had reference texts."""
    table = read_results_at(asr_out)
    scored = table.filter(pc.invert(pc.is_null(table["wer"])))
    pairs = sorted(zip(scored["id"].to_pylist(), scored["wer"].to_pylist(), strict=True), key=lambda p: -p[1])
    mean = sum(w for _, w in pairs) / len(pairs) if pairs else float("nan")
    return RoundTripReport(len(pairs), mean, tuple(pairs[:3]))


__all__ = ["RoundTripReport", "asr_manifest_from_results", "round_trip_report"]
