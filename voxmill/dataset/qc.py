"""Quality checks as data: measure each clip once, keep the measures as columns, judge every build again.

Measures travel with a row from version to version, so a carried-over row is never decoded again; the
verdict (thresholds + the interquartile outlier rule on seconds per character, as Emilia-Pipe does) is
recomputed on the whole candidate set at each build, because the outlier bounds depend on it. The outlier
rule runs per voice by default: voices speak at different rates, and one slow voice's normal rows are not
outliers of the whole set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from voxmill.audio.measure import decode_float32, loudness_lufs, pcm16_wav_layout, peak_dbfs, probe
from voxmill.dataset.spec import QcThresholds
from voxmill.dataset.stats import iqr_bounds_by, voice_of

#: a 10 ms frame quieter than this (RMS, dBFS) is silence
SILENCE_DBFS = -40.0
_FRAME_S = 0.01
#: a sample at or above this magnitude counts as clipped
_FULL_SCALE = 0.999


@dataclass(frozen=True)
class ClipMeasures:
    """What QC measures on one clip (None: not measurable, e.g. LUFS of a clip shorter than 0.4 s)."""

    duration_s: float
    leading_silence_s: float
    trailing_silence_s: float
    peak_dbfs: float | None
    clipped_fraction: float
    lufs: float | None


def _silence_edges(samples: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """Seconds of silence before the first and after the last non-silent 10 ms frame."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    frame = max(1, int(sample_rate * _FRAME_S))
    frames = len(mono) // frame
    if frames == 0:
        return 0.0, 0.0
    rms = np.sqrt(np.mean(mono[: frames * frame].reshape(frames, frame).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(rms > 10 ** (SILENCE_DBFS / 20))
    if loud.size == 0:
        whole = round(len(mono) / sample_rate, 3)
        return whole, whole
    leading = loud[0] * _FRAME_S
    trailing = (frames - 1 - loud[-1]) * _FRAME_S
    return round(leading, 3), round(trailing, 3)


def measure_samples(samples: np.ndarray, sample_rate: int) -> ClipMeasures:
    """Measures of (frames, channels) float samples."""
    leading, trailing = _silence_edges(samples, sample_rate)
    clipped = float(np.mean(np.abs(samples) >= _FULL_SCALE)) if samples.size else 0.0
    return ClipMeasures(
        duration_s=round(len(samples) / sample_rate, 3),
        leading_silence_s=leading,
        trailing_silence_s=trailing,
        peak_dbfs=peak_dbfs(samples),
        clipped_fraction=round(clipped, 6),
        lufs=loudness_lufs(samples, sample_rate),
    )


def measure_clip(path: Path) -> ClipMeasures:
    """Measures of an audio file: 16-bit WAV in-process, anything else decoded by ffmpeg."""
    data = Path(path).read_bytes()
    layout = pcm16_wav_layout(data)
    if layout is not None:
        return measure_samples(layout.samples(data), layout.sample_rate)
    info = probe(Path(path))
    samples = decode_float32(Path(path), sample_rate=info.sample_rate, channels=info.channels)
    return measure_samples(samples, info.sample_rate)


def _numbers(table: pa.Table, column: str) -> np.ndarray:
    """A float column as numpy with NaN for nulls."""
    return table[column].to_numpy(zero_copy_only=False).astype(np.float64)


def iqr_groups(table: pa.Table, by: str) -> list[str]:
    """The group of each row for the outlier rule: its voice, its model, or one group ``all``."""
    if by == "voice":
        return [voice_of(p) for p in table["params"].to_pylist()]
    if by == "model":
        return [m or "" for m in table["model"].to_pylist()]
    return ["all"] * table.num_rows


@dataclass(frozen=True)
class Verdict:
    """Every row's reasons for rejection (empty: accepted) and the outlier bounds used, per group."""

    reasons: list[list[str]]
    #: group (voice, model or ``all``, as ``iqr_by`` says) → (low, high) s/char; groups too small are absent
    s_per_char_bounds: dict[str, tuple[float, float]]

    @property
    def accepted(self) -> np.ndarray:
        """Boolean mask of the accepted rows."""
        return np.array([not r for r in self.reasons], dtype=bool)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def judge(table: pa.Table, qc: QcThresholds) -> Verdict:
    """Reasons for every row of a dataset table (columns as in :mod:`voxmill.dataset.rows`)."""
    rows = table.num_rows
    reasons: list[list[str]] = [[] for _ in range(rows)]
    failures = table["failure"].to_pylist()
    for index, failure in enumerate(failures):
        if failure:
            reasons[index].append(failure)
    has_audio = np.array([f is None for f in failures], dtype=bool)

    def check(column: str, limit: float | None, above: bool, label: str) -> None:
        if limit is None:
            return
        values = _numbers(table, column)
        with np.errstate(invalid="ignore"):
            bad = values > limit if above else values < limit
        for index in np.flatnonzero(bad & has_audio):
            sign = ">" if above else "<"
            reasons[index].append(f"{label} {_fmt(values[index])} {sign} {_fmt(limit)}")

    check("duration", qc.min_duration_s, False, "duration_s")
    check("duration", qc.max_duration_s, True, "duration_s")
    check("chars_per_s", qc.min_chars_per_s, False, "chars_per_s")
    check("chars_per_s", qc.max_chars_per_s, True, "chars_per_s")
    check("leading_silence_s", qc.max_leading_silence_s, True, "leading_silence_s")
    check("trailing_silence_s", qc.max_trailing_silence_s, True, "trailing_silence_s")
    check("peak_dbfs", qc.max_peak_dbfs, True, "peak_dbfs (clipping)")
    check("clipped_fraction", qc.max_clipped_fraction, True, "clipped_fraction")
    check("lufs", qc.min_lufs, False, "lufs")
    check("lufs", qc.max_lufs, True, "lufs")
    check("wer", qc.max_wer, True, "wer")
    if qc.max_wer is not None:
        wer = _numbers(table, "wer")
        for index in np.flatnonzero(~np.isfinite(wer) & has_audio):
            reasons[index].append("wer not measured (no transcript)")
    bounds: dict[str, tuple[float, float]] = {}
    if qc.iqr_k is not None:
        s_per_char = _numbers(table, "s_per_char")
        groups = np.array(iqr_groups(table, qc.iqr_by), dtype=object)
        values = np.where(has_audio, s_per_char, np.nan)
        bounds = iqr_bounds_by(pd.Series(values), pd.Series(groups), qc.iqr_k, qc.iqr_min_rows)
        of = "" if qc.iqr_by == "all" else f" of {qc.iqr_by} "
        for group, (low, high) in bounds.items():
            with np.errstate(invalid="ignore"):
                outside = (groups == group) & ((s_per_char < low) | (s_per_char > high))
            for index in np.flatnonzero(outside & has_audio):
                where = f"{of}{group!r}" if of else ""
                reasons[index].append(
                    f"s_per_char {_fmt(s_per_char[index])} outside the IQR bounds{where} [{_fmt(low)}, {_fmt(high)}]"
                )
    return Verdict(reasons, bounds)


def reasons_effect(verdict: Verdict) -> dict[str, int]:
    """How many rows each kind of reason rejected (the card's "filters and their effect")."""
    effect: dict[str, int] = {}
    for row in verdict.reasons:
        for label in {reason.split(" ")[0].rstrip(":") for reason in row}:
            effect[label] = effect.get(label, 0) + 1
    return dict(sorted(effect.items()))


def finite_or_none(value: float | None) -> float | None:
    """None for None/NaN/inf (Parquet nulls, not NaN)."""
    return value if value is not None and math.isfinite(value) else None


__all__ = [
    "ClipMeasures",
    "Verdict",
    "finite_or_none",
    "iqr_groups",
    "judge",
    "measure_clip",
    "measure_samples",
    "reasons_effect",
]
