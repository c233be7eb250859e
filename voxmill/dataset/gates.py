"""Publish gates: what a built version must show before ``latest`` moves to it.

A nightly build must never replace a good dataset with a broken one (an engine returning noise, a source
emptied by mistake). The gates compare the new version's counts with the spec's ``[publish]`` limits and
with the previous version; a failed gate leaves the version unpublished unless the build is forced.
"""

from __future__ import annotations

from dataclasses import dataclass

from voxmill.dataset.publish import VersionManifest
from voxmill.dataset.spec import PublishGates
from voxmill.errors import VoxmillError


@dataclass(frozen=True)
class GateFailure:
    """One failed gate: its name (the ``[publish]`` key), the measured value, the limit, and why."""

    gate: str
    value: float
    limit: float
    message: str

    def __str__(self) -> str:
        return f"{self.gate}: {self.message}"


def check_gates(gates: PublishGates, *, rows: int, rejected: int, hours: float, mean_wer: float | None,
                previous: VersionManifest | None) -> list[GateFailure]:
    """Every gate the version fails (empty: it may be published)."""
    failures: list[GateFailure] = []
    total = rows + rejected
    if gates.min_rows is not None and rows < gates.min_rows:
        failures.append(GateFailure("min_rows", rows, gates.min_rows,
                                    f"{rows} accepted rows < {gates.min_rows}"))
    if gates.max_reject_fraction is not None and total and rejected / total > gates.max_reject_fraction:
        failures.append(GateFailure("max_reject_fraction", rejected / total, gates.max_reject_fraction,
                                    f"{rejected} of {total} rows rejected ({rejected / total:.0%}) > "
                                    f"{gates.max_reject_fraction:.0%}"))
    if previous is not None and previous.rows:
        drop = (previous.rows - rows) / previous.rows
        if gates.max_rows_drop is not None and drop > gates.max_rows_drop:
            failures.append(GateFailure("max_rows_drop", drop, gates.max_rows_drop,
                                        f"accepted rows fell from {previous.rows} ({previous.id}) to {rows} "
                                        f"(-{drop:.0%}) > -{gates.max_rows_drop:.0%}"))
    if previous is not None and previous.hours > 0:
        drop = (previous.hours - hours) / previous.hours
        if gates.max_hours_drop is not None and drop > gates.max_hours_drop:
            failures.append(GateFailure("max_hours_drop", drop, gates.max_hours_drop,
                                        f"hours fell from {previous.hours:.4f} ({previous.id}) to {hours:.4f} "
                                        f"(-{drop:.0%}) > -{gates.max_hours_drop:.0%}"))
    if gates.max_mean_wer is not None and mean_wer is not None and mean_wer > gates.max_mean_wer:
        failures.append(GateFailure("max_mean_wer", mean_wer, gates.max_mean_wer,
                                    f"mean WER of the accepted rows {mean_wer:.3f} > {gates.max_mean_wer:.3f}"))
    return failures


class PublishRefused(VoxmillError):
    """A built version failed its publish gates: it was written for inspection, but ``latest`` did not move.

    ``report`` is the build's report (``published`` False, ``gate_failures`` filled); rerun with ``--force``
    (``force=True``) to publish it anyway.
    """

    kind = "publish_gate"

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


__all__ = ["GateFailure", "PublishRefused", "check_gates"]
