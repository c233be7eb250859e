"""Duplicates in a dataset: source rows whose normalised text repeats an earlier row's (found before anything is
sent, so a dropped duplicate costs no call), and clips whose audio bytes repeat an earlier row's.

The first occurrence (in source order for texts, in the version's row order for audio) is kept; each later one
is flagged (kept, ``duplicate_of`` names the first) or dropped (rejected with a ``duplicate: …`` reason, so it
is still visible in ``rejects.parquet``), as the spec's ``[dedup]`` says.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace

import pyarrow as pa

from voxmill.dataset.incremental import SourceRow

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)
#: the reason a dropped duplicate's row carries (its first word is the reject label: ``duplicate``)
TEXT_REASON = "duplicate: same normalised text as {first!r}"
AUDIO_REASON = "duplicate: same audio as {first!r}"


def normalise_text(text: str) -> str:
    """Text as compared for duplicates: NFKC, case-folded, punctuation and spacing ignored."""
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def _text_of(row: SourceRow) -> str | None:
    item = row.item
    text = item.params.get("text") if item.kind == "tts" else item.reference_text
    return None if text is None else normalise_text(str(text))


def text_duplicates(rows: list[SourceRow]) -> dict[int, str]:
    """Source position → id of the earlier row with the same normalised text (rows with a problem are skipped)."""
    first: dict[str, str] = {}
    duplicates: dict[int, str] = {}
    for row in rows:
        text = None if row.problem else _text_of(row)
        if not text:
            continue
        if text in first:
            duplicates[row.position] = first[text]
        else:
            first[text] = row.item.item_id
    return duplicates


def drop_text_duplicates(rows: list[SourceRow], duplicates: dict[int, str]) -> list[SourceRow]:
    """The rows with each duplicate turned into a problem row (never sent; rejected with its reason)."""
    return [replace(r, key=None, problem=TEXT_REASON.format(first=duplicates[r.position]))
            if r.position in duplicates else r for r in rows]


def audio_duplicates(table: pa.Table) -> dict[int, str]:
    """Row index → id of the earlier row whose ``audio_sha256`` is the same (rows without one are skipped)."""
    first: dict[str, str] = {}
    duplicates: dict[int, str] = {}
    for index, (row_id, digest) in enumerate(zip(table["id"].to_pylist(), table["audio_sha256"].to_pylist(),
                                                 strict=True)):
        if digest is None:
            continue
        if digest in first:
            duplicates[index] = first[digest]
        else:
            first[digest] = row_id
    return duplicates


__all__ = ["AUDIO_REASON", "TEXT_REASON", "audio_duplicates", "drop_text_duplicates", "normalise_text",
           "text_duplicates"]
