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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from voxmill.audio.transcode import OutputSpec, write_bytes_atomic
from voxmill.book.assemble import ChapterAudio, Pauses, PlacedChunk, assemble_chapter
from voxmill.book.captions import chapter_cues
from voxmill.book.cast import Cast, Voice, cast_chunks, load_cast
from voxmill.book.chapters import select_chapters
from voxmill.book.chunking import ChunkLimits, chunk_chapter
from voxmill.book.lexicon import Lexicon, resolve_lexicon
from voxmill.book.m4b import (
    AAC_CODERS,
    AAC_PRIMING,
    DEFAULT_AAC_CODER,
    DEFAULT_BITRATE,
    DEFAULT_LOUDNESS_LUFS,
    DEFAULT_TRUE_PEAK_DB,
    ChapterMark,
    book_loudness_filter,
    chapter_gains,
    chapter_span,
    cut_chapter,
    encode_chapters,
    join_chapters,
    join_wavs,
    parallel_map,
    retag,
    write_chapter_file,
    write_m4b,
)
from voxmill.book.model import Book, Chapter, Chunk
from voxmill.book.qc import ChunkQc, QcOptions, QcSummary, check_chunks, done_rows
from voxmill.book.readalong import ReadAlongChapter, write_readalong_epub
from voxmill.book.shared import adopt_shared_chunks
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
CHAPTER_FORMATS = ("m4b", "m4a", "mp3", "opus", "flac", "wav", "epub")
#: ``--format epub``: a read-along EPUB 3 beside the m4b, chapter files in this format
READALONG_CHAPTER_FORMAT = "m4a"

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
    #: reuse chunks already made in the other book folders under ``out_dir``'s parent (same key: same model,
    #: parameters and spoken text), whatever the book file is called
    share_chunks: bool = True
    #: the book's pronunciation lexicon (None: ``<book stem>.lexicon.toml``/``.csv`` next to it, if any)
    lexicon_book: str | None = None
    #: the global lexicon shared by every book (None: ``VOXMILL_LEXICON``, if set)
    lexicon: str | None = None
    #: a cast file (TOML): narrator, dialogue and character voices; None: one voice reads everything
    cast: str | None = None
    #: ``chapters``: each chapter encoded once, in parallel, joined by stream copy; ``whole-book``: the book
    #: encoded as one stream (the earlier path, kept as the benchmark's baseline)
    mastering: str = "chapters"
    #: the chapter path's AAC coder (:data:`voxmill.book.m4b.AAC_CODERS`)
    aac_coder: str = DEFAULT_AAC_CODER

    @property
    def audio_format(self) -> str:
        """The chapter files' audio format (``epub`` books have m4a chapters)."""
        return READALONG_CHAPTER_FORMAT if self.chapter_format == "epub" else self.chapter_format

    def __post_init__(self) -> None:
        if self.model not in TTS_MODELS:
            raise ConfigError(f"model {self.model!r} cannot speak a book; choose one of {', '.join(TTS_MODELS)}")
        if self.chapter_format not in CHAPTER_FORMATS:
            raise ConfigError(f"chapter format {self.chapter_format!r}: choose one of {', '.join(CHAPTER_FORMATS)}")
        if self.mastering not in ("chapters", "whole-book"):
            raise ConfigError(f"mastering {self.mastering!r}: choose 'chapters' or 'whole-book'")
        if self.aac_coder not in AAC_CODERS:
            raise ConfigError(f"AAC coder {self.aac_coder!r}: choose one of {', '.join(AAC_CODERS)}")
        OutputSpec(format=self.audio_format, loudness_lufs=self.loudness_lufs, true_peak_db=self.true_peak_db,
                   bitrate=self.bitrate)  # the same checks as any output


