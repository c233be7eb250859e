"""Quality control of a book's chunks: transcribe each back, align it word by word, retake the bad ones.

Every take is an ordinary job with its own ledger, so every take is billed once, recorded and resumable:
take 0 is the book's own job (the book folder); take N lives in ``qc/take-N`` and its transcription in
``qc/asr-N``. Each transcript is aligned to its chunk's spoken text (:mod:`voxmill.book.align`): a chunk is
bad when its WER is over ``max_wer`` or it has a run of ``max_run`` or more wrong words in a row (a garbled
stretch that a whole-chunk WER averages away). A retake asks again for the chunks still bad, in each chunk's
own voice, varying the sampling where the model has any: ``seed = N`` (chatterbox), a lower sampling
temperature (higgs2p5); qwen3-tts takes neither, so its retake is the same request again. The same take
number gives the same key on a rerun, so a rerun resumes instead of paying again. The best take is kept:
good before bad, then the shorter run, then the lower WER, then the earlier take.

Voice drift: each take's median pitch (:mod:`voxmill.book.voiceprint`) is compared with the median of its
group — the chunks of its chapter read by the same voice, or of the whole book when the chapter has fewer
than ``DRIFT_GROUP`` — and a take more than ``max_drift`` semitones away (a voice that changed, a swapped
voice) is bad too, and retaken like any other.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from voxmill.audio.transcode import OutputSpec
from voxmill.book.align import align
from voxmill.book.model import Chunk
from voxmill.book.voiceprint import semitones, voiceprint_file
from voxmill.catalog import ASR_MODELS, get_model
from voxmill.ledger import read_results, write_table
from voxmill.manifests import RunDefaults

if TYPE_CHECKING:
    from voxmill.jobs import JobRequest, RunSummary

QC_DIR = "qc"
DEFAULT_MAX_WER = 0.15
#: this many wrong words in a row make a take bad, whatever its WER
DEFAULT_MAX_RUN = 4
#: semitones from its group's median pitch that make a take's voice drifted (None: no drift check)
DEFAULT_MAX_DRIFT = 6.0
#: the fewest pitched takes a group needs for a median to compare with
DRIFT_GROUP = 5


@dataclass(frozen=True)
class QcOptions:
    """Whether to check, how many retakes at most, and the WER above which a chunk is retaken."""

    enabled: bool = False
    retakes: int = 0
    max_wer: float = DEFAULT_MAX_WER
    max_run: int = DEFAULT_MAX_RUN
    max_drift: float | None = DEFAULT_MAX_DRIFT
    #: the transcription language; None: the book's own (``dc:language``), else English
    language: str | None = None


@dataclass(frozen=True)
class ChunkQc:
    """A chunk's kept take: its ledger row (``audio_path`` absolute), WER, chars/s, how many takes it had, and
    where its transcript goes wrong (the longest run of wrong words, the worst sentence)."""

    row: Mapping[str, Any]
    take: int
    takes: int
    wer: float | None
    chars_per_s: float | None
    longest_run: int | None = None
    run_text: str | None = None
    worst_sentence: str | None = None
    worst_sentence_wer: float | None = None
    transcript: str | None = None
    #: semitones from its group's median pitch (None: not measured)
    drift: float | None = None

    def drifted(self, options: QcOptions) -> bool:
        """Whether the take's voice is further from its group's than ``max_drift`` semitones."""
        return options.max_drift is not None and self.drift is not None and abs(self.drift) > options.max_drift

    def bad(self, options: QcOptions) -> bool:
        """Not transcribed, over the WER threshold, with too long a run of wrong words, or drifted."""
        return (self.wer is None or self.wer > options.max_wer or (self.longest_run or 0) >= options.max_run
                or self.drifted(options))

    def rank(self, options: QcOptions) -> tuple[bool, bool, int, float, int]:
        """Sort key of takes, best first (see the module docstring)."""
        return (self.bad(options), self.drifted(options),
                self.longest_run if self.longest_run is not None else 1 << 30,
                self.wer if self.wer is not None else float("inf"), self.take)


@dataclass(frozen=True)
class QcSummary:
    """A book's QC: chunks checked, mean WER, the worst chunks, retakes made, chunks still over the limit."""

    checked: int
    mean_wer: float
    worst: tuple[tuple[str, float, str], ...]
    retakes: int
    over_threshold: int
    max_wer: float
    max_run: int = DEFAULT_MAX_RUN
    #: chunks still bad after every retake: (id, WER, longest run, the words of that run)
    failing: tuple[tuple[str, float | None, int | None, str], ...] = ()

    def lines(self) -> list[str]:
        """Readable lines for the CLI, ``voxmill status`` and the flow's artifact."""
        lines = [f"QC: {self.checked} chunks transcribed back, mean WER {self.mean_wer:.3f}, {self.retakes} retakes, "
                 f"{self.over_threshold} still bad (WER over {self.max_wer} or {self.max_run}+ wrong words in a row)"]
        lines += [f"  {item_id}: WER {wer:.3f} — {text}" for item_id, wer, text in self.worst]
        lines += [f"  STILL BAD {item_id}: WER {wer if wer is not None else float('nan'):.3f}, {run} wrong in a row "
                  f"at “{words}”" for item_id, wer, run, words in self.failing]
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
) -> dict[str, str]:
    """The transcript of each take's audio, through the same engine (an ASR job in ``target``)."""
    from voxmill.jobs import JobRequest

    target.mkdir(parents=True, exist_ok=True)
    manifest = target.with_name(target.name + ".manifest.parquet")
    ids = sorted(rows)
    write_table(pa.table({"id": ids, "audio": [rows[i]["audio_path"] for i in ids],
                          "reference_text": [texts[i] for i in ids]}), manifest)
    run(JobRequest(kind="asr", manifest=str(manifest), out_dir=target,
                   defaults=RunDefaults(model=ASR_MODELS[0], params={"language": options.language or "en"})))
    table = read_results(target)
    return {row["id"]: row["transcript"] or "" for row in table.select(["id", "status", "transcript"]).to_pylist()
            if row["status"] == "done"}


