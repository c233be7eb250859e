"""``voxmill audiobook BOOK… -o OUT``: books → one folder each under OUT (m4b, chapter files, subtitles, tables).

A BOOK is an .epub/.txt/.md/.html file, or a CSV/Parquet manifest of books with a ``path`` column and
optional ``title``, ``author``, ``model``, ``voice`` and ``params`` (JSON) columns. ``--list`` prints the
chapters (index, title, words, characters, estimated duration and cost) and sends nothing.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxmill.book.chapters import select_chapters
from voxmill.book.chunking import ChunkLimits, chunk_chapter
from voxmill.book.m4b import DEFAULT_BITRATE, DEFAULT_LOUDNESS_LUFS, DEFAULT_TRUE_PEAK_DB
from voxmill.book.pipeline import CHAPTER_FORMATS, DEFAULT_MODEL, AudiobookRequest, make_audiobook, slug
from voxmill.book.qc import DEFAULT_MAX_WER, QcOptions
from voxmill.book.sources import BOOK_TYPES, read_book
from voxmill.catalog import TTS_MODELS
from voxmill.cli.common import (
    EXIT_OK,
    add_param_option,
    add_run_options,
    announce,
    exit_code_for_run,
    parse_params,
    price_table,
    progress_bar,
    run_options,
)
from voxmill.errors import ConfigError
from voxmill.estimate import WORDS_PER_SECOND, PriceTable
from voxmill.manifests import iter_record_batches, manifest_format
from voxmill.progress import ProgressBoard
from voxmill.settings import Settings


@dataclass(frozen=True)
class BookEntry:
    """One book to make: its file and what the manifest (or the command line) says about it."""

    path: Path
    title: str | None = None
    author: str | None = None
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def add_audiobook_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``audiobook`` subcommand to the ``voxmill`` parser."""
    parser = sub.add_parser("audiobook", help="books (EPUB, TXT, Markdown, HTML) → m4b with chapters, subtitles")
    parser.add_argument("books", nargs="+", metavar="BOOK",
                        help="book files, or a CSV/Parquet manifest of books (path, title, author, model, voice, "
                             "params)")
    parser.add_argument("-o", "--out", type=Path, help="output directory: one folder per book (rerun to resume)")
    parser.add_argument("--list", action="store_true", help="print the chapters and the estimate; send nothing")
    parser.add_argument("--chapters", help="exactly these chapters, e.g. 1,3-5 (skipped ones too, when named)")
    parser.add_argument("--exclude", help="leave out these chapters, e.g. 2,9")
    parser.add_argument("--model", choices=TTS_MODELS, help=f"TTS model (default {DEFAULT_MODEL})")
    parser.add_argument("--voice", help="voice of the model")
    add_param_option(parser, "model parameter (repeatable; JSON values allowed)")
    parser.add_argument("--format", default="m4b", choices=CHAPTER_FORMATS, dest="chapter_format",
                        help="per-chapter files (default m4b); the whole book is always an .m4b")
    parser.add_argument("--loudness", type=_loudness, default=DEFAULT_LOUDNESS_LUFS,
                        help=f"integrated loudness of the book in LUFS, or 'off' (default {DEFAULT_LOUDNESS_LUFS})")
    parser.add_argument("--true-peak", type=float, default=DEFAULT_TRUE_PEAK_DB,
                        help=f"true-peak ceiling in dBTP (default {DEFAULT_TRUE_PEAK_DB})")
    parser.add_argument("--bitrate", default=DEFAULT_BITRATE, help=f"AAC/MP3/Opus bitrate (default {DEFAULT_BITRATE})")
    parser.add_argument("--title", help="book title (one book only; default: from the book)")
    parser.add_argument("--author", help="author (one book only; default: from the book)")
    parser.add_argument("--prices", type=Path, help="JSON price table for --list (default VOXMILL_PRICES)")
    parser.add_argument("--qc", action="store_true", help="transcribe every chunk back: WER and chars/s per chunk")
    parser.add_argument("--retakes", type=int, default=0,
                        help="with --qc: regenerate chunks over the WER threshold up to N times (best take kept)")
    parser.add_argument("--qc-wer", type=float, default=DEFAULT_MAX_WER,
                        help=f"with --qc: the WER above which a chunk is retaken (default {DEFAULT_MAX_WER})")
    add_run_options(parser, runner=False)
    parser.set_defaults(handler=run_audiobook_command)


def _loudness(value: str) -> float | None:
    if value.strip().lower() in ("off", "none"):
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a loudness in LUFS (e.g. -18) or 'off'") from None


