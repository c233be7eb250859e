"""The dataset card (``README.md`` of a version): counts, hours, statistics per voice/model/language, speaker
balance, filters and their effect, duplicates, plots, diff. The same tables feed the build's Prefect artifact."""

from __future__ import annotations

from typing import Any

from voxmill.dataset.plots import INSTALL_HINT, PLOTS
from voxmill.dataset.publish import DATA, REJECTS, VersionManifest


def _dist(group: dict[str, Any], measure: str, digits: int = 2) -> str:
    values = group["distributions"].get(measure, {})
    if values.get("p50") is None:
        return "-"
    return f"{values['p50']:.{digits}f} ({values['p10']:.{digits}f}–{values['p90']:.{digits}f})"


def _group_rows(groups: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    return [{label: g["group"], "rows": g["rows"], "hours": round(g["hours"], 4),
             "duration s p50 (p10–p90)": _dist(g, "duration"), "chars/s p50 (p10–p90)": _dist(g, "chars_per_s", 1),
             "WER p50 (p10–p90)": _dist(g, "wer", 3), "LUFS p50 (p10–p90)": _dist(g, "lufs", 1)} for g in groups]


def card_tables(manifest: VersionManifest) -> dict[str, list[dict[str, Any]]]:
    """The card's tables by title, as rows of column → value (the card and the Prefect artifact show these)."""
    stats = manifest.stats or {}
    dedup = manifest.spec.get("dedup", {})
    tables: dict[str, list[dict[str, Any]]] = {
        "By voice": _group_rows(stats.get("by_voice", []), "voice"),
        "By model": _group_rows(stats.get("by_model", []), "model"),
        "By language": _group_rows(stats.get("by_language", []), "language"),
        "Speaker balance": [
            {"voice": b["voice"], "hours": round(b["hours"], 4), "share": f"{b['share']:.1%}",
             "target": "-" if b["target"] is None else f"{b['target']:.1%}",
             "deviation": "-" if b["deviation"] is None else f"{b['deviation']:+.1%}",
             "off target": "yes" if b["off_target"] else ""} for b in stats.get("balance", [])],
        "Rejects by reason": [{"reason": name, "rows": count} for name, count in manifest.filters_effect.items()],
        "Duplicates": [{"kind": kind, "found": manifest.duplicates.get(kind, 0), "action": dedup.get(kind, "off")}
                       for kind in ("text", "audio")],
    }
    return tables


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """A list of dicts as Markdown table lines (``- none`` when empty)."""
    if not rows:
        return ["- none"]
    names = list(rows[0])
    return [f"| {' | '.join(names)} |", f"|{'---|' * len(names)}",
            *(f"| {' | '.join(str(r[n]) for n in names)} |" for r in rows)]


def render_card(manifest: VersionManifest, *, s_per_char_bounds: dict[str, tuple[float, float]],
                plots: list[str] | None = None) -> str:
    """Markdown with a YAML header that tells Hugging Face ``datasets`` where the train split is; ``plots``: the
    PNG paths (inside the version folder) written beside it."""
    diff = manifest.diff
    qc = manifest.spec.get("qc", {})
    thresholds = [f"- `{name}` = {value}" for name, value in qc.items() if value is not None]
    tables = card_tables(manifest)
    titles = {path: title for path, title in PLOTS.values()}
    figures = [f"![{titles.get(path, path)}]({path})" for path in plots or []] or [
        f"(no plots: matplotlib is not installed; `{INSTALL_HINT}`)"]
    sections = []
    for title, rows in tables.items():
        if title in ("Rejects by reason", "Duplicates"):
            continue
        sections += [f"### {title}", "", *markdown_table(rows), ""]
    by = manifest.spec.get("qc", {}).get("iqr_by", "voice")
    bounds = ("; ".join(f"{group}: {low:.4f} – {high:.4f}" for group, (low, high) in s_per_char_bounds.items())
              + f" s/char (per {by})" if s_per_char_bounds else "not applied (too few rows or turned off)")
    cost = "unknown (no price table: VOXMILL_PRICES)" if manifest.cost is None else f"{manifest.cost:.4f}"
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {DATA}/train-*.parquet",
        "---",
        f"# {manifest.name} — {manifest.id}",
        "",
        f"Built {manifest.created_at} by voxmill from `{manifest.spec.get('source')}` "
        f"({manifest.spec.get('kind')}, model `{', '.join(manifest.models) or manifest.spec.get('model')}`, "
        f"engine `{', '.join(manifest.engines) or '-'}`).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| rows | {manifest.rows} |",
        f"| rejected | {manifest.rejected} (`{REJECTS}`, each with every reason) |",
        f"| hours | {manifest.hours:.4f} |",
        f"| billed requests in this build | {manifest.billed_requests} |",
        f"| cost of this build | {cost} |",
        "",
        *([f"**Published with --force despite failed publish gates:** {'; '.join(manifest.gate_failures)}", ""]
          if manifest.gate_failures else []),
        f"## Changes since {manifest.previous or 'nothing (first version)'}",
        "",
        f"added {diff.added}, changed {diff.changed}, removed {diff.removed}, unchanged {diff.unchanged}",
        "",
        "## Statistics (accepted rows)",
        "",
        *sections,
        "## Plots",
        "",
        *(line for figure in figures for line in (figure, "")),
        "## Filters",
        "",
        *thresholds,
        f"- seconds-per-character IQR bounds: {bounds}",
        "",
        "Rejected by reason:",
        "",
        *markdown_table(tables["Rejects by reason"]),
        "",
        "## Duplicates",
        "",
        *markdown_table(tables["Duplicates"]),
        "",
        "## Loading",
        "",
        "```python",
        "import datasets",
        f'ds = datasets.load_dataset("parquet", data_files="<this folder>/{DATA}/*.parquet", split="train")',
        "```",
        "",
        "Every file's sha256 is in `SHA256SUMS` (`sha256sum -c SHA256SUMS`).",
        "",
    ]
    return "\n".join(lines)


__all__ = ["card_tables", "markdown_table", "render_card"]
