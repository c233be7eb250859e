"""Request-body limits of the local server: an upload cap and a deadline for the whole body.

The cap is decided from ``Content-Length`` before a byte of the body is read, and enforced again while the
body streams in (a chunked body has no length), so an oversized upload is refused without being buffered.
The deadline covers slow bodies and short ones (a ``Content-Length`` larger than what is sent): the request
is answered 408 instead of waiting forever. A request answered early (401, 400) has the rest of its body
drained within the same cap and deadline, so the client reads the answer rather than a reset; past them, the
connection is closed after the answer.
"""

from __future__ import annotations

import math
import time

import anyio
from starlette.types import Message, Receive

#: default upload cap: the hosted API's is not documented; 50 MiB holds ~25 min of 16 kHz 16-bit WAV
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
#: default time allowed for a whole request body to arrive
DEFAULT_BODY_TIMEOUT_S = 30.0
#: default time allowed for a request's headers to arrive (see :mod:`voxmill.server.connections`)
DEFAULT_HEADER_TIMEOUT_S = 10.0
#: default cap on connections one client address may hold (a voxmill client opens one per request in flight)
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 256


class BodyTooLarge(Exception):
    """The request body is (or says it is) larger than the cap."""

    def __init__(self, size: int, cap: int, *, declared: bool) -> None:
        how = "Content-Length says" if declared else "more than"
        super().__init__(f"request body too large: {how} {size:,} bytes; the cap is {cap:,} bytes "
                         "(raise it with `voxmill serve --max-upload-mb`)")


class BodyTimeout(Exception):
    """The request body did not arrive in full before the deadline."""

    def __init__(self, received: int, seconds: float) -> None:
        super().__init__(f"request body not received within {seconds:g} s ({received:,} bytes arrived); "
                         "send the whole body, with a Content-Length that matches it")


def check_declared_length(content_length: str | None, cap: int) -> None:
    """Raise :class:`BodyTooLarge` when the declared ``Content-Length`` is over ``cap`` (nothing read yet)."""
    if content_length is not None and content_length.strip().isdigit() and int(content_length) > cap:
        raise BodyTooLarge(int(content_length), cap, declared=True)


class LimitedReceive:
    """An ASGI ``receive`` that counts body bytes against a cap and the whole body against a deadline."""

    def __init__(self, receive: Receive, cap: int, timeout_s: float) -> None:
        self._receive = receive
        self._cap = cap
        self._timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s if timeout_s > 0 else math.inf
        self.received = 0
        #: the last body message has arrived
        self.complete = False

    async def __call__(self) -> Message:
        try:
            with anyio.fail_after(self._deadline - time.monotonic()):
                message = await self._receive()
        except TimeoutError:
            raise BodyTimeout(self.received, self._timeout_s) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self._cap:
                raise BodyTooLarge(self.received, self._cap, declared=False)
            self.complete = not message.get("more_body", False)
        return message

    async def drain(self) -> bool:
        """Read and discard the rest of the body; True when it ended within the cap and the deadline."""
        try:
            while not self.complete:
                if (await self())["type"] == "http.disconnect":
                    return False
        except (BodyTooLarge, BodyTimeout):
            return False
        return True


__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "BodyTimeout",
    "BodyTooLarge",
    "LimitedReceive",
    "check_declared_length",
]
