"""Identity: every key and hash voxmill derives, in one place.

- :func:`item_key` — an item's identity (model + effective parameters + content), the ledger's ``key``
  (:func:`item_keys`: the same for many contents at once);
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

import numpy as np

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


def item_keys(model: str, params: Mapping[str, Any], contents: list[str]) -> list[str]:
    """:func:`item_key` of many contents sharing one model and parameters (the same keys, about 3× faster: the
    parameters are serialised once and each content is spliced into the same canonical JSON)."""
    head = json.dumps({"m": model, "p": params}, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    tail = "," + head[1:]  # '"m":…,"p":…}': "c" sorts first
    quote = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) writes for a str
    sha256 = hashlib.sha256
    return [sha256(("{\"c\":" + quote(content) + tail).encode()).hexdigest() for content in contents]


def id_hash64(item_id: str) -> int:
    """An unsigned 64-bit hash of an item id (blake2b): 8 bytes per id in resume and duplicate indexes."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


def id_hashes64(item_ids: list[str]) -> np.ndarray:
    """:func:`id_hash64` of many ids, as a ``uint64`` array."""
    blake2b = hashlib.blake2b
    return np.fromiter((int.from_bytes(blake2b(i.encode(), digest_size=8).digest(), "little") for i in item_ids),
                       dtype=np.uint64, count=len(item_ids))


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


__all__ = ["budget_id", "content_hash", "file_hash", "id_hash64", "id_hashes64", "item_key", "item_keys", "json_hash",
           "shard_of"]
