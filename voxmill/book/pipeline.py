"""A book from end to end: read → chapters → chunks → the batch engine → chapters assembled → the book.

Every chunk of the selected chapters is one row of a TTS manifest (``work/chunks.manifest.parquet``) run
by the ordinary engine and ledger in the book's folder: rate-limited, retried, resumable, one ledger row
per chunk. Chunk ids are ``ch<chapter>-<chunk>-<text hash>``; the ledger's key hashes model, parameters and text, so
after an edit only chunks whose text changed are sent (a chunk that merely moved is reused, unbilled).
The job runner is injected: :func:`voxmill.jobs.run_job` here and in the CLI, Prefect tasks in the flow.

The book folder then holds, beside the engine's ``results.parquet`` (one row per chunk):
``<title>.m4b``, ``chapters/NNN <title>.<fmt|srt|vtt>``, ``chapters.parquet``, ``chunks.parquet`` and
``audiobook.json`` (the summary, QC included). With QC on, every chunk is transcribed back and the bad
ones retaken (:mod:`voxmill.book.qc`); the best take of each chunk is the one assembled.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from voxmill.audio.transcode import OutputSpec, write_bytes_atomic
from voxmill.book.assemble import ChapterAudio, Pauses, PlacedChunk, assemble_chapter
from voxmill.book.captions import chapter_cues
from voxmill.book.chapters import select_chapters
from voxmill.book.chunking import ChunkLimits, chunk_chapter
from voxmill.book.m4b import (
    DEFAULT_BITRATE,
    DEFAULT_LOUDNESS_LUFS,
    DEFAULT_TRUE_PEAK_DB,
    ChapterMark,
    book_loudness_filter,
    cut_chapter,
    join_wavs,
    write_chapter_file,
    write_m4b,
)
from voxmill.book.model import Book, Chapter, Chunk
from voxmill.book.qc import ChunkQc, QcOptions, QcSummary, check_chunks, done_rows
from voxmill.book.sources import read_book
from voxmill.catalog import DEFAULT_TTS_MODEL, TTS_MODELS, TTS_SAMPLE_RATE
from voxmill.errors import ConfigError
from voxmill.identity import json_hash
from voxmill.ledger import write_table
from voxmill.manifests import RunDefaults
from voxmill.settings import Settings
from voxmill.subtitles import to_srt, to_vtt

if TYPE_CHECKING:  # the engine (httpx, tenacity…) is imported when a book runs, not when the CLI starts
    from voxmill.jobs import JobRequest, RunSummary

DEFAULT_MODEL = DEFAULT_TTS_MODEL
WORK_DIR = "work"
SUMMARY_FILE = "audiobook.json"
#: chapter files: the formats a player handles as an audiobook's tracks
CHAPTER_FORMATS = ("m4b", "m4a", "mp3", "opus", "flac", "wav")

RunChunks = Callable[["JobRequest"], "RunSummary"]


@dataclass(frozen=True)
class AudiobookRequest:
    """One book to speak: where it is, where its folder goes, the voice and what comes out."""

    book: str
    out_dir: Path
    model: str = DEFAULT_MODEL
    params: Mapping[str, Any] = field(default_factory=dict)
    #: per-chapter files; the whole book is always an .m4b
    chapter_format: str = "m4b"
    loudness_lufs: float | None = DEFAULT_LOUDNESS_LUFS
    true_peak_db: float = DEFAULT_TRUE_PEAK_DB
    bitrate: str = DEFAULT_BITRATE
    #: ``"1,3-5"``: exactly these chapters (skipped ones included when named); None: all not skipped
    chapters: str | None = None
    exclude: str | None = None
    title: str | None = None
    author: str | None = None
    workers: int = 4
    pauses: Pauses = field(default_factory=Pauses)
    qc: QcOptions = field(default_factory=QcOptions)

    def __post_init__(self) -> None:
        if self.model not in TTS_MODELS:
            raise ConfigError(f"model {self.model!r} cannot speak a book; choose one of {', '.join(TTS_MODELS)}")
        if self.chapter_format not in CHAPTER_FORMATS:
            raise ConfigError(f"chapter format {self.chapter_format!r}: choose one of {', '.join(CHAPTER_FORMATS)}")
        OutputSpec(format=self.chapter_format, loudness_lufs=self.loudness_lufs, true_peak_db=self.true_peak_db,
                   bitrate=self.bitrate)  # the same checks as any output


@dataclass(frozen=True)
class BookPlan:
    """A parsed book, the chapters chosen and their chunks."""

    book: Book
    selected: tuple[Chapter, ...]
    chunks: dict[int, list[Chunk]]

    @property
    def skipped(self) -> tuple[Chapter, ...]:
        """Chapters left out (by default or by --chapters/--exclude)."""
        chosen = {c.index for c in self.selected}
        return tuple(c for c in self.book.chapters if c.index not in chosen)


@dataclass(frozen=True)
class AudiobookResult:
    """How a book ended: its files, counts, the engine's summary and where the time went."""

    title: str
    out_dir: str
    m4b: str | None
    chapters: int
    chunks: int
    skipped: tuple[str, ...]
    audio_seconds: float
    missing: tuple[str, ...]
    summary: RunSummary
    timings: dict[str, float]
    qc: QcSummary | None = None

    @property
    def ok(self) -> bool:
        """True when every chunk is done and the book was written."""
        return self.m4b is not None and not self.missing

    def headline(self) -> str:
        """One line for logs and the CLI."""
        if not self.ok:
            return (f"{self.title}: {len(self.missing)} of {self.chunks} chunks not done "
                    f"({self.summary.headline()}); the book was not assembled — rerun to retry them")
        return (f"{self.title}: {self.chapters} chapters, {self.chunks} chunks, "
                f"{self.audio_seconds / 3600:.2f} h → {self.m4b}")


