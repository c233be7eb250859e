"""Flow: synthesise a manifest, transcribe the speech back, report the WER (the demo; later, dataset QC)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow
from prefect.states import State

from flows.synthesize import synthesize
from flows.transcribe import transcribe
from tasks.params import OutputFormat
from voxmill.jobs import JobFailed, RunSummary
from voxmill.options import DEFAULT_OPTIONS, RunOptions
from voxmill.roundtrip import RoundTripReport, asr_manifest_from_results, round_trip_report


@dataclass(frozen=True)
class RoundTripSummary:
    """Both jobs' summaries and the WER of the speech against its text."""

    tts: RunSummary
    asr: RunSummary
    wer: RoundTripReport


class RoundTripFailed(Exception):
    """Some items of the round trip failed; ``summary`` holds both jobs' counts."""

    def __init__(self, message: str, summary: RoundTripSummary) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> tuple[type[RoundTripFailed], tuple[str, RoundTripSummary]]:
        return (RoundTripFailed, (str(self), self.summary))


def _summary_of(step: str, state: State) -> RunSummary:
    """A child's summary, Completed or Failed with counts; a child that ended otherwise fails the parent."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunSummary):
        return result
    if isinstance(result, JobFailed):
        return result.summary
    raise RuntimeError(f"{step} {state.name.lower()}: {state.message}")


@flow(name="voxmill-roundtrip", log_prints=True, persist_result=True)
def roundtrip(
    manifest: str,
    out_dir: str,
    output_format: OutputFormat = "mp3",
    options: RunOptions = DEFAULT_OPTIONS,
) -> RoundTripSummary:
    """TTS ``manifest`` into ``out_dir/tts``, ASR the results into ``out_dir/asr``; return counts and WER.

    A child that fails outright fails this run with the child's own message; items that failed in either
    job fail it with both jobs' counts (the speech that was made is still transcribed).
    """
    out = Path(out_dir)
    common = dict(options=options)
    tts_state = synthesize(manifest=manifest, out_dir=str(out / "tts"), output_format=output_format,
                           return_state=True, **common)
    tts = _summary_of("synthesize", tts_state)
    if tts.ledger_done == 0:
        raise RuntimeError(f"synthesize made no speech to transcribe: {tts_state.message}")
    asr_manifest = out / "asr_manifest.parquet"
    asr_manifest_from_results(out / "tts", asr_manifest)
    asr_state = transcribe(manifest=str(asr_manifest), out_dir=str(out / "asr"), return_state=True, **common)
    asr = _summary_of("transcribe", asr_state)
    summary = RoundTripSummary(tts, asr, round_trip_report(out / "asr"))
    if not (tts.ok and asr.ok):
        raise RoundTripFailed(f"synthesize: {tts.headline()}; transcribe: {asr.headline()}", summary)
    return summary
