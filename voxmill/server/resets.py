"""Resetting a client's connection without a response (the ``reset_rate`` fault, and a dropped WebSocket)."""

from __future__ import annotations

import asyncio
import socket
import struct

from starlette.types import Scope, Send

#: the ASGI scope key under which the app keeps a connection's raw ``send`` (a reset needs its socket)
RAW_SEND = "voxmill.raw_send"


async def drop_connection(scope: Scope, send: Send) -> None:
    """Reset the client's connection without a response.

    uvicorn hands the app its per-request ``send``, a method of an object holding the asyncio transport:
    set SO_LINGER (on, 0 s) on its socket and close it, so the client reads a reset, not a clean EOF.
    Elsewhere (another server, a wrapped ``send``) fall back to starting a response and abandoning it,
    which servers answer by closing the connection mid-response.
    """
    raw_send = scope.get(RAW_SEND)
    transport = getattr(getattr(raw_send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "get_extra_info"):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except (OSError, ValueError):  # ValueError: the client already closed it (its fd is gone)
                pass
        transport.close()
        # let the server see connection_lost before the app returns, so it does not answer 500
        for _ in range(3):
            await asyncio.sleep(0)
        return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b"", "more_body": True})


__all__ = ["RAW_SEND", "drop_connection"]