def retake_params(model: str, params: Mapping[str, Any], take: int) -> dict[str, Any]:
    """The parameters of retake ``take``: another seed, or a lower sampling temperature (see the module docstring)."""
    names = get_model(model).param_by_name
    if "seed" in names:
        return {**params, "seed": take}
    if "sampling" in names:
        sampling = dict(params.get("sampling") or {})
        sampling["temperature"] = round(max(0.3, float(sampling.get("temperature", 1.0)) - 0.15 * take), 2)
        return {**params, "sampling": sampling}
    return dict(params)


def _scored(item_id: str, row: Mapping[str, Any], take: int, takes: int, text: str,
            transcripts: Mapping[str, str]) -> ChunkQc:
    transcript = transcripts.get(item_id)
    if transcript is None:
        return ChunkQc(row, take, takes, None, _rate(text, row))
    found = align(text, transcript)
    worst = found.worst
    return ChunkQc(row, take, takes, found.wer, _rate(text, row), found.longest_run, found.run_text,
                   worst.sentence if worst else None, round(worst.wer, 4) if worst else None, transcript)


def check_chunks(
    chunks: Sequence[Chunk],
    rows: dict[str, dict[str, Any]],
    *,
    out_dir: Path,
    voice_of: Callable[[Chunk], tuple[str, Mapping[str, Any]]],
    options: QcOptions,
    run: RunJob,
) -> tuple[dict[str, ChunkQc], QcSummary]:
    """Transcribe every chunk back, retake the bad ones up to ``options.retakes`` times, keep the best takes.

    ``voice_of`` gives a chunk's model and parameters (with a cast, each role has its own).
    """
    from voxmill.jobs import JobRequest

    texts = {c.item_id: c.speech for c in chunks}
    by_id = {c.item_id: c for c in chunks}
    qc_dir = Path(out_dir) / QC_DIR
    transcripts = _transcribe(rows, texts, qc_dir / "asr-0", options, run)
    best = {i: _scored(i, row, 0, 1, texts[i], transcripts) for i, row in rows.items()}
    medians = _group_medians(chunks, best) if options.max_drift is not None else {}
    best = {i: _with_drift(q, medians.get(i)) for i, q in best.items()}
    records = [_record(i, 0, q) for i, q in best.items()]
    retakes = 0
    for take in range(1, options.retakes + 1):
        bad = [i for i, q in best.items() if q.bad(options)]
        if not bad:
            break
        take_dir = qc_dir / f"take-{take}"
        take_dir.mkdir(parents=True, exist_ok=True)
        manifest = qc_dir / f"take-{take}.manifest.parquet"
        voices = [voice_of(by_id[i]) for i in bad]
        write_table(pa.table({
            "id": bad, "text": [texts[i] for i in bad], "model": [model for model, _ in voices],
            "params": [json.dumps(retake_params(model, params, take), sort_keys=True) for model, params in voices],
        }), manifest)
        run(JobRequest(kind="tts", manifest=str(manifest), out_dir=take_dir, defaults=RunDefaults(),
                       output=OutputSpec(format="wav")))
        retakes += len(bad)
        take_rows = done_rows(take_dir, [by_id[i] for i in bad])
        take_transcripts = _transcribe(take_rows, texts, qc_dir / f"asr-{take}", options, run)
        for item_id in bad:
            previous = dataclasses.replace(best[item_id], takes=best[item_id].takes + 1)
            best[item_id] = previous
            if item_id not in take_rows:
                continue
            candidate = _with_drift(_scored(item_id, take_rows[item_id], take, previous.takes, texts[item_id],
                                            take_transcripts), medians.get(item_id))
            records.append(_record(item_id, take, candidate))
            if candidate.rank(options) < previous.rank(options):
                best[item_id] = candidate
    kept = {(i, q.take) for i, q in best.items()}
    for record in records:  # paths relative to the book folder, like every table in it
        record["audio_path"] = str(Path(record["audio_path"]).relative_to(out_dir))
        record["kept"] = (record["id"], record["take"]) in kept
    write_table(pa.Table.from_pylist(records), Path(out_dir) / "qc.parquet")
    scored = sorted(((i, q.wer) for i, q in best.items() if q.wer is not None), key=lambda p: -p[1])
    failing = tuple((i, q.wer, q.longest_run, (f"voice {q.drift:+.1f} semitones off; " if q.drifted(options) else "")
                     + (q.run_text or "")) for i, q in sorted(best.items()) if q.bad(options))
    summary = QcSummary(
        checked=len(scored),
        mean_wer=round(sum(w for _, w in scored) / len(scored), 4) if scored else float("nan"),
        worst=tuple((i, round(w, 4), texts[i][:80]) for i, w in scored[:5]),
        retakes=retakes,
        over_threshold=len(failing),
        max_wer=options.max_wer,
        max_run=options.max_run,
        failing=failing,
    )
    return best, summary