@dataclass(frozen=True)
class BookPlan:
    """A parsed book, the chapters chosen and their chunks."""

    book: Book
    selected: tuple[Chapter, ...]
    chunks: dict[int, list[Chunk]]
    lexicon: Lexicon = field(default_factory=Lexicon)
    cast: Cast | None = None

    def voice(self, chunk: Chunk, request: AudiobookRequest) -> Voice:
        """The model and parameters that read ``chunk``."""
        return self.cast.voice(chunk.role) if self.cast else Voice(request.model, dict(request.params))

    @property
    def respelled(self) -> int:
        """Chunks whose spoken text the lexicon changed."""
        return sum(1 for chunks in self.chunks.values() for c in chunks if c.spoken is not None)

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
    #: chunks taken from other book folders under the same output root (not billed)
    shared_chunks: int = 0

    @property
    def ok(self) -> bool:
        """True when every chunk is done and the book was written."""
        return self.m4b is not None and not self.missing

    @property
    def qc_failed(self) -> tuple[str, ...]:
        """Ids of chunks still bad after every retake (QC on); the book is written with their best takes."""
        return tuple(item[0] for item in self.qc.failing) if self.qc else ()

    def headline(self) -> str:
        """One line for logs and the CLI."""
        if not self.ok:
            return (f"{self.title}: {len(self.missing)} of {self.chunks} chunks not done "
                    f"({self.summary.headline()}); the book was not assembled — rerun to retry them")
        still_bad = (f"; {len(self.qc_failed)} chunks still bad after {self.qc.retakes} retakes "
                     f"({', '.join(self.qc_failed[:5])}{'…' if len(self.qc_failed) > 5 else ''}): see qc.parquet"
                     if self.qc_failed and self.qc else "")
        return (f"{self.title}: {self.chapters} chapters, {self.chunks} chunks, "
                f"{self.audio_seconds / 3600:.2f} h → {self.m4b}{still_bad}")


def plan_book(request: AudiobookRequest) -> BookPlan:
    """Read the book and split the chosen chapters into chunks sized for the model (sends nothing)."""
    book = read_book(Path(request.book))
    book = dataclasses.replace(book, title=request.title or book.title, author=request.author or book.author)
    selected = tuple(select_chapters(book.chapters, request.chapters, request.exclude))
    if not selected:
        raise ConfigError(f"book {request.book!r}: no chapter selected (see `voxmill audiobook --list`)")
    lexicon = resolve_lexicon(request.book, request.lexicon_book, request.lexicon)
    cast = load_cast(request.cast, request.model, request.params) if request.cast else None
    if cast is None:
        limits = ChunkLimits.for_model(request.model)
        raw = {c.index: chunk_chapter(c, limits) for c in selected}
    else:
        limits = cast.limits()
        raw = {c.index: cast_chunks(c, limits, cast, book.language) for c in selected}
    chunks = {index: [_spoken(chunk, lexicon) for chunk in found] for index, found in raw.items()}
    return BookPlan(book, selected, chunks, lexicon, cast)


def _spoken(chunk: Chunk, lexicon: Lexicon) -> Chunk:
    spoken = lexicon.apply(chunk.text) if lexicon else chunk.text
    return dataclasses.replace(chunk, spoken=spoken) if spoken != chunk.text else chunk


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
    write_table(_manifest_table(plan, request, all_chunks), manifest)
    defaults = RunDefaults(model=request.model, params=dict(request.params) if plan.cast is None else {})
    adopted = adopt_shared_chunks(out_dir, manifest, defaults) if request.share_chunks else 0
    if adopted:
        say(f"{plan.book.title}: {adopted} chunks already made under {out_dir.parent} (reused, not billed)")
    job = JobRequest(
        kind="tts",
        manifest=str(manifest),
        out_dir=out_dir,
        defaults=defaults,
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
                missing=missing, summary=summary, shared_chunks=adopted)
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
        qc, qc_summary = check_chunks(all_chunks, rows, out_dir=out_dir, options=options, run=run,
                                      voice_of=lambda chunk: _model_params(plan.voice(chunk, request)))
        rows = {item_id: dict(check.row) for item_id, check in qc.items()}  # the best take of each chunk
        timings["qc_s"] = time.monotonic() - clock
    clock = time.monotonic()
    say(f"{plan.book.title}: assembling {len(plan.selected)} chapters")
    assembled = [
        _assemble(chapter, plan.chunks[chapter.index], rows, out_dir, request.pauses) for chapter in plan.selected
    ]
    say(f"{plan.book.title}: mastering {sum(a.duration_s for a in assembled) / 3600:.2f} h "
        "(loudness over the chapters, each chapter encoded once in parallel, joined without re-encoding)")
    timings["assembly_s"] = time.monotonic() - clock
    clock = time.monotonic()
    mastered = _master(request, plan, assembled, out_dir)
    m4b = mastered.m4b
    timings["mastering_s"] = time.monotonic() - clock
    _write_tables(plan, assembled, rows, qc, out_dir, request.qc, mastered)
    audio_seconds = sum(a.duration_s for a in assembled)
    timings["total_s"] = time.monotonic() - started
    result = AudiobookResult(m4b=str(m4b), audio_seconds=round(audio_seconds, 3), timings=_rounded(timings),
                             qc=qc_summary, **base)
    _write_summary(result, out_dir)
    return result


