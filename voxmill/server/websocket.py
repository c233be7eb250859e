"""The local server's WebSocket route: ``/api/v1/generate/ws`` streams PCM frames, then ``{"type": "complete"}``."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from voxmill.catalog import TTS_SAMPLE_RATE
from voxmill.server.resets import drop_connection
from voxmill.server.service import WS_CHUNK_BYTES, Drop, Reply, Service
from voxmill.server.stats import request_content_hash

log = logging.getLogger(__name__)

_CLOSE_FOR_STATUS = {401: 1008, 400: 1007, 422: 1007, 429: 1013, 500: 1011, 503: 1013}


async def serve_stream(service: Service, websocket: WebSocket) -> None:
    """``/api/v1/generate/ws``: auth message, request message, PCM frames, ``{"type": "complete"}``."""
    await websocket.accept()
    request_id = uuid.uuid4().hex
    arrival: int | None = None
    try:
        hello = await _receive_object(websocket)
        arrival = service.stats.record_request()
        if not service.authorized(str(hello.get("token") or ""), bearer=False):
            raise Reply(401, "missing or wrong token in the first message")
        body = await _receive_object(websocket)
        model = str(body.get("model") or hello.get("model") or "")
        if not model:
            raise Reply(400, "the first message must name the 'model'", param="model")
        if body.get("model") not in (None, model):
            raise Reply(400, f"model {body['model']!r} differs from the first message's {model!r}", param="model")
        params = {k: v for k, v in body.items() if k != "model"}
        # the hash of a WebSocket request: its JSON values as sent, non-strings as sorted-key JSON
        fields = {"model": model, **{k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                                      for k, v in params.items()}}
        content_hash = request_content_hash(fields, {})
        await service.pre_work_faults()
        service.draw_faults(content_hash)
        request = service.validate(model, params)
        if request.model.kind != "tts":
            raise Reply(400, f"{model} is not a text-to-speech model; the WebSocket streams TTS only", param="model")
        notes = service.voice_headers(request)
        engine = service.engine_label("tts")
        await websocket.send_json({"type": "progress", "stage": "synthesizing", "request_id": request_id,
                                   "engine": engine, **notes})
        speed = float(request.params.get("voice_settings", {}).get("speed", 1.0))
        samples = await service.speak(request.params["text"], speed, request.params)
        pcm = await service.encode(samples, "pcm")
        fault = service.faults.body_fault()
        credits = service.bill(content_hash, truncated=fault.truncate, model=model)
        if fault.truncate:
            pcm = pcm[: len(pcm) // 2]
        chunks = [pcm[i : i + WS_CHUNK_BYTES] for i in range(0, len(pcm), WS_CHUNK_BYTES)]
        for chunk in chunks:
            if fault.slow_seconds:
                await asyncio.sleep(fault.slow_seconds / max(1, len(chunks)))
            await websocket.send_bytes(chunk)
        if fault.truncate:
            service.stats.record_status(500)
            await websocket.close(1011, "injected fault: stream cut short")
            return
        await websocket.send_json({"type": "complete", "request_id": request_id, "engine": engine,
                                   "sample_rate": TTS_SAMPLE_RATE, "bytes": len(pcm),
                                   "credits_remaining": credits})
        service.stats.record_status(101)
        await websocket.close(1000)
    except Reply as reply:
        if arrival is not None:
            service.stats.record_status(reply.status)
        await websocket.send_json({"type": "error", "status": reply.status, "request_id": request_id,
                                   **reply.body(), **reply.headers})
        reason = reply.message.encode()[:120].decode("utf-8", "ignore")
        await websocket.close(_CLOSE_FOR_STATUS.get(reply.status, 1011), reason)
    except Drop:
        service.stats.record_reset()
        await drop_connection(websocket.scope, websocket.send)
    except WebSocketDisconnect:
        pass
    except Exception:  # an engine or library failure: counted, and the client told, like an HTTP 500
        log.exception("unhandled error in a WebSocket stream")
        if arrival is not None:
            service.stats.record_status(500)
        await websocket.close(1011, "internal error in the local server")
    finally:
        if arrival is not None:
            service.stats.settle(arrival)


async def _receive_object(websocket: WebSocket) -> dict[str, Any]:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None:
        raise Reply(400, "send JSON text messages before the audio starts")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Reply(400, f"message is not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise Reply(400, "message must be a JSON object")
    return value



__all__ = ["serve_stream"]
