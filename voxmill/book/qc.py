"""Quality control of a book's chunks: transcribe each back, WER and chars/s, retakes of the bad ones.

Every take is an ordinary job with its own ledger, so every take is billed once, recorded and resumable:
take 0 is the book's own job (the book folder); take N lives in ``qc/take-N`` and its transcription in
``qc/asr-N``. A retake asks again for the chunks whose best WER is still over the threshold, with
``seed = N`` where the model has a seed (the same key on a rerun, so a rerun resumes instead of paying
again). The take with the lowest WER is kept (the earlier one on a tie).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from voxmill.audio.transcode import OutputSpec
from voxmill.book.model import Chunk
from voxmill.catalog import ASR_MODELS, get_model
from voxmill.ledger import read_results, write_table
from voxmill.manifests import RunDefaults

if TYPE_CHECKING:
    from voxmill.jobs import JobRequest, RunSummary

QC_DIR = "qc"
DEFAULT_MAX_WER = 0.15


@dataclass(frozen=True)
class QcOptions:
    """Whether to check, how many retakes at most, and the WER above which a chunk is retaken."""

    enabled: bool = False
    retakes: int = 0
    max_wer: float = DEFAULT_MAX_WER
    #: the transcription language; None: the book's own (``dc:language``), else English
    language: str | None = None


@dataclass(frozen=True)
class ChunkQc:
    """A chunk's kept take: its ledger row (``audio_path`` absolute), WER, chars/s and how many takes it had."""

    row: Mapping[str, Any]
    take: int
    takes: int
    wer: float | None
    chars_per_s: float | None


@dataclass(frozen=True)
class QcSummary:
    """A book's QC: chunks checked, mean WER, the worst chunks, retakes made, chunks still over the limit."""

    checked: int
    mean_wer: float
    worst: tuple[tuple[str, float, str], ...]
    retakes: int
    over_threshold: int
    max_wer: float

    def lines(self) -> list[str]:
        """Readable lines for the CLI, ``voxmill status`` and the flow's artifact."""
        lines = [f"QC: {self.checked} chunks transcribed back, mean WER {self.mean_wer:.3f}, {self.retakes} retakes, "
                 f"{self.over_threshold} still over WER {self.max_wer}"]
        lines += [f"  {item_id}: WER {wer:.3f} — {text}" for item_id, wer, text in self.worst]
        return lines


RunJob = Callable[["JobRequest"], "RunSummary"]


def done_rows(out_dir: Path, chunks: Sequence[Chunk]) -> dict[str, dict[str, Any]]:
    """Ledger rows of ``out_dir`` for the chunks done with their current text, by id (``audio_path`` added)."""
    table = read_results(out_dir)
    wanted = {c.item_id: c.speech for c in chunks}
    rows: dict[str, dict[str, Any]] = {}
    if table.num_rows == 0:
        return rows
    for row in table.select(["id", "key", "status", "text", "output_path", "duration_s", "sha256"]).to_pylist():
        if row["id"] not in wanted:
            continue
        if row["status"] == "done" and row["text"] == wanted[row["id"]]:
            rows[row["id"]] = {**row, "audio_path": str(Path(out_dir) / row["output_path"])}
        else:
            rows.pop(row["id"], None)  # a later failure or an older text: not usable
    return rows


def _transcribe(
    rows: Mapping[str, Mapping[str, Any]], texts: Mapping[str, str], target: Path, options: QcOptions, run: RunJob
) -> dict[str, float]:
    """WER of each take's audio against its text, through the same engine (an ASR job in ``target``)."""
    from voxmill.jobs import JobRequest

    target.mkdir(parents=True, exist_ok=True)
    manifest = target.with_name(target.name + ".manifest.parquet")
    ids = sorted(rows)
    write_table(pa.table({"id": ids, "audio": [rows[i]["audio_path"] for i in ids],
                          "reference_text": [texts[i] for i in ids]}), manifest)
    run(JobRequest(kind="asr", manifest=str(manifest), out_dir=target,
                   defaults=RunDefaults(model=ASR_MODELS[0], params={"language": options.language or "en"})))
    table = read_results(target)
    return {row["id"]: row["wer"] for row in table.select(["id", "status", "wer"]).to_pylist()
            if row["status"] == "done" and row["wer"] is not None}


