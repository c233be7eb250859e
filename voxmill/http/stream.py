"""The WebSocket path: raw PCM frames as they arrive (``wss://HOST/api/v1/generate/ws``).

A refused handshake goes through the same :data:`~voxmill.http.status.STATUS_TABLE` as an HTTP response; the key
travels only in the first message, and a WebSocket log record that holds any slice of it is withheld.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from voxmill.catalog import ValidatedRequest
from voxmill.errors import AuthError, InvalidItem, RateLimited, TransientError, ValidationError, VoxmillError
from voxmill.http.status import error_for_status_code, item_label
from voxmill.limiter import Limiter
from voxmill.settings import Settings


class StreamingClient(Protocol):
    """What the stream needs of :class:`~voxmill.http.client.VoxmillClient`."""

    base_url: str
    settings: Settings
    limiter: Limiter
    _secret: str

    def _scrub(self, text: str) -> str: ...

    def _preview(self, body: bytes) -> str: ...

STREAM_PATH = "/api/v1/generate/ws"
#: how much of an error event goes into a message
_BODY_PREVIEW = 500

_WS_LOGGER = logging.getLogger("websockets.client")
#: a logged text holding this many consecutive characters of the key is withheld
_KEY_SLICE = 8


class _KeyWithholdingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The WebSocket's logger: at DEBUG websockets logs every frame, the first one (which carries the key)
    included, elided to its start and end; a record holding the key or any slice of it is withheld."""

    def __init__(self, logger: logging.Logger, secret: str) -> None:
        super().__init__(logger, {})
        size = min(len(secret), _KEY_SLICE)
        self._slices = frozenset(secret[i : i + size] for i in range(len(secret) - size + 1))

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join(map(str, (msg, *args)))
        if any(piece in text for piece in self._slices):
            text = "(a WebSocket message holding the API key, not logged)"
        self.logger.log(level, text, **kwargs)


def _stream_error(label: str, model: str, detail: str) -> VoxmillError:
    lowered = detail.lower()
    if any(word in lowered for word in ("auth", "token", "api key", "unauthori", "forbidden")):
        return AuthError(f"{label}the stream refused the key ({detail}): check VOXMILL_API_KEY")
    return TransientError(f"{label}{model}: the stream reported an error: {detail}")


def _ws_url(base_url: str) -> str:
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://") :]
    if base_url.startswith("http://"):
        return "ws://" + base_url[len("http://") :]
    return base_url


async def stream_speech(
    client: StreamingClient, request: ValidatedRequest, *, item: str | None = None
) -> AsyncIterator[bytes]:
    """Raw PCM (16-bit, 24 kHz, mono) frames from the WebSocket endpoint, as they arrive.

    Holds one limiter slot for the whole stream and does not retry (audio may already have been
    consumed). Files cannot travel on the WebSocket: upload the reference and pass ``voice_id``.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

    label = item_label(item)
    model = request.model.name
    if request.model.kind != "tts":
        raise ValidationError(f"{label}{model}: only text-to-speech models stream", param="model")
    if request.files():
        raise InvalidItem(
            f"{label}{model}: files cannot be sent on the WebSocket "
            f"({', '.join(request.files())}); upload the reference with upload_voice() and pass voice_id"
        )
    params: dict[str, Any] = {"model": model}
    params.update((k, v) for k, v in request.params.items() if k != "stream")
    url = _ws_url(client.base_url) + STREAM_PATH
    timeouts = client.settings.timeouts
    completed = False
    async with client.limiter.slot():
        try:
            async with connect(
                url,
                open_timeout=timeouts.connect,
                close_timeout=5,
                max_size=None,
                compression=None,
                logger=_KeyWithholdingLogger(_WS_LOGGER, client._secret),
            ) as socket:
                await socket.send(json.dumps({"token": client._secret, "model": model}))
                await socket.send(json.dumps(params))
                while True:
                    try:
                        message = await asyncio.wait_for(socket.recv(), timeouts.read)
                    except TimeoutError:
                        raise TransientError(
                            f"{label}{model}: no data on the stream for {timeouts.read:g} s"
                        ) from None
                    if isinstance(message, bytes):
                        yield message
                        continue
                    try:
                        event = json.loads(message)
                    except ValueError:
                        continue
                    if not isinstance(event, dict):
                        continue
                    kind = event.get("type")
                    if kind == "complete":
                        completed = True
                        break
                    if kind == "error":
                        raise _stream_error(label, model, client._scrub(json.dumps(event)[:_BODY_PREVIEW]))
        except InvalidStatus as exc:  # the handshake was answered with an HTTP status: the same table as HTTP
            error = error_for_status_code(exc.response.status_code, item=item, base_url=client.base_url,
                                          body=client._preview(exc.response.body or b""))
            if isinstance(error, RateLimited):
                client.limiter.slow_down(None)
            raise error from None
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = client._scrub(exc.rcvd.reason if exc.rcvd is not None else "")
            if code in (1008, 4001, 4003, 4401, 4403):
                raise AuthError(
                    f"{label}the stream was closed with code {code} ({reason}): check VOXMILL_API_KEY"
                ) from None
            raise TransientError(
                f"{label}{model}: the stream closed before 'complete' (code {code}, {reason!r})"
            ) from None
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise TransientError(
                f"{label}{model}: stream to {url} failed ({client._scrub(f'{type(exc).__name__}: {exc}')})"
            ) from None
    if completed:
        client.limiter.succeeded(None)


__all__ = ["STREAM_PATH", "StreamingClient", "stream_speech"]
