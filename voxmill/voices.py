"""The voice_id cache: an uploaded reference is uploaded once per (file content, model, API).

A voice_id belongs to one model on one API, and the API documents no list or expiry, so the cache is
keyed by the reference's sha256, the model and the base URL, and kept in one JSON file
(``settings.cache_dir / "voice_ids.json"``). Writes go to a temp file renamed over the old one, after
merging what other processes wrote meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_FILE_NAME = "voice_ids.json"
_VERSION = 1


@dataclass(frozen=True)
class CachedVoice:
    """One cached upload."""

    voice_id: str
    model: str
    base_url: str
    sha256: str
    uploaded_at: float


class VoiceCache:
    """voice_ids by (sha256 of the reference, model, base_url), persisted in one JSON file.

    Safe under concurrent asyncio use: reads and writes are synchronous and never yield to the loop in
    the middle. Between processes the last writer wins per entry; an entry lost that way only costs one
    repeated upload.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._entries: dict[str, CachedVoice] | None = None

    @classmethod
    def in_dir(cls, cache_dir: Path) -> VoiceCache:
        """The cache file inside a settings ``cache_dir``."""
        return cls(Path(cache_dir) / CACHE_FILE_NAME)

    def __repr__(self) -> str:
        return f"VoiceCache({str(self.path)!r})"

    @staticmethod
    def key(sha256: str, model: str, base_url: str) -> str:
        return f"{model}|{base_url.rstrip('/')}|{sha256}"

    def get(self, sha256: str, model: str, base_url: str) -> str | None:
        """The cached voice_id, or None."""
        entries = self._load()
        entry = entries.get(self.key(sha256, model, base_url))
        if entry is None:
            # another process may have uploaded it since we read the file
            self._entries = None
            entry = self._load().get(self.key(sha256, model, base_url))
        return entry.voice_id if entry else None

    def put(self, sha256: str, model: str, base_url: str, voice_id: str) -> None:
        """Record a voice_id and write the file (atomically, merged with what is on disk)."""
        entry = CachedVoice(voice_id, model, base_url.rstrip("/"), sha256, time.time())
        self._entries = None
        entries = self._load()
        entries[self.key(sha256, model, base_url)] = entry
        self._write(entries)

    def _load(self) -> dict[str, CachedVoice]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, CachedVoice] = {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            for key, item in raw.get("voices", {}).items():
                entries[key] = CachedVoice(
                    voice_id=str(item["voice_id"]),
                    model=str(item["model"]),
                    base_url=str(item["base_url"]),
                    sha256=str(item["sha256"]),
                    uploaded_at=float(item.get("uploaded_at", 0.0)),
                )
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("voice_id cache %s is unreadable (%s); starting it afresh", self.path, exc)
        self._entries = entries
        return entries

    def _write(self, entries: dict[str, CachedVoice]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": _VERSION,
            "voices": {key: _entry_dict(entry) for key, entry in sorted(entries.items())},
        }
        fd, tmp = tempfile.mkstemp(prefix=".voice_ids.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _entry_dict(entry: CachedVoice) -> dict[str, object]:
    return {
        "voice_id": entry.voice_id,
        "model": entry.model,
        "base_url": entry.base_url,
        "sha256": entry.sha256,
        "uploaded_at": entry.uploaded_at,
    }


__all__ = ["CACHE_FILE_NAME", "CachedVoice", "VoiceCache"]