def _model_params(voice: Voice) -> tuple[str, Mapping[str, Any]]:
    return voice.model, voice.params


def _manifest_table(plan: BookPlan, request: AudiobookRequest, chunks: list[Chunk]) -> pa.Table:
    """The chunks' TTS manifest: id and spoken text; with a cast, each row's own model and parameters too."""
    columns: dict[str, list[Any]] = {"id": [c.item_id for c in chunks], "text": [c.speech for c in chunks]}
    if plan.cast is not None:
        voices = [plan.voice(c, request) for c in chunks]
        columns["model"] = [v.model for v in voices]
        columns["params"] = [json.dumps(dict(v.params), sort_keys=True) for v in voices]
    return pa.table(columns)


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


@dataclass(frozen=True)
class Mastered:
    """The written book: the m4b, each chapter's mark in it, where a chapter's speech starts after its mark,
    and each chapter's own encoded AAC file (None from the whole-book path)."""

    m4b: Path
    marks: tuple[ChapterMark, ...]
    speech_offset_s: float
    encoded: tuple[Path, ...] | None


def _book_tags(request: AudiobookRequest, plan: BookPlan) -> dict[str, str | None]:
    book = plan.book
    narrator = f"{request.model}" + (f" ({request.params['voice']})" if request.params.get("voice") else "")
    if plan.cast is not None:
        narrator = f"{plan.cast.narrator.describe()} and a cast of {len(plan.cast.characters)}"
    return {"title": book.title, "album": book.title, "artist": book.author, "album_artist": book.author,
            "composer": narrator, "genre": "Audiobook", "language": book.language,
            "comment": f"narrated by {narrator} with voxmill"}


def _cover(plan: BookPlan, work: Path) -> Path | None:
    if not plan.book.cover:
        return None
    cover = work / f"cover.{plan.book.cover_type or 'jpg'}"
    write_bytes_atomic(cover, plan.book.cover)
    return cover


def _master(request: AudiobookRequest, plan: BookPlan, assembled: list[ChapterAudio], out_dir: Path) -> Mastered:
    """Loudness measured over the chapters, each chapter encoded once (in parallel), joined by stream copy into
    the m4b; chapter files and subtitles beside it (see :mod:`voxmill.book.m4b`)."""
    if request.mastering == "whole-book":
        return _master_whole_book(request, plan, assembled, out_dir)
    work = out_dir / WORK_DIR
    rate = TTS_SAMPLE_RATE
    samples = [round(a.duration_s * rate) for a in assembled]
    gains = chapter_gains([a.path for a in assembled], [a.duration_s for a in assembled], request.loudness_lufs,
                          request.true_peak_db)
    encoded = encode_chapters([a.path for a in assembled], [work / f"ch{a.chapter:03d}.m4a" for a in assembled],
                              samples, gains=gains, sample_rate=rate, bitrate=request.bitrate, coder=request.aac_coder)
    marks, cursor = [], 0
    for chapter, count in zip(plan.selected, samples, strict=True):
        marks.append(ChapterMark(chapter.title, cursor / rate, (cursor + chapter_span(count)) / rate))
        cursor += chapter_span(count)
    tags = _book_tags(request, plan)
    m4b = join_chapters(encoded, out_dir / f"{slug(plan.book.title)}.m4b", tags=tags, marks=marks,
                        cover=_cover(plan, work))
    mastered = Mastered(m4b, tuple(marks), AAC_PRIMING / rate, tuple(encoded))
    _chapter_files(request, plan, assembled, out_dir, tags,
                   [g.filter for g in gains] if gains else [None] * len(assembled), mastered)
    _readalong(request, plan, assembled, out_dir, tags)
    return mastered


