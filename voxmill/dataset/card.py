"""The dataset card (``README.md`` of a version): counts, hours, filters and their effect, model, diff."""

from __future__ import annotations

from voxmill.dataset.publish import DATA, REJECTS, VersionManifest


def render_card(manifest: VersionManifest, *, s_per_char_bounds: dict[str, tuple[float, float]]) -> str:
    """Markdown with a YAML header that tells Hugging Face ``datasets`` where the train split is."""
    diff = manifest.diff
    qc = manifest.spec.get("qc", {})
    thresholds = [f"- `{name}` = {value}" for name, value in qc.items() if value is not None]
    effect = [f"- {name}: {count} row(s)" for name, count in manifest.filters_effect.items()] or ["- none"]
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
        "## Filters",
        "",
        *thresholds,
        f"- seconds-per-character IQR bounds: {bounds}",
        "",
        "Rejected by:",
        "",
        *effect,
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


__all__ = ["render_card"]