def plan_book(request: AudiobookRequest) -> BookPlan:
    """Read the book and split the chosen chapters into chunks sized for the model (sends nothing)."""
    book = read_book(Path(request.book))
    book = dataclasses.replace(book, title=request.title or book.title, author=request.author or book.author)
    selected = tuple(select_chapters(book.chapters, request.chapters, request.exclude))
    if not selected:
        raise ConfigError(f"book {request.book!r}: no chapter selected (see `voxmill audiobook --list`)")
    limits = ChunkLimits.for_model(request.model)
    return BookPlan(book, selected, {c.index: chunk_chapter(c, limits) for c in selected})


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe version of a title."""
    cleaned = re.sub(r"[^\w\-]+", " ", text, flags=re.UNICODE).strip()
    return re.sub(r"\s+", " ", cleaned)[:limit].strip() or "untitled"


def make_audiobook(
    request: AudiobookRequest,
    settings: Settings,
    *,
    run_chunks: RunChunks | None = None,
    say: Callable[[str], None] | None = None,
) -> AudiobookResult:
    """Speak a book into ``request.out_dir`` (rerun it to resume; see the module docstring).

    ``say`` hears one line per phase (the CLI prints them: mastering a long book takes minutes).
    """
    say = say or (lambda line: None)
    from voxmill.jobs import JobRequest, run_job

    started = time.monotonic()
    plan = plan_book(request)
    out_dir = Path(request.out_dir)
    work = out_dir / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "chunks.manifest.parquet"
    all_chunks = [chunk for chapter in plan.selected for chunk in plan.chunks[chapter.index]]
    write_table(pa.table({"id": [c.item_id for c in all_chunks], "text": [c.text for c in all_chunks]}), manifest)
    job = JobRequest(
        kind="tts",
        manifest=str(manifest),
        out_dir=out_dir,
        defaults=RunDefaults(model=request.model, params=dict(request.params)),
        output=OutputSpec(format="wav"),
        workers=request.workers,
    )
    timings = {"plan_s": time.monotonic() - started}
    clock = time.monotonic()
    run = run_chunks or (lambda job_request: run_job(job_request, settings))
    summary = run(job)
    timings["requests_s"] = time.monotonic() - clock

    rows = done_rows(out_dir, all_chunks)
    missing = tuple(c.item_id for c in all_chunks if c.item_id not in rows)
    base = dict(title=plan.book.title, out_dir=str(out_dir), chapters=len(plan.selected), chunks=len(all_chunks),
                skipped=tuple(f"{c.index} {c.title} ({c.skip_reason or 'not selected'})" for c in plan.skipped),
                missing=missing, summary=summary)
    if missing:
        return AudiobookResult(m4b=None, audio_seconds=0.0, timings=_rounded(timings), **base)

    qc: dict[str, ChunkQc] = {}
    qc_summary = None
    if request.qc.enabled:
        clock = time.monotonic()
        options = request.qc
        if options.language is None and plan.book.language:  # "en-GB" → "en"
            options = dataclasses.replace(options, language=plan.book.language.split("-")[0].lower())
        say(f"{plan.book.title}: QC — transcribing {len(all_chunks)} chunks back")
        qc, qc_summary = check_chunks(all_chunks, rows, out_dir=out_dir, model=request.model, params=request.params,
                                      options=options, run=run)
        rows = {item_id: dict(check.row) for item_id, check in qc.items()}  # the best take of each chunk
        timings["qc_s"] = time.monotonic() - clock
    clock = time.monotonic()
    say(f"{plan.book.title}: assembling {len(plan.selected)} chapters")
    assembled = [
        _assemble(chapter, plan.chunks[chapter.index], rows, out_dir, request.pauses) for chapter in plan.selected
    ]
    say(f"{plan.book.title}: mastering {sum(a.duration_s for a in assembled) / 3600:.2f} h "
        "(loudness over the whole book, AAC, chapter files)")
    timings["assembly_s"] = time.monotonic() - clock
    clock = time.monotonic()
    m4b = _master(request, plan, assembled, out_dir)
    timings["mastering_s"] = time.monotonic() - clock
    _write_tables(plan, assembled, rows, qc, out_dir)
    audio_seconds = sum(a.duration_s for a in assembled)
    timings["total_s"] = time.monotonic() - started
    result = AudiobookResult(m4b=str(m4b), audio_seconds=round(audio_seconds, 3), timings=_rounded(timings),
                             qc=qc_summary, **base)
    _write_summary(result, out_dir)
    return result


def _rounded(timings: Mapping[str, float]) -> dict[str, float]:
    return {name: round(value, 3) for name, value in timings.items()}


def _assemble(
    chapter: Chapter, chunks: list[Chunk], rows: Mapping[str, Mapping[str, Any]], out_dir: Path, pauses: Pauses
) -> ChapterAudio:
    """The chapter's WAV, reused when its chunks' audio and the pauses are unchanged since the last run."""
    target = out_dir / WORK_DIR / f"ch{chapter.index:03d}.wav"
    sidecar = target.with_suffix(".json")
    fingerprint = json_hash(
        [dataclasses.asdict(pauses), [(c.item_id, c.ends_paragraph, rows[c.item_id]["sha256"]) for c in chunks]]
    )
    if target.exists() and sidecar.exists():
        saved = json.loads(sidecar.read_text())
        if saved.get("fingerprint") == fingerprint:
            placed = tuple(PlacedChunk(c, s, e) for c, (s, e) in zip(chunks, saved["placed"], strict=True))
            return ChapterAudio(chapter.index, target, saved["duration_s"], placed)
    audio = assemble_chapter(
        chapter.index, [(c, Path(rows[c.item_id]["audio_path"])) for c in chunks], target, pauses
    )
    record = {"fingerprint": fingerprint, "duration_s": audio.duration_s,
              "placed": [(p.start_s, p.end_s) for p in audio.placed]}
    write_bytes_atomic(sidecar, json.dumps(record).encode())
    return audio


def chapter_stem(chapter: Chapter) -> str:
    """The file stem of a chapter's outputs: ``007 Title``."""
    return f"{chapter.index:03d} {slug(chapter.title)}"


