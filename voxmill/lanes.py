"""One keep-alive connection per request in flight: a pool of single-connection httpx transports.

Why: httpcore's connection pool re-checks every pooled connection on every request and every response
(``_assign_requests_to_connections`` → ``has_expired`` → ``getpeername``), so with a pool sized to a
concurrency of 32 and ~10 requests actually in flight, each request paid ~40 socket checks; the profile of
a 200 req/s run had that as the engine loop's largest block. A lane is a whole ``httpx.AsyncHTTPTransport``
limited to one connection: a request takes a free lane (most recently used first, so warm connections are
reused and idle ones expire), its connection is the only one checked, and the lane is free again when the
response is closed. The limiter's concurrency cap bounds the lanes in use; past ``size`` (a caller
outside the limiter) an extra lane is made rather than waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx


class LaneTransport(httpx.AsyncBaseTransport):
    """Up to ``size`` reusable single-connection transports; ``make_lane()`` builds one."""

    def __init__(self, size: int, make_lane: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self.size = size
        self._make_lane = make_lane
        self._free: list[httpx.AsyncBaseTransport] = []
        self._all: list[httpx.AsyncBaseTransport] = []

    @classmethod
    def for_limits(cls, size: int, keepalive_expiry: float = 30.0) -> LaneTransport:
        """Lanes of plain HTTP/1.1 transports, each keeping its one connection alive ``keepalive_expiry`` s."""
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=keepalive_expiry)
        ssl_context = httpx.create_ssl_context()  # one for all lanes: loading the CA store costs ~10 ms
        return cls(size, lambda: httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lane = self._take()
        try:
            response = await lane.handle_async_request(request)
        except BaseException:
            self._give_back(lane, warm=False)  # its connection failed: taken last
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        warm = response.headers.get("connection", "").lower() != "close"
        response.stream = _LaneStream(response.stream, lambda: self._give_back(lane, warm))
        return response

    async def aclose(self) -> None:
        for lane in self._all:
            await lane.aclose()
        self._all.clear()
        self._free.clear()

    def _take(self) -> httpx.AsyncBaseTransport:
        if self._free:
            return self._free.pop()
        lane = self._make_lane()
        self._all.append(lane)
        return lane

    def _give_back(self, lane: httpx.AsyncBaseTransport, warm: bool = True) -> None:
        """A lane is free again; one whose connection the server closes (``warm`` False: ``Connection: close``,
        as a refusal says) is taken last, so requests reuse the open connections before opening a new one (a
        server capping connections refuses a new one while the idle ones are still open)."""
        if len(self._free) < self.size:
            if warm:
                self._free.append(lane)
            else:
                self._free.insert(0, lane)
        # past `size` the lane is simply dropped from the free list; aclose() still closes it


class _LaneStream(httpx.AsyncByteStream):
    """A response body that frees its lane when closed (once)."""

    __slots__ = ("_stream", "_release")

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


__all__ = ["LaneTransport"]
