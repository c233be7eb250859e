"""Planning: key each manifest item and leave out what the ledger already holds.

This is where resume happens — an anti-join of the manifest's keys with the ledger's done keys — so a
rerun of a finished job reads the manifest and the ledger and sends nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from voxmill.errors import ConfigError
from voxmill.identity import file_hash, item_key
from voxmill.ledger import DoneIndex
from voxmill.manifests import ItemProblem, ManifestReader, WorkItem, open_binary


@dataclass(frozen=True)
class PlannedItem:
    """An item with its key, ready to send (or, with ``item.problem``, to record as failed)."""

    item: WorkItem
    key: str


@dataclass
class PlanCounts:
    """What planning saw: rows read, rows skipped as done, rows left for this run."""

    rows: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    pending: int = 0
    problems: int = 0


def key_of(item: WorkItem) -> str:
    """The item key: model + effective parameters + content (text, or the audio file's bytes).

    Raises FileNotFoundError/OSError for an audio or voice reference that cannot be read.
    """
    params = {k: v for k, v in item.params.items() if k != "text"}
    if item.kind == "tts":
        content = str(item.params.get("text", ""))
        if item.voice_ref:
            content += "\x00voice_ref:" + file_hash(item.voice_ref, opener=lambda p: open_binary(p, "voice_ref file"))
    else:
        content = "audio:" + file_hash(str(item.audio), opener=lambda p: open_binary(p, "audio file"))
    return item_key(item.model, params, content)


def _problem_key(item: WorkItem) -> str:
    return item_key(item.model, {"row": item.row}, f"problem:{item.item_id}")


def plan_items(
    reader: ManifestReader,
    done: DoneIndex,
    *,
    failed_ids: set[str] | None = None,
    retry_failed: bool = True,
    only_failed: bool = False,
    counts: PlanCounts | None = None,
) -> Iterator[PlannedItem]:
    """Items of the manifest that this run must handle, in manifest order.

    Done items (same key and id) are skipped. With ``retry_failed=False`` items whose last outcome was a
    failure are skipped too; with ``only_failed`` only those are kept (``voxmill retry-failed``).
    """
    counts = counts if counts is not None else PlanCounts()
    failed_ids = failed_ids or set()
    for item in reader:
        counts.rows += 1
        was_failed = item.item_id in failed_ids
        if only_failed and not was_failed:
            if done.has_id(item.item_id):
                counts.skipped_done += 1
            else:
                counts.skipped_failed += 1
            continue
        if not retry_failed and was_failed:
            counts.skipped_failed += 1
            continue
        if item.problem is not None:
            counts.problems += 1
            counts.pending += 1
            yield PlannedItem(item, _problem_key(item))
            continue
        try:
            key = key_of(item)
        except (ConfigError, OSError, ValueError) as exc:
            # a missing or unreadable audio/voice_ref file fails this row only
            reason = exc.message if isinstance(exc, ConfigError) else f"cannot read its file: {exc}"
            counts.problems += 1
            counts.pending += 1
            problem = ItemProblem("invalid", f"{item.label}: {reason}; fix the path in the manifest")
            yield PlannedItem(replace(item, problem=problem), _problem_key(item))
            continue
        if not item.has_own_id:
            # no id column: name the item by its content, stable across reorderings of the manifest
            item = replace(item, item_id=key[:16])
        if done.done_as(key, item.item_id):
            counts.skipped_done += 1
            continue
        counts.pending += 1
        yield PlannedItem(item, key)


__all__ = ["PlanCounts", "PlannedItem", "key_of", "plan_items"]