def _master(request: AudiobookRequest, plan: BookPlan, assembled: list[ChapterAudio], out_dir: Path) -> Path:
    """Join the chapters, measure the book's loudness, write the m4b, chapter files and subtitles."""
    book = plan.book
    work = out_dir / WORK_DIR
    book_wav = join_wavs([a.path for a in assembled], work / "book.wav")
    try:
        filters = book_loudness_filter(book_wav, request.loudness_lufs, request.true_peak_db, TTS_SAMPLE_RATE)
        marks, cursor = [], 0.0
        for chapter, audio in zip(plan.selected, assembled, strict=True):
            marks.append(ChapterMark(chapter.title, cursor, cursor + audio.duration_s))
            cursor += audio.duration_s
        narrator = f"{request.model}" + (f" ({request.params['voice']})" if request.params.get("voice") else "")
        tags = {"title": book.title, "album": book.title, "artist": book.author, "album_artist": book.author,
                "composer": narrator, "genre": "Audiobook", "language": book.language,
                "comment": f"narrated by {narrator} with voxmill"}
        cover = None
        if book.cover:
            cover = work / f"cover.{book.cover_type or 'jpg'}"
            write_bytes_atomic(cover, book.cover)
        m4b = write_m4b(book_wav, out_dir / f"{slug(book.title)}.m4b", tags=tags, marks=marks, cover=cover,
                        filters=filters, sample_rate=TTS_SAMPLE_RATE, bitrate=request.bitrate)
    finally:
        book_wav.unlink(missing_ok=True)  # hours of PCM: only the m4b is kept
    chapters_dir = out_dir / "chapters"
    for number, (chapter, audio) in enumerate(zip(plan.selected, assembled, strict=True), start=1):
        stem = chapter_stem(chapter)
        track_tags = {**tags, "title": chapter.title, "track": f"{number}/{len(assembled)}"}
        target = chapters_dir / f"{stem}.{request.chapter_format}"
        if request.chapter_format in ("m4b", "m4a"):  # the book's own AAC, copied: no second encode
            cut_chapter(m4b, target, marks[number - 1], tags=track_tags)
        else:
            write_chapter_file(audio.path, target, request.chapter_format, tags=track_tags, filters=filters,
                               sample_rate=TTS_SAMPLE_RATE, bitrate=request.bitrate)
        cues = chapter_cues(audio.placed)
        write_bytes_atomic(chapters_dir / f"{stem}.srt", to_srt(cues).encode())
        write_bytes_atomic(chapters_dir / f"{stem}.vtt", to_vtt(cues).encode())
    return m4b