def _readalong(request: AudiobookRequest, plan: BookPlan, assembled: list[ChapterAudio], out_dir: Path,
               tags: Mapping[str, str | None]) -> Path | None:
    """With ``--format epub``: ``<title>.epub`` beside the m4b, its audio the chapter files."""
    if request.chapter_format != "epub":
        return None
    chapters = [ReadAlongChapter(chapter.title, audio.placed,
                                 out_dir / "chapters" / f"{chapter_stem(chapter)}.{request.audio_format}",
                                 audio.duration_s)
                for chapter, audio in zip(plan.selected, assembled, strict=True)]
    book = plan.book
    cover = (book.cover, book.cover_type or "jpg") if book.cover else None
    return write_readalong_epub(out_dir / f"{slug(book.title)}.epub", chapters, title=book.title, author=book.author,
                                language=book.language, narrator=tags.get("composer"), cover=cover)


def _chapter_files(request: AudiobookRequest, plan: BookPlan, assembled: list[ChapterAudio], out_dir: Path,
                   tags: Mapping[str, str | None], filters: Sequence[str | None], mastered: Mastered) -> None:
    """``chapters/NNN Title.<fmt>`` (the chapter's own AAC when the format is m4b/m4a), ``.srt`` and ``.vtt``;
    ``filters``: each chapter's mastering filter."""
    chapters_dir = out_dir / "chapters"
    chapters_dir.mkdir(parents=True, exist_ok=True)

    def write(number: int) -> None:
        chapter, audio = plan.selected[number - 1], assembled[number - 1]
        stem = chapter_stem(chapter)
        track_tags = {**tags, "title": chapter.title, "track": f"{number}/{len(assembled)}"}
        target = chapters_dir / f"{stem}.{request.audio_format}"
        if request.audio_format in ("m4b", "m4a"):  # the book's own AAC: no second encode
            if mastered.encoded is not None:
                retag(mastered.encoded[number - 1], target, tags=track_tags)
            else:
                cut_chapter(mastered.m4b, target, mastered.marks[number - 1], tags=track_tags)
        else:
            write_chapter_file(audio.path, target, request.audio_format, tags=track_tags, filters=filters[number - 1],
                               sample_rate=TTS_SAMPLE_RATE, bitrate=request.bitrate)
        cues = chapter_cues(audio.placed)
        write_bytes_atomic(chapters_dir / f"{stem}.srt", to_srt(cues).encode())
        write_bytes_atomic(chapters_dir / f"{stem}.vtt", to_vtt(cues).encode())

    parallel_map(write, list(range(1, len(assembled) + 1)))