def _group_medians(chunks: Sequence[Chunk], takes: Mapping[str, ChunkQc]) -> dict[str, float]:
    """Each chunk's reference pitch: the median of its chapter's takes in its voice, else of the book's."""
    pitch = {i: voiceprint_file(Path(q.row["audio_path"])).pitch_hz for i, q in takes.items()}
    by_chapter: dict[tuple[int, str | None], list[float]] = {}
    by_book: dict[str | None, list[float]] = {}
    for chunk in chunks:
        value = pitch.get(chunk.item_id, math.nan)
        if not math.isnan(value):
            by_chapter.setdefault((chunk.chapter, chunk.role), []).append(value)
            by_book.setdefault(chunk.role, []).append(value)
    medians: dict[str, float] = {}
    for chunk in chunks:
        group = by_chapter.get((chunk.chapter, chunk.role), [])
        if len(group) < DRIFT_GROUP:
            group = by_book.get(chunk.role, [])
        if len(group) >= DRIFT_GROUP:
            medians[chunk.item_id] = statistics.median(group)
    return medians


def _with_drift(qc: ChunkQc, median: float | None) -> ChunkQc:
    if median is None:
        return qc
    drift = semitones(voiceprint_file(Path(qc.row["audio_path"])).pitch_hz, median)
    return dataclasses.replace(qc, drift=None if math.isnan(drift) else round(drift, 2))


def _rate(text: str, row: Mapping[str, Any]) -> float | None:
    duration = row.get("duration_s")
    return round(len(text) / duration, 2) if duration else None


def _record(item_id: str, take: int, qc: ChunkQc) -> dict[str, Any]:
    return {"id": item_id, "take": take, "wer": qc.wer, "longest_run": qc.longest_run, "run_text": qc.run_text,
            "worst_sentence": qc.worst_sentence, "worst_sentence_wer": qc.worst_sentence_wer,
            "transcript": qc.transcript, "drift_semitones": qc.drift, "chars_per_s": qc.chars_per_s,
            "audio_path": qc.row["audio_path"],
            "key": qc.row["key"]}


def describe_book(out_dir: Path) -> list[str]:
    """Lines about the audiobook in ``out_dir`` (title, chapters, hours, QC), or none when it holds no book."""
    path = Path(out_dir) / "audiobook.json"
    if not path.exists():
        return []
    record = json.loads(path.read_text())
    lines = [f"audiobook: {record['title']}: {record['chapters']} chapters, {record['chunks']} chunks, "
             f"{record['audio_seconds'] / 3600:.3f} h → {record['m4b']}"]
    if record.get("qc"):
        lines += QcSummary(**{**record["qc"], "worst": tuple(map(tuple, record["qc"]["worst"])),
                              "failing": tuple(map(tuple, record["qc"].get("failing", ())))}).lines()
    return lines


__all__ = ["DEFAULT_MAX_DRIFT", "DEFAULT_MAX_RUN", "DEFAULT_MAX_WER", "ChunkQc", "QcOptions", "QcSummary",
           "check_chunks", "describe_book", "done_rows", "retake_params"]
