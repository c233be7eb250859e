"""``voxmill dataset build --plan``: which rows take which path and what that costs, before anything is sent."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from voxmill.dataset.build import PlannedBuild, plan_dataset, price_table, work_dir_for
from voxmill.dataset.publish import DatasetStore
from voxmill.dataset.spec import DatasetSpec
from voxmill.estimate import WORDS_PER_SECOND
from voxmill.settings import Settings

#: what each path does, for the table
PATH_WORK = {
    "generate": "TTS call (+ ASR if roundtrip), master kept, audio derived and measured",
    "carry": "nothing (QC thresholds re-applied)",
    "rederive": "audio derived again from the master, measured (no call)",
    "asr": "round-trip ASR call (no TTS)",
    "rederive+asr": "audio derived again (no call), round-trip ASR call",
    "invalid": "nothing: the row is rejected with its problem",
}
#: ids listed per path
EXAMPLES = 5


@dataclass
class PlanPreview:
    """A build's plan in numbers: rows per path, calls, estimated cost, and a few ids of each path."""

    name: str
    previous_id: str | None
    changes: list[str]
    paths: Counter[str]
    tts_calls: int
    asr_calls: int
    #: from the price table (VOXMILL_PRICES); None without one or without a price for a model
    cost: float | None
    examples: dict[str, list[str]] = field(default_factory=dict)
    regenerated_for_output: bool = False
    plan_s: float = 0.0

    def text(self) -> str:
        """The plan as a table for the terminal."""
        against = f"against {self.previous_id} (latest)" if self.previous_id else "(first version)"
        changed = ", ".join(self.changes) or "nothing"
        lines = [f"plan for {self.name} {against}; spec sections changed: {changed}", "",
                 f"{'path':<14} {'rows':>8}  what happens", f"{'-' * 14} {'-' * 8}  {'-' * 40}"]
        for path in PATH_WORK:
            if self.paths.get(path):
                lines.append(f"{path:<14} {self.paths[path]:>8}  {PATH_WORK[path]}")
        cost = "unknown (set VOXMILL_PRICES to a price table)" if self.cost is None else f"{self.cost:.4f}"
        lines += ["", f"calls: {self.tts_calls} TTS, {self.asr_calls} ASR; estimated cost: {cost}"]
        if self.regenerated_for_output:
            lines.append("note: the output changed and the previous version kept no master clips (made before "
                         "masters were kept): its rows are generated again")
        for path, ids in self.examples.items():
            more = self.paths[path] - len(ids)
            lines.append(f"  {path}: {', '.join(ids)}{f' … (+{more})' if more > 0 else ''}")
        lines.append(f"planned in {self.plan_s:.1f}s; nothing was sent")
        return "\n".join(lines)


def preview(spec: DatasetSpec, planned: PlannedBuild) -> PlanPreview:
    """Count a planned build's paths, calls and cost."""
    plan = planned.plan
    paths: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for row in planned.rows:
        path = plan.path_of(row.position)
        paths[path] += 1
        if len(examples.setdefault(path, [])) < EXAMPLES:
            examples[path].append(row.item.item_id)
    roundtrip = spec.kind == "tts" and spec.qc.roundtrip
    tts_calls = len(plan.to_make)
    asr_calls = (len(plan.to_make) if roundtrip else 0) + len(plan.asr)
    return PlanPreview(spec.name, planned.previous_id, planned.changes, paths, tts_calls, asr_calls,
                       _cost(spec, planned), examples, planned.regenerated_for_output)


def _cost(spec: DatasetSpec, planned: PlannedBuild) -> float | None:
    prices = price_table()
    if prices is None:
        return None
    plan = planned.plan
    made = [planned.rows[p].item for p in plan.to_make]
    durations = planned.previous["duration"].to_pylist() if planned.previous is not None else []
    carried_minutes = sum(durations[plan.carried[p]] or 0.0 for p in plan.asr) / 60
    parts = []
    if spec.kind == "tts":
        texts = [str(item.params.get("text", "")) for item in made]
        new_minutes = sum(len(t.split()) for t in texts) / WORDS_PER_SECOND / 60
        if made:
            parts.append(prices.cost(spec.model, chars=sum(map(len, texts)), minutes=0, requests=len(made)))
        asr_minutes = (new_minutes if spec.qc.roundtrip else 0.0) + carried_minutes
        asr_requests = (len(made) if spec.qc.roundtrip else 0) + len(plan.asr)
        if asr_requests:
            parts.append(prices.cost(spec.asr_model, chars=0, minutes=asr_minutes, requests=asr_requests))
    elif made:
        from voxmill.audio.measure import measure_file

        minutes = sum(measure_file(Path(str(item.audio)), loudness=False).duration_s for item in made
                      if "://" not in str(item.audio)) / 60
        parts.append(prices.cost(spec.model, chars=0, minutes=minutes, requests=len(made)))
    return None if any(p is None for p in parts) else round(sum(p or 0.0 for p in parts), 6)


def plan_build_preview(spec: DatasetSpec, settings: Settings, *, remake_rejected: bool = False) -> PlanPreview:
    """Plan ``spec``'s next build against its latest version and describe it; sends nothing, writes no version."""
    import time

    started = time.monotonic()
    store = DatasetStore(spec.dest)
    work = work_dir_for(spec, store, settings)
    planned = plan_dataset(spec, store, work, remake_rejected=remake_rejected)
    result = preview(spec, planned)
    result.plan_s = round(time.monotonic() - started, 3)
    return result


__all__ = ["PlanPreview", "plan_build_preview", "preview"]