def _write_tables(
    plan: BookPlan,
    assembled: list[ChapterAudio],
    rows: Mapping[str, Mapping[str, Any]],
    qc: Mapping[str, ChunkQc],
    out_dir: Path,
) -> None:
    """``chapters.parquet`` (every chapter, skipped ones included) and ``chunks.parquet`` (one row per chunk)."""
    by_index = {a.chapter: a for a in assembled}
    chapter_rows, chunk_rows, cursor = [], [], 0.0
    for chapter in plan.book.chapters:
        audio = by_index.get(chapter.index)
        chapter_rows.append({
            "chapter": chapter.index, "title": chapter.title, "depth": chapter.depth, "words": chapter.words,
            "chars": chapter.chars, "selected": audio is not None, "skip_reason": chapter.skip_reason,
            "chunks": len(plan.chunks.get(chapter.index, ())),
            "start_s": round(cursor, 3) if audio else None,
            "end_s": round(cursor + audio.duration_s, 3) if audio else None,
            "duration_s": round(audio.duration_s, 3) if audio else None,
            "file": f"chapters/{chapter_stem(chapter)}" if audio else None,
        })
        if audio is None:
            continue
        for placed in audio.placed:
            row = rows[placed.chunk.item_id]
            chunk_rows.append({
                "chapter": chapter.index, "chunk": placed.chunk.index, "id": placed.chunk.item_id,
                "key": row["key"], "paragraph": placed.chunk.paragraph, "text": placed.chunk.text,
                "start_s": round(placed.start_s, 3), "end_s": round(placed.end_s, 3),
                "book_start_s": round(cursor + placed.start_s, 3),
                "duration_s": round(placed.end_s - placed.start_s, 3), "generated_s": row["duration_s"],
                "audio_path": str(Path(row["audio_path"]).relative_to(out_dir)),
                "wer": qc[placed.chunk.item_id].wer if qc else None,
                "chars_per_s": round(len(placed.chunk.text) / row["duration_s"], 2) if row["duration_s"] else None,
                "take": qc[placed.chunk.item_id].take if qc else 0,
                "takes": qc[placed.chunk.item_id].takes if qc else 1,
            })
        cursor += audio.duration_s
    write_table(pa.Table.from_pylist(chapter_rows), out_dir / "chapters.parquet")
    write_table(pa.Table.from_pylist(chunk_rows), out_dir / "chunks.parquet")


def _write_summary(result: AudiobookResult, out_dir: Path) -> None:
    record = dataclasses.asdict(result)
    write_bytes_atomic(out_dir / SUMMARY_FILE, json.dumps(record, indent=2, default=str).encode())


__all__ = ["AudiobookRequest", "AudiobookResult", "BookPlan", "CHAPTER_FORMATS", "DEFAULT_MODEL", "RunChunks",
           "chapter_stem", "make_audiobook", "plan_book", "slug"]
