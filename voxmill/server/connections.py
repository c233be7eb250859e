"""Connection limits of the local server: a deadline for request headers and a cap on connections per client.

uvicorn times out idle keep-alive connections but not a client that connects and never finishes its
headers (slowloris): each such connection is held forever. Here every request's headers must be complete
within ``header_timeout_s`` of the connection opening (or, on a kept-alive connection, of the request's first
byte), else the client gets a 408 and the connection is closed. And one client address may hold at most
``max_connections_per_client`` connections; one more is answered 503 (with ``Retry-After``) and closed.

The 503 is answered so that a client can read it: closing a socket whose request is still unread makes the
kernel send a reset, which the client sees as a broken connection, a fault, instead of the answer telling it to
hold fewer connections open. So the refused connection is half-closed after the answer, whatever the client
still sends is read and dropped, and the connection is closed when the client closes it (or after
``REFUSED_GRACE_S``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from voxmill.server.limits import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS_PER_CLIENT

_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_BUSY_503 = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n"
             b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


#: a refused connection is closed this long after its 503 if the client has not closed it by then
REFUSED_GRACE_S = 5.0


def _answer(template: bytes, message: str) -> bytes:
    body = message.encode()
    return template % (len(body), body)


def guarded_http_protocol(
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    on_refused: Callable[[], None] | None = None,
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with both limits (``0`` turns either off); pass it as ``uvicorn.Config(http=…)``.
    ``on_refused`` is called for each connection refused past the cap (the server's counter).

    Each call makes a class with its own per-client counts: one per server.
    """
    open_by_client: Counter[str] = Counter()

    class GuardedHttpProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _counted: str | None = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            address = self.client[0] if self.client else "?"
            if max_connections_per_client and open_by_client[address] >= max_connections_per_client:
                self._refused = True
                if on_refused is not None:
                    on_refused()
                transport.write(_answer(_BUSY_503, f"too many connections from {address} (the cap is "
                                                   f"{max_connections_per_client}); retry after the others close"))
                if transport.can_write_eof():
                    transport.write_eof()  # the answer, then end of stream; what the client sends is dropped
                    self.loop.call_later(REFUSED_GRACE_S, transport.close)
                else:
                    transport.close()
                return
            open_by_client[address] += 1
            self._counted = address
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            if self._counted is not None:
                open_by_client[self._counted] -= 1
                if open_by_client[self._counted] <= 0:
                    del open_by_client[self._counted]
                self._counted = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._refused:  # a refused connection's request is read and dropped, never served
                super().data_received(data)

        def eof_received(self) -> bool | None:
            if self._refused:
                self.transport.close()  # the client is done: so are we (no reset: nothing is left unread)
                return False
            return super().eof_received()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()  # a kept-alive connection's next request: its headers have the same deadline

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def _arm_header_timer(self) -> None:
            if header_timeout_s and self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                message = f"request headers not received within {header_timeout_s:g} s"
                self.transport.write(_answer(_TIMEOUT_408, message))
                self.transport.close()

    return GuardedHttpProtocol


__all__ = ["DEFAULT_HEADER_TIMEOUT_S", "DEFAULT_MAX_CONNECTIONS_PER_CLIENT", "guarded_http_protocol"]
