"""Dataset statistics with pandas: per voice, model and language counts, hours and distributions; the
speaker balance against the spec's target shares.

A row's *voice* is what its parameters say speaks it (``voice``, ``voice_id``, ``voice_name``, a reference
file or URL), else ``default`` (the model's own voice). Statistics cover accepted rows; rejects are counted
by reason in the card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

#: parameters that name who speaks, in order of precedence
VOICE_PARAMS = ("voice", "voice_id", "voice_name", "voice_url", "preset_url", "voice_reference_file", "voice_ref")
DEFAULT_VOICE = "default"
#: the measures summarised per group
MEASURES = ("duration", "chars_per_s", "wer", "lufs")
#: the quantiles a distribution is described by
QUANTILES = (0.1, 0.5, 0.9)


def voice_of(params: str | None) -> str:
    """The voice a row's parameters (JSON) name, or ``default``."""
    if not params:
        return DEFAULT_VOICE
    try:
        values = json.loads(params)
    except ValueError:
        return DEFAULT_VOICE
    if not isinstance(values, dict):
        return DEFAULT_VOICE
    for name in VOICE_PARAMS:
        if values.get(name):
            return str(values[name])
    return DEFAULT_VOICE


def language_of(params: str | None, default: str) -> str:
    """The language a row's parameters name, or the spec's."""
    try:
        values = json.loads(params or "{}")
    except ValueError:
        return default
    return str(values.get("language") or default) if isinstance(values, dict) else default


def rows_frame(meta: pa.Table, language: str) -> pd.DataFrame:
    """The rows' metadata as a DataFrame with ``voice`` and ``language`` columns added."""
    columns = ["id", "model", "params", "duration", "chars_per_s", "s_per_char", "wer", "lufs", "failure"]
    frame = meta.select(columns).to_pandas()
    frame["voice"] = [voice_of(p) for p in frame["params"]]
    frame["language"] = [language_of(p, language) for p in frame["params"]]
    return frame


@dataclass(frozen=True)
class GroupStats:
    """Counts, hours and distributions (mean and 10/50/90th percentiles) of one group of accepted rows."""

    group: str
    rows: int
    hours: float
    #: measure → {"mean", "p10", "p50", "p90"} (None where the measure is missing for every row)
    distributions: dict[str, dict[str, float | None]]


@dataclass(frozen=True)
class BalanceRow:
    """One voice's hours and share of the dataset against the spec's target share."""

    voice: str
    hours: float
    share: float
    target: float | None
    #: share − target (None without a target)
    deviation: float | None
    #: True when the deviation is beyond the spec's tolerance
    off_target: bool


@dataclass(frozen=True)
class DatasetStats:
    """Statistics of a version's accepted rows, by voice, model and language, and its speaker balance."""

    by_voice: list[GroupStats] = field(default_factory=list)
    by_model: list[GroupStats] = field(default_factory=list)
    by_language: list[GroupStats] = field(default_factory=list)
    balance: list[BalanceRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (the version manifest keeps it)."""
        return {
            "by_voice": [g.__dict__ for g in self.by_voice], "by_model": [g.__dict__ for g in self.by_model],
            "by_language": [g.__dict__ for g in self.by_language], "balance": [b.__dict__ for b in self.balance],
        }


def _number(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _group_stats(frame: pd.DataFrame, by: str) -> list[GroupStats]:
    out = []
    for name, group in frame.groupby(by, sort=True):
        distributions = {}
        for measure in MEASURES:
            values = group[measure].astype("float64").dropna()
            if values.empty:
                distributions[measure] = {"mean": None, "p10": None, "p50": None, "p90": None}
                continue
            quantiles = values.quantile(list(QUANTILES))
            distributions[measure] = {"mean": _number(values.mean()),
                                      **{f"p{round(q * 100)}": _number(quantiles[q]) for q in QUANTILES}}
        out.append(GroupStats(str(name), len(group), round(float(group["duration"].sum()) / 3600, 6), distributions))
    return out


def balance(frame: pd.DataFrame, targets: dict[str, float], tolerance: float) -> list[BalanceRow]:
    """Hours per voice against target shares (voices with a target but no rows appear with 0 hours)."""
    hours = frame.groupby("voice")["duration"].sum() / 3600
    for voice in targets:
        if voice not in hours.index:
            hours.loc[voice] = 0.0
    total = float(hours.sum())
    rows = []
    for voice, value in hours.sort_index().items():
        share = float(value) / total if total else 0.0
        target = targets.get(str(voice))
        deviation = None if target is None else round(share - target, 4)
        off = deviation is not None and abs(deviation) > tolerance
        rows.append(BalanceRow(str(voice), round(float(value), 6), round(share, 4), target, deviation, off))
    return rows


def dataset_stats(meta: pa.Table, accepted: np.ndarray, *, language: str, targets: dict[str, float] | None = None,
                  tolerance: float = 0.05) -> DatasetStats:
    """Statistics of the accepted rows of ``meta`` (columns as in :mod:`voxmill.dataset.rows`)."""
    frame = rows_frame(meta, language)[accepted]
    if frame.empty:
        return DatasetStats(balance=balance(frame, targets or {}, tolerance) if targets else [])
    return DatasetStats(
        by_voice=_group_stats(frame, "voice"), by_model=_group_stats(frame, "model"),
        by_language=_group_stats(frame, "language"),
        balance=balance(frame, targets or {}, tolerance),
    )


def iqr_bounds_by(values: pd.Series, groups: pd.Series, k: float, min_rows: int) -> dict[str, tuple[float, float]]:
    """(Q1 − k·IQR, Q3 + k·IQR) of ``values`` per group, for groups with at least ``min_rows`` finite values."""
    frame = pd.DataFrame({"value": values.astype("float64"), "group": groups}).dropna()
    frame = frame[np.isfinite(frame["value"])]
    bounds = {}
    for name, group in frame.groupby("group", sort=True):
        if len(group) < min_rows:
            continue
        q1, q3 = group["value"].quantile([0.25, 0.75])
        spread = q3 - q1
        bounds[str(name)] = (float(q1 - k * spread), float(q3 + k * spread))
    return bounds


__all__ = [
    "BalanceRow", "DatasetStats", "GroupStats", "balance", "dataset_stats", "iqr_bounds_by", "language_of",
    "rows_frame", "voice_of",
]
