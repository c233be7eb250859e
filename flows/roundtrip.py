"""Flow: synthesise a manifest, transcribe the speech back, report the WER (the demo; later, dataset QC)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.synthesize import synthesize
from flows.transcribe import transcribe
from voxmill.roundtrip import asr_manifest_from_results, round_trip_report


@flow(name="voxmill-roundtrip", log_prints=True)
def roundtrip(
    manifest: str,
    out_dir: str,
    output_format: str = "mp3",
    requests_per_second: float | None = None,
    max_concurrent: int | None = None,
    base_url: str | None = None,
) -> dict[str, Any]:
    """TTS ``manifest`` into ``out_dir/tts``, ASR the results into ``out_dir/asr``; return counts and WER."""
    out = Path(out_dir)
    limits = dict(requests_per_second=requests_per_second, max_concurrent=max_concurrent, base_url=base_url)
    tts_state = synthesize(manifest=manifest, out_dir=str(out / "tts"), output_format=output_format,
                           return_state=True, **limits)
    tts = tts_state.result(raise_on_failure=False)
    asr_manifest = out / "asr_manifest.parquet"
    asr_manifest_from_results(out / "tts", asr_manifest)
    asr_state = transcribe(manifest=str(asr_manifest), out_dir=str(out / "asr"), return_state=True, **limits)
    asr = asr_state.result(raise_on_failure=False)
    report = round_trip_report(out / "asr")
    return {"tts": tts, "asr": asr, "wer": report}
