"""Identity: every key and hash voxmill derives, in one place.

- :func:`item_key` — an item's identity (model + effective parameters + content), the ledger's ``key``
  (:func:`item_keys`: the same for many contents at once);
- :func:`content_hash` / :func:`file_hash` — sha256 hex of text, bytes or a (streamed) file (:func:`content_hasher`:
  the same hash fed in pieces);
- :func:`id_hash64` — 64 bits of an item id, for indexes that hold millions of ids in 8 bytes each
  (:func:`id_hashes64`: a record batch of ids at once);
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
import pyarrow as pa

_HASH_CHUNK = 1 << 20


def content_hash(data: bytes | str) -> str:
    """sha256 hex of text (UTF-8) or bytes."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def content_hasher() -> Any:
    """The hash of :func:`content_hash` and :func:`file_hash` (sha256), fed in pieces: ``update``, ``hexdigest``."""
    return hashlib.sha256()


def file_hash(path: str | Path, opener: Callable[[str], IO[bytes]] | None = None) -> str:
    """sha256 hex of a file's bytes, streamed (a path or, with ``opener``, an fsspec URL)."""
    digest = content_hasher()
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


_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1
#: ids up to this many bytes are hashed a byte column at a time across a whole batch; longer ones one by one
_VECTOR_ID_BYTES = 64


def id_hash64(item_id: str) -> int:
    """An unsigned 64-bit hash of an item id (FNV-1a of its UTF-8 bytes): 8 bytes per id in resume and duplicate
    indexes. A hash of this process's indexes only (never stored), so it is chosen to be computed for a whole
    record batch of ids at once (:func:`id_hashes64`)."""
    value = _FNV_OFFSET
    for byte in item_id.encode():
        value = ((value ^ byte) * _FNV_PRIME) & _MASK64
    return value


def id_hashes64(item_ids: list[str] | pa.Array) -> np.ndarray:
    """:func:`id_hash64` of many ids (a list, or an Arrow string array without nulls), as a ``uint64`` array:
    vectorised over the ids, one byte position at a time."""
    ids = item_ids if isinstance(item_ids, pa.Array) else pa.array(item_ids, pa.string())
    ids = ids.cast(pa.large_string())  # 64-bit offsets, whatever the input's
    count = len(ids)
    hashes = np.full(count, _FNV_OFFSET, dtype=np.uint64)
    if count == 0:
        return hashes
    if ids.null_count:
        raise ValueError("an item id is missing")
    _, offsets_buffer, data_buffer = ids.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64, count=count + 1, offset=8 * ids.offset)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(1, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    long = lengths > _VECTOR_ID_BYTES
    width = int(min(lengths.max(initial=0), _VECTOR_ID_BYTES))
    prime = np.uint64(_FNV_PRIME)
    for position in range(width):
        active = np.flatnonzero((lengths > position) & ~long)
        if len(active) == 0:
            break
        byte = data[starts[active] + position].astype(np.uint64)
        hashes[active] = (hashes[active] ^ byte) * prime  # uint64 arithmetic wraps, as FNV's does
    for index in np.flatnonzero(long).tolist():
        hashes[index] = id_hash64(ids[index].as_py())
    return hashes


class HashBuffer:
    """64-bit hashes gathered into one ``uint64`` array, filled in place up to ``capacity`` (a row count known in
    advance, e.g. from a Parquet footer): 8 bytes a hash, no chunk lists to join. Past it, chunks are joined once."""

    def __init__(self, capacity: int = 0) -> None:
        self._buffer = np.empty(capacity, np.uint64)
        self._used = 0
        self._extra: list[np.ndarray] = []

    def add(self, chunk: np.ndarray) -> None:
        """Append ``chunk``."""
        if not self._extra and self._used + len(chunk) <= len(self._buffer):
            self._buffer[self._used:self._used + len(chunk)] = chunk
            self._used += len(chunk)
        else:
            self._extra.append(chunk)

    def take(self) -> np.ndarray:
        """Everything added, in order, as one array (the buffer itself where it held it all); the buffer is
        emptied."""
        filled = self._buffer[:self._used]
        if self._extra:
            filled = np.concatenate([filled, *self._extra])
        elif self._used != len(self._buffer):
            filled = filled.copy()
        self._buffer, self._used, self._extra = np.empty(0, np.uint64), 0, []
        return filled


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


__all__ = ["HashBuffer", "budget_id", "content_hash", "file_hash", "id_hash64", "id_hashes64", "item_key", "item_keys",
           "json_hash", "shard_of"]