def check_chunks(
    chunks: Sequence[Chunk],
    rows: dict[str, dict[str, Any]],
    *,
    out_dir: Path,
    model: str,
    params: Mapping[str, Any],
    options: QcOptions,
    run: RunJob,
) -> tuple[dict[str, ChunkQc], QcSummary]:
    """Transcribe every chunk back, retake the bad ones up to ``options.retakes`` times, keep the best takes."""
    from voxmill.jobs import JobRequest

    texts = {c.item_id: c.speech for c in chunks}
    qc_dir = Path(out_dir) / QC_DIR
    wers = _transcribe(rows, texts, qc_dir / "asr-0", options, run)
    best = {i: ChunkQc(row, 0, 1, wers.get(i), _rate(texts[i], row)) for i, row in rows.items()}
    records = [_record(i, 0, q) for i, q in best.items()]
    retakes = 0
    has_seed = "seed" in get_model(model).param_by_name
    for take in range(1, options.retakes + 1):
        bad = [i for i, q in best.items() if q.wer is None or q.wer > options.max_wer]
        if not bad:
            break
        take_dir = qc_dir / f"take-{take}"
        take_dir.mkdir(parents=True, exist_ok=True)
        manifest = qc_dir / f"take-{take}.manifest.parquet"
        write_table(pa.table({"id": bad, "text": [texts[i] for i in bad]}), manifest)
        take_params = {**params, "seed": take} if has_seed else dict(params)
        run(JobRequest(kind="tts", manifest=str(manifest), out_dir=take_dir,
                       defaults=RunDefaults(model=model, params=take_params), output=OutputSpec(format="wav")))
        retakes += len(bad)
        take_rows = done_rows(take_dir, [c for c in chunks if c.item_id in set(bad)])
        take_wers = _transcribe(take_rows, texts, qc_dir / f"asr-{take}", options, run)
        for item_id in bad:
            previous = best[item_id]
            best[item_id] = ChunkQc(previous.row, previous.take, previous.takes + 1, previous.wer, previous.chars_per_s)
            if item_id not in take_rows:
                continue
            candidate = ChunkQc(take_rows[item_id], take, previous.takes + 1, take_wers.get(item_id),
                                _rate(texts[item_id], take_rows[item_id]))
            records.append(_record(item_id, take, candidate))
            if candidate.wer is not None and (previous.wer is None or candidate.wer < previous.wer):
                best[item_id] = candidate
    for record in records:  # paths relative to the book folder, like every table in it
        record["audio_path"] = str(Path(record["audio_path"]).relative_to(out_dir))
    write_table(pa.Table.from_pylist(records), Path(out_dir) / "qc.parquet")
    scored = sorted(((i, q.wer) for i, q in best.items() if q.wer is not None), key=lambda p: -p[1])
    summary = QcSummary(
        checked=len(scored),
        mean_wer=round(sum(w for _, w in scored) / len(scored), 4) if scored else float("nan"),
        worst=tuple((i, round(w, 4), texts[i][:80]) for i, w in scored[:5]),
        retakes=retakes,
        over_threshold=sum(1 for _, w in scored if w > options.max_wer),
        max_wer=options.max_wer,
    )
    return best, summary


def _rate(text: str, row: Mapping[str, Any]) -> float | None:
    duration = row.get("duration_s")
    return round(len(text) / duration, 2) if duration else None


def _record(item_id: str, take: int, qc: ChunkQc) -> dict[str, Any]:
    return {"id": item_id, "take": take, "wer": qc.wer, "chars_per_s": qc.chars_per_s,
            "audio_path": qc.row["audio_path"], "key": qc.row["key"]}


def describe_book(out_dir: Path) -> list[str]:
    """Lines about the audiobook in ``out_dir`` (title, chapters, hours, QC), or none when it holds no book."""
    path = Path(out_dir) / "audiobook.json"
    if not path.exists():
        return []
    record = json.loads(path.read_text())
    lines = [f"audiobook: {record['title']}: {record['chapters']} chapters, {record['chunks']} chunks, "
             f"{record['audio_seconds'] / 3600:.3f} h → {record['m4b']}"]
    if record.get("qc"):
        lines += QcSummary(**{**record["qc"], "worst": tuple(map(tuple, record["qc"]["worst"]))}).lines()
    return lines


__all__ = ["DEFAULT_MAX_WER", "ChunkQc", "QcOptions", "QcSummary", "check_chunks", "describe_book", "done_rows"]
