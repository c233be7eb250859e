"""Flow: a book (EPUB, TXT, Markdown, HTML) → an m4b with chapter marks, chapter files, subtitles, tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.job import run_job_in_flow
from tasks.settings import resolve_settings
from voxmill.book.m4b import DEFAULT_BITRATE, DEFAULT_LOUDNESS_LUFS, DEFAULT_TRUE_PEAK_DB
from voxmill.book.pipeline import DEFAULT_MODEL, AudiobookRequest, make_audiobook
from voxmill.book.qc import DEFAULT_MAX_WER, QcOptions
from voxmill.progress import active_board

WORKERS = 4


@flow(name="voxmill-audiobook", task_runner=ThreadPoolTaskRunner(max_workers=WORKERS), log_prints=True)
def audiobook(
    book: str,
    out_dir: str,
    model: str = DEFAULT_MODEL,
    params: dict[str, Any] | None = None,
    chapter_format: str = "m4b",
    loudness_lufs: float | None = DEFAULT_LOUDNESS_LUFS,
    true_peak_db: float = DEFAULT_TRUE_PEAK_DB,
    bitrate: str = DEFAULT_BITRATE,
    chapters: str | None = None,
    exclude: str | None = None,
    title: str | None = None,
    author: str | None = None,
    qc: bool = False,
    retakes: int = 0,
    qc_max_wer: float = DEFAULT_MAX_WER,
    requests_per_second: float | None = None,
    requests_per_minute: float | None = None,
    max_concurrent: int | None = None,
    base_url: str | None = None,
    api_key_block: str | None = None,
):
    """Speak ``book`` into ``out_dir``; every chunk goes through the batch engine as Prefect tasks.

    Rerunning on the same ``out_dir`` sends only chunks whose text changed. ``qc`` transcribes every chunk
    back; ``retakes`` regenerates chunks over ``qc_max_wer`` (every take billed and recorded, best kept).
    Ends Failed when a chunk failed
    (the book is then not assembled; rerun to retry).
    """
    settings = resolve_settings(
        base_url=base_url, requests_per_second=requests_per_second, requests_per_minute=requests_per_minute,
        max_concurrent=max_concurrent, api_key_block=api_key_block,
    )
    request = AudiobookRequest(
        book=book, out_dir=Path(out_dir), model=model, params=params or {}, chapter_format=chapter_format,
        loudness_lufs=loudness_lufs, true_peak_db=true_peak_db, bitrate=bitrate, chapters=chapters,
        exclude=exclude, title=title, author=author, workers=WORKERS,
        qc=QcOptions(enabled=qc or retakes > 0, retakes=retakes, max_wer=qc_max_wer),
    )
    result = make_audiobook(request, settings, run_chunks=lambda job: run_job_in_flow(job, settings, active_board()))
    create_table_artifact(
        key="voxmill-audiobook-summary",
        table=[{"measure": name, "value": value} for name, value in (
            ("title", result.title), ("chapters", result.chapters), ("chunks", result.chunks),
            ("chunks not done", len(result.missing)), ("skipped", "; ".join(result.skipped) or "-"),
            ("audio hours", round(result.audio_seconds / 3600, 4)), ("m4b", result.m4b or "-"),
            *((f"{name} (s)", value) for name, value in result.timings.items()),
            *(("QC", line) for line in (result.qc.lines() if result.qc else ())),
        )],
        description=result.headline(),
    )
    print(result.headline())
    return Completed(message=result.headline(), data=result) if result.ok else Failed(
        message=result.headline(), data=result
    )
