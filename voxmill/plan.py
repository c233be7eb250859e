"""Planning: key each manifest item and leave out what the ledger already holds.

This is where resume happens — an anti-join of the manifest's keys with the ledger's done keys — so a
rerun of a finished job reads the manifest and the ledger and sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from voxmill.errors import ConfigError
from voxmill.identity import file_hash, item_key, item_keys
from voxmill.ledger import DoneIndex
from voxmill.manifests import ItemProblem, ManifestReader, RowBatch, WorkItem, open_binary


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
    reader: Iterable[WorkItem],
    done: DoneIndex,
    *,
    failed_ids: set[str] | None = None,
    retry_failed: bool = True,
    only_failed: bool = False,
    counts: PlanCounts | None = None,
    holds: Callable[[str], bool] | None = None,
) -> Iterator[PlannedItem]:
    """Items of the manifest that this run must handle, in manifest order.

    Done items (same key and id) are skipped. With ``retry_failed=False`` items whose last outcome was a
    failure are skipped too; with ``only_failed`` only those are kept (``voxmill retry-failed``).
    ``holds`` (a shard's ``holds_id``) keeps only the items whose identity it holds: the id, or for a row with
    no id of its own its key (a reader's ``id_filter`` already left out the rows with other ids).
    A :class:`ManifestReader` is planned a record batch at a time: rows that share their parameters are
    keyed together and looked up in ``done`` in one search, and an item is built only for a row to send.
    """
    counts = counts if counts is not None else PlanCounts()
    failed_ids = failed_ids or set()
    if isinstance(reader, ManifestReader) and not only_failed:
        for batch in reader.row_batches():
            yield from _plan_batch(batch, done, failed_ids if not retry_failed else set(), counts, holds)
        return
    if holds is not None:
        reader = (item for item in reader if _held(item, holds))
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
        planned = _planned(item, counts)
        if planned.item.problem is None and done.done_as(planned.key, planned.item.item_id):
            counts.skipped_done += 1
            continue
        counts.pending += 1
        yield planned


def _planned(item: WorkItem, counts: PlanCounts) -> PlannedItem:
    """``item`` with its key; an item whose key cannot be made (an unreadable file) carries that problem."""
    if item.problem is not None:
        counts.problems += 1
        return PlannedItem(item, _problem_key(item))
    try:
        key = key_of(item)
    except (ConfigError, OSError, ValueError) as exc:
        # a missing or unreadable audio/voice_ref file fails this row only
        reason = exc.message if isinstance(exc, ConfigError) else f"cannot read its file: {exc}"
        counts.problems += 1
        problem = ItemProblem("invalid", f"{item.label}: {reason}; fix the path in the manifest")
        return PlannedItem(replace(item, problem=problem), _problem_key(item))
    if not item.has_own_id:
        # no id column: name the item by its content, stable across reorderings of the manifest
        item = replace(item, item_id=key[:16])
    return PlannedItem(item, key)


def _held(item: WorkItem, holds: Callable[[str], bool]) -> bool:
    """Whether a shard's ``holds_id`` holds ``item`` (its id; with no id of its own, its key)."""
    if item.has_own_id or item.problem is not None:
        return holds(item.item_id)
    try:
        return holds(key_of(item))
    except (ConfigError, OSError, ValueError):
        return holds(item.item_id)  # an unreadable file: its row fails in whichever shard it lands


def _plan_batch(batch: RowBatch, done: DoneIndex, skip_ids: set[str], counts: PlanCounts,
                holds: Callable[[str], bool] | None = None) -> Iterator[PlannedItem]:
    """The rows of one record batch to send: keys made per template, done rows found in one search."""
    count = len(batch)
    keys: list[str] = [""] * count
    names = list(batch.ids)  # what each item is called: its id, or (no id of its own) its key's start
    template_of = batch.template_of
    if not batch.items and len(set(template_of)) == 1:
        groups = {template_of[0]: list(range(count))} if count else {}
    else:
        groups = {}
        for index in range(count):
            if template_of[index] >= 0:
                groups.setdefault(template_of[index], []).append(index)
    texts, own_ids = batch.texts, batch.own_ids
    for template, indexes in groups.items():
        spec = batch.templates[template]
        made = item_keys(spec.model, spec.params, [texts[i] for i in indexes])  # type: ignore[list-item]
        for index, key in zip(indexes, made, strict=True):
            keys[index] = key
            if not own_ids[index]:
                names[index] = key[:16]
    rows: list[int] | range = range(count)
    if holds is not None:
        rows = [i for i in rows if own_ids[i] or (holds(keys[i]) if template_of[i] >= 0
                                                  else _held(batch.items[i], holds))]
    counts.rows += len(rows)
    order = [i for i in rows if batch.ids[i] not in skip_ids] if skip_ids else rows
    counts.skipped_failed += len(rows) - len(order)
    planned: dict[int, PlannedItem] = {}
    for index in order:
        if template_of[index] < 0:
            planned[index] = item = _planned(batch.items[index], counts)
            keys[index], names[index] = item.key, item.item.item_id
    lookup = [i for i in order if i not in planned or planned[i].item.problem is None] if planned else order
    done_rows = done.done_mask([keys[i] for i in lookup], [names[i] for i in lookup])
    skipped = {lookup[n] for n in np.flatnonzero(done_rows).tolist()}
    counts.skipped_done += len(skipped)
    for index in order:
        if index in skipped:
            continue
        counts.pending += 1
        yield planned[index] if index in planned else PlannedItem(batch.item(index, names[index]), keys[index])


__all__ = ["PlanCounts", "PlannedItem", "key_of", "plan_items"]