def _master_whole_book(request: AudiobookRequest, plan: BookPlan, assembled: list[ChapterAudio],
                       out_dir: Path) -> Mastered:
    """The earlier path, kept for the benchmark's baseline: the chapters joined as PCM, the loudness measured
    over the whole book, the book encoded in one AAC stream, chapters cut out of it."""
    work = out_dir / WORK_DIR
    book_wav = join_wavs([a.path for a in assembled], work / "book.wav")
    tags = _book_tags(request, plan)
    try:
        filters = book_loudness_filter(book_wav, request.loudness_lufs, request.true_peak_db, TTS_SAMPLE_RATE)
        marks, cursor = [], 0.0
        for chapter, audio in zip(plan.selected, assembled, strict=True):
            marks.append(ChapterMark(chapter.title, cursor, cursor + audio.duration_s))
            cursor += audio.duration_s
        m4b = write_m4b(book_wav, out_dir / f"{slug(plan.book.title)}.m4b", tags=tags, marks=marks,
                        cover=_cover(plan, work), filters=filters, sample_rate=TTS_SAMPLE_RATE,
                        bitrate=request.bitrate)
    finally:
        book_wav.unlink(missing_ok=True)  # hours of PCM: only the m4b is kept
    mastered = Mastered(m4b, tuple(marks), 0.0, None)
    _chapter_files(request, plan, assembled, out_dir, tags, [filters] * len(assembled), mastered)
    _readalong(request, plan, assembled, out_dir, tags)
    return mastered


def _write_tables(
    plan: BookPlan,
    assembled: list[ChapterAudio],
    rows: Mapping[str, Mapping[str, Any]],
    qc: Mapping[str, ChunkQc],
    out_dir: Path,
    request_qc: QcOptions,
    mastered: Mastered,
) -> None:
    """``chapters.parquet`` (every chapter, skipped ones included) and ``chunks.parquet`` (one row per chunk).

    A chapter's ``start_s``/``end_s`` are its mark in the m4b; ``duration_s`` is its audio (the span also holds
    AAC frame padding); a chunk's ``book_start_s`` is where its speech starts in the m4b."""
    by_index = {a.chapter: a for a in assembled}
    marks = {a.chapter: mark for a, mark in zip(assembled, mastered.marks, strict=True)}
    chapter_rows, chunk_rows = [], []
    for chapter in plan.book.chapters:
        audio = by_index.get(chapter.index)
        mark = marks.get(chapter.index)
        chapter_rows.append({
            "chapter": chapter.index, "title": chapter.title, "depth": chapter.depth, "words": chapter.words,
            "chars": chapter.chars, "selected": audio is not None, "skip_reason": chapter.skip_reason,
            "chunks": len(plan.chunks.get(chapter.index, ())),
            "start_s": round(mark.start_s, 3) if mark else None,
            "end_s": round(mark.end_s, 3) if mark else None,
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
                "spoken": placed.chunk.spoken, "role": placed.chunk.role,
                "start_s": round(placed.start_s, 3), "end_s": round(placed.end_s, 3),
                "book_start_s": round(mark.start_s + mastered.speech_offset_s + placed.start_s, 3),
                "duration_s": round(placed.end_s - placed.start_s, 3), "generated_s": row["duration_s"],
                "audio_path": str(Path(row["audio_path"]).relative_to(out_dir)),
                "wer": qc[placed.chunk.item_id].wer if qc else None,
                "longest_run": qc[placed.chunk.item_id].longest_run if qc else None,
                "qc_bad": qc[placed.chunk.item_id].bad(request_qc) if qc else None,
                "chars_per_s": round(len(placed.chunk.text) / row["duration_s"], 2) if row["duration_s"] else None,
                "take": qc[placed.chunk.item_id].take if qc else 0,
                "takes": qc[placed.chunk.item_id].takes if qc else 1,
            })
    write_table(pa.Table.from_pylist(chapter_rows), out_dir / "chapters.parquet")
    write_table(pa.Table.from_pylist(chunk_rows), out_dir / "chunks.parquet")


def _write_summary(result: AudiobookResult, out_dir: Path) -> None:
    record = dataclasses.asdict(result)
    write_bytes_atomic(out_dir / SUMMARY_FILE, json.dumps(record, indent=2, default=str).encode())


__all__ = ["AudiobookRequest", "AudiobookResult", "BookPlan", "CHAPTER_FORMATS", "DEFAULT_MODEL", "RunChunks",
           "chapter_stem", "make_audiobook", "plan_book", "slug"]
