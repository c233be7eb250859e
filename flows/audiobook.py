"""Flow: a book (EPUB, TXT, Markdown, HTML) → an m4b with chapter marks, chapter files, subtitles, tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from tasks.job import artifact_key, run_job_in_flow
from tasks.params import TtsModel
from tasks.settings import flow_settings
from voxmill.book.m4b import DEFAULT_BITRATE, DEFAULT_LOUDNESS_LUFS, DEFAULT_TRUE_PEAK_DB
from voxmill.book.pipeline import CHAPTER_FORMATS, DEFAULT_MODEL, AudiobookRequest, AudiobookResult, make_audiobook
from voxmill.book.qc import DEFAULT_MAX_WER, QcOptions
from voxmill.jobs import JobFailed, JobRequest, RunSummary
from voxmill.options import DEFAULT_OPTIONS, RunnerKind, RunOptions
from voxmill.settings import Settings

ChapterFormat = Literal[CHAPTER_FORMATS]  # type: ignore[valid-type]


class AudiobookFailed(Exception):
    """Some chunks of the book are not done, so it was not assembled; ``result`` holds the counts."""

    def __init__(self, result: AudiobookResult) -> None:
        super().__init__(result.headline())
        self.result = result

    def __reduce__(self) -> tuple[type[AudiobookFailed], tuple[AudiobookResult]]:
        return (AudiobookFailed, (self.result,))


@flow(name="voxmill-audiobook", log_prints=True, persist_result=True)
def audiobook(
    book: str,
    out_dir: str,
    model: TtsModel = DEFAULT_MODEL,
    params: dict[str, Any] | None = None,
    chapter_format: ChapterFormat = "m4b",
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
    options: RunOptions = DEFAULT_OPTIONS,
) -> AudiobookResult:
    """Speak ``book`` into ``out_dir``; every chunk goes through the batch engine as Prefect tasks.

    Rerunning on the same ``out_dir`` sends only chunks whose text changed. ``qc`` transcribes every chunk
    back; ``retakes`` regenerates chunks over ``qc_max_wer`` (every take billed and recorded, best kept).
    With no key and no Secret block a local server speaks it, labelled. Ends Failed (AudiobookFailed, with
    the counts) when a chunk failed: the book is then not assembled; rerun to retry.
    """
    request = AudiobookRequest(
        book=book, out_dir=Path(out_dir), model=model, params=params or {}, chapter_format=chapter_format,
        loudness_lufs=loudness_lufs, true_peak_db=true_peak_db, bitrate=bitrate, chapters=chapters,
        exclude=exclude, title=title, author=author, workers=options.workers,
        qc=QcOptions(enabled=qc or retakes > 0, retakes=retakes, max_wer=qc_max_wer),
    )
    logger = get_run_logger()
    with flow_settings(options) as settings:
        result = make_audiobook(request, settings, say=logger.info,
                                run_chunks=lambda job: _run_chunks(job, settings, options.runner))
    create_table_artifact(
        key=artifact_key("audiobook", request.out_dir),
        table=[{"measure": name, "value": value} for name, value in (
            ("title", result.title), ("chapters", result.chapters), ("chunks", result.chunks),
            ("chunks not done", len(result.missing)), ("skipped", "; ".join(result.skipped) or "-"),
            ("audio hours", round(result.audio_seconds / 3600, 4)), ("m4b", result.m4b or "-"),
            *((f"{name} (s)", value) for name, value in result.timings.items()),
            *(("QC", line) for line in (result.qc.lines() if result.qc else ())),
        )],
        description=result.headline(),
    )
    logger.info(result.headline())
    if not result.ok:
        raise AudiobookFailed(result)
    return result


def _run_chunks(job: JobRequest, settings: Settings, runner: RunnerKind) -> RunSummary:
    """The chunks as an ordinary job; failed chunks come back as counts (the book decides what they mean)."""
    try:
        return run_job_in_flow(job, settings, runner=runner)
    except JobFailed as failed:
        return failed.summary
