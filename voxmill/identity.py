"""Identity: every key and hash voxmill derives, in one place.

- :func:`item_key` — an item's identity (model + effective parameters + content), the ledger's ``key``;
- :func:`content_hash` / :func:`file_hash` — sha256 hex of text, bytes or a (streamed) file;
- :func:`id_hash64` — 64 bits of an item id, for indexes that hold millions of ids in 8 bytes each;
- :func:`budget_id` — the name of a rate budget: a fingerprint of the API key and base URL (never the key);
- :func:`shard_of` — which of N shards an item identity belongs to (stable across runs and machines);
- :func:`json_hash` — sha256 hex of a JSON-serialisable value, canonically serialised.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

_HASH_CHUNK = 1 << 20


def content_hash(data: bytes | str) -> str:
    """sha256 hex of text (UTF-8) or bytes."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def file_hash(path: str | Path, opener: Callable[[str], IO[bytes]] | None = None) -> str:
    """sha256 hex of a file's bytes, streamed (a path or, with ``opener``, an fsspec URL)."""
    digest = hashlib.sha256()
    handle = opener(str(path)) if opener else open(path, "rb")
    with handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def item_key(model: str, params: Mapping[str, Any], content: str) -> str:
    """The item's identity: sha256 of the model, its effective parameters and its content.

    ``content`` is the text for TTS (with a voice reference's hash appended) or ``audio:<sha256>`` of
    the audio file for ASR. Parameters are serialised canonically, so their order does not matter.
    """
    payload = json.dumps({"m": model, "p": params, "c": content}, sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def id_hash64(item_id: str) -> int:
    """An unsigned 64-bit hash of an item id (blake2b): 8 bytes per id in resume and duplicate indexes."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


def budget_id(api_key: str, base_url: str) -> str:
    """The name of a rate budget: a hash of the key and the base URL (the key cannot be read back from it)."""
    return hashlib.sha256(f"voxmill-rate\0{api_key}\0{base_url.rstrip('/')}".encode()).hexdigest()[:24]


def shard_of(identity: str, count: int) -> int:
    """The shard (0 … ``count``-1) of an item identity: blake2b, 8 bytes read big-endian, modulo ``count``.

    The byte order is part of the contract: changing it would move items between the shards of a running job.
    """
    return int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=8).digest(), "big") % count


def json_hash(value: Any) -> str:
    """sha256 hex of ``value`` serialised as canonical JSON (sorted keys; ``str`` for what JSON lacks)."""
    return content_hash(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str))


__all__ = ["budget_id", "content_hash", "file_hash", "id_hash64", "item_key", "json_hash", "shard_of"]
