"""The card's plots as PNGs: duration histogram, chars/s per voice, WER distribution, hours per voice and rejects
by reason. matplotlib is optional (the ``plots`` extra), imported only here, with the Agg backend (no display).
Without it the card has its tables and says how to get the plots."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

#: file names of the plots inside the version folder, in card order, with their titles
PLOTS = {
    "duration": ("plots/duration.png", "Clip duration"),
    "chars_per_s": ("plots/chars_per_s_by_voice.png", "Characters per second, by voice"),
    "wer": ("plots/wer.png", "Round-trip / reference WER"),
    "hours": ("plots/hours_by_voice.png", "Hours per voice"),
    "rejects": ("plots/rejects_by_reason.png", "Rejected rows by reason"),
}
INSTALL_HINT = "pip install 'voxmill[plots]'"


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (the ``plots`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never a display, safe in workers and threads of a flow
    import matplotlib.pyplot as plt

    return plt


def _png(draw: Callable[[Any], None]) -> bytes:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    try:
        draw(axes)
        figure.tight_layout()
        sink = io.BytesIO()
        figure.savefig(sink, format="png", metadata={"Software": None})  # no version stamp: same data, same bytes
        return sink.getvalue()
    finally:
        plt.close(figure)


def _empty(axes: Any, what: str) -> None:
    axes.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=axes.transAxes)
    axes.set_axis_off()


def render_plots(accepted: pd.DataFrame, rejects_by_reason: dict[str, int]) -> dict[str, bytes]:
    """PNG bytes by path inside the version folder; {} when matplotlib is not installed.

    ``accepted``: the accepted rows (columns ``voice``, ``duration``, ``chars_per_s``, ``wer``).
    """
    if not matplotlib_available():
        return {}

    def duration(axes: Any) -> None:
        values = accepted["duration"].dropna()
        if values.empty:
            return _empty(axes, "accepted rows")
        axes.hist(values, bins=min(40, max(5, len(values) // 5)), color="#4c72b0")
        axes.set_xlabel("seconds")
        axes.set_ylabel("rows")

    def chars_per_s(axes: Any) -> None:
        groups = {v: g["chars_per_s"].dropna().to_numpy() for v, g in accepted.groupby("voice", sort=True)}
        groups = {v: x for v, x in groups.items() if x.size}
        if not groups:
            return _empty(axes, "accepted rows")
        axes.boxplot(list(groups.values()), tick_labels=list(groups), orientation="horizontal")
        axes.set_xlabel("characters per second")

    def wer(axes: Any) -> None:
        values = accepted["wer"].dropna() if "wer" in accepted else pd.Series(dtype=float)
        if values.empty:
            return _empty(axes, "WER measured (roundtrip off)")
        axes.hist(np.clip(values, 0, 1.5), bins=30, color="#dd8452")
        axes.set_xlabel("WER (clipped at 1.5)")
        axes.set_ylabel("rows")

    def hours(axes: Any) -> None:
        per_voice = accepted.groupby("voice", sort=True)["duration"].sum() / 3600
        if per_voice.empty:
            return _empty(axes, "accepted rows")
        axes.bar(per_voice.index.astype(str), per_voice.to_numpy(), color="#55a868")
        axes.set_ylabel("hours")

    def rejects(axes: Any) -> None:
        if not rejects_by_reason:
            return _empty(axes, "rejected rows")
        names = list(rejects_by_reason)
        axes.barh(names, [rejects_by_reason[n] for n in names], color="#c44e52")
        axes.set_xlabel("rows")

    drawers = {"duration": duration, "chars_per_s": chars_per_s, "wer": wer, "hours": hours, "rejects": rejects}
    out = {}
    for name, draw in drawers.items():
        path, title = PLOTS[name]

        def titled(axes: Any, draw: Callable[[Any], None] = draw, title: str = title) -> None:
            axes.set_title(title)
            draw(axes)

        out[path] = _png(titled)
    return out


__all__ = ["INSTALL_HINT", "PLOTS", "matplotlib_available", "render_plots"]
