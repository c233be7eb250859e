"""A response body streamed into a file: large audio in flight costs a buffer, not its size in memory."""

from __future__ import annotations

from pathlib import Path

import httpx

from voxmill.audio.formats import AUDIO_HEAD_BYTES


class BodyFile:
    """Where one request's 2xx body goes: ``path``, rewritten from the start by each attempt.

    After :meth:`receive`, ``head`` holds the body's first bytes (enough for its header checks) and ``size``
    its length; an error body is read into memory as usual (it is small, and goes into messages).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.head = b""
        self.size = 0

    async def receive(self, response: httpx.Response) -> None:
        """Stream ``response``'s (decoded) body into :attr:`path`, replacing what an earlier attempt left."""
        head = bytearray()
        size = 0
        # written on the event loop: a 64 KiB write into the page cache costs microseconds, less than a hop
        # to a worker thread
        with open(self.path, "wb") as out:
            async for chunk in response.aiter_bytes():
                out.write(chunk)
                size += len(chunk)
                if len(head) < AUDIO_HEAD_BYTES:
                    head += chunk[: AUDIO_HEAD_BYTES - len(head)]
        self.head, self.size = bytes(head), size

    def discard(self) -> None:
        """Remove the file (the request failed, or was cancelled, for good)."""
        self.path.unlink(missing_ok=True)


__all__ = ["BodyFile"]