def book_entries(sources: list[str]) -> list[BookEntry]:
    """Book files as given, and the rows of any CSV/Parquet manifest among them (paths relative to it)."""
    entries: list[BookEntry] = []
    for source in sources:
        suffix = Path(source).suffix.lower().lstrip(".")
        if suffix in BOOK_TYPES:
            entries.append(BookEntry(Path(source)))
            continue
        manifest_format(source)  # ConfigError for anything that is neither a book nor a manifest
        base = Path(source).parent
        for batch in iter_record_batches(source):
            if "path" not in batch.schema.names:
                raise ConfigError(f"book manifest {source!r} has no 'path' column (columns: "
                                  f"{', '.join(batch.schema.names)})")
            for number, row in enumerate(batch.to_pylist(), start=1):
                if not row.get("path"):
                    raise ConfigError(f"book manifest {source!r} row {number}: 'path' is empty")
                params = row.get("params") or {}
                if isinstance(params, str):
                    try:
                        params = json.loads(params)
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"book manifest {source!r} row {number}: 'params' is not JSON "
                                          f"({exc.msg})") from None
                if row.get("voice"):
                    params = {**params, "voice": row["voice"]}
                path = Path(row["path"])
                entries.append(BookEntry(path if path.is_absolute() else base / path, row.get("title") or None,
                                         row.get("author") or None, row.get("model") or None, dict(params)))
    return entries


def _request(entry: BookEntry, args: argparse.Namespace, out: Path) -> AudiobookRequest:
    params = {**entry.params, **parse_params(args.param)}
    if args.voice:
        params["voice"] = args.voice
    return AudiobookRequest(
        book=str(entry.path), out_dir=out / slug(entry.path.stem), model=args.model or entry.model or DEFAULT_MODEL,
        params=params, chapter_format=args.chapter_format, loudness_lufs=args.loudness, true_peak_db=args.true_peak,
        bitrate=args.bitrate, chapters=args.chapters, exclude=args.exclude, title=args.title or entry.title,
        author=args.author or entry.author,
        qc=QcOptions(enabled=args.qc or args.retakes > 0, retakes=args.retakes, max_wer=args.qc_wer),
    )


def list_book(request: AudiobookRequest, prices: PriceTable) -> str:
    """The chapter table of one book: index, title, words, characters, chunks, estimated minutes and cost."""
    book = read_book(Path(request.book))
    chosen = {c.index for c in select_chapters(book.chapters, request.chapters, request.exclude)}
    limits = ChunkLimits.for_model(request.model)
    lines = [f"{request.title or book.title}" + (f" — {request.author or book.author}" if book.author else "")
             + f" ({request.book}; model {request.model})",
             f"{'#':>4}  {'title':<40} {'words':>7} {'chars':>8} {'chunks':>6} {'min':>6} {'cost':>8}"]
    total = {"words": 0, "chars": 0, "chunks": 0, "minutes": 0.0, "cost": 0.0}
    cost_known = True
    for chapter in book.chapters:
        minutes = chapter.words / WORDS_PER_SECOND / 60
        chunks = len(chunk_chapter(chapter, limits))
        cost = prices.cost(request.model, chars=chapter.chars, minutes=minutes, requests=chunks)
        status = "" if chapter.index in chosen else f"  skipped ({chapter.skip_reason or 'not selected'})"
        shown = f"{cost:.2f}" if cost is not None else "?"
        lines.append(f"{chapter.index:>4}  {chapter.title[:40]:<40} {chapter.words:>7} {chapter.chars:>8} "
                     f"{chunks:>6} {minutes:>6.1f} {shown:>8}{status}")
        if chapter.index in chosen:
            total.update(words=total["words"] + chapter.words, chars=total["chars"] + chapter.chars,
                         chunks=total["chunks"] + chunks, minutes=total["minutes"] + minutes)
            cost_known = cost_known and cost is not None
            total["cost"] += cost or 0.0
    cost_text = f"{total['cost']:.2f}" if cost_known else "unknown (give --prices)"
    lines.append(f"selected: {len(chosen)} chapters, {total['words']} words, {total['chars']} chars, "
                 f"{total['chunks']} requests, ~{total['minutes'] / 60:.2f} h of speech; cost {cost_text}")
    return "\n".join(lines)


def run_audiobook_command(args: argparse.Namespace) -> int:
    """The ``voxmill audiobook`` handler."""
    entries = book_entries(args.books)
    if (args.title or args.author) and len(entries) > 1:
        raise ConfigError("--title/--author name one book; give titles per book in a manifest instead")
    if args.list:
        prices = price_table(args.prices)
        print("\n\n".join(list_book(_request(e, args, Path(".")), prices) for e in entries))
        return EXIT_OK
    if args.out is None:
        raise ConfigError("give -o/--out (the output directory), or --list to only look")
    from tasks.settings import run_settings

    requests = [_request(e, args, args.out) for e in entries]
    codes = [EXIT_OK]
    with run_settings(run_options(args), announce=announce) as settings:
        for request in requests:
            say = None if args.no_progress else announce
            result = make_audiobook(request, settings, run_chunks=_runner(settings, args.no_progress), say=say)
            print(result.headline())
            if result.qc:
                print("\n".join(result.qc.lines()))
            codes.append(exit_code_for_run(result.ok, result.summary.stop_kind))
            if result.summary.stop_kind is not None:
                break  # the key was refused: the next book would be refused too
    return max(codes)


def _runner(settings: Settings, no_progress: bool):
    """The chunk-job runner of the CLI: :func:`voxmill.jobs.run_job`, with a live bar on a terminal."""
    from voxmill.jobs import run_job

    def run(job):
        with progress_bar(ProgressBoard(), enabled=not no_progress) as board:
            return run_job(job, settings, progress=board)

    return run


__all__ = ["BookEntry", "add_audiobook_parser", "book_entries", "list_book", "run_audiobook_command"]
