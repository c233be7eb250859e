"""The local server: the hosted audio API's HTTP/WebSocket contract, served by offline engines.

Same endpoints, fields and validation as the hosted API (``/work/shared/spec/api.md``), with what a test
needs on top: fault injection (:mod:`voxmill.server.faults`), server-side counters
(:mod:`voxmill.server.stats`) and a ``null`` engine for throughput work. Every generate response says which
engine made it (``x-voxmill-engine``), so local output can never pass for the hosted model's.

Differences from the hosted API, on purpose:

- ``stream=true`` over HTTP is refused (400): use the WebSocket.
- one piper voice speaks for every TTS model; preset voices, ``voice_id``, reference files and URLs are
  accepted and recorded in ``x-voxmill-voice-note`` / ``x-voxmill-ignored``, never fetched.
- ``voice_url``/``preset_url`` pointing at loopback, private, link-local or otherwise non-public literal
  addresses (or ``localhost``) are refused with 400; host names are not resolved (no network).
- WebSocket outcomes are counted in ``by_status`` under the HTTP status they stand for; a completed
  stream counts as ``"101"``.
- request bodies are capped (``max_upload_bytes``, 413) and must arrive within ``body_timeout_s`` (408):
  see :mod:`voxmill.server.limits`. A TTS text holding NUL or another control character is a 400
  (``param: text``); text with nothing to speak is a 200 with an empty WAV, counted in ``empty_audio``.
"""


from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from voxmill.catalog import TTS_SAMPLE_RATE, UPLOAD_FILE_TYPES, UPLOAD_MODELS, ValidatedRequest
from voxmill.errors import ConfigError, InvalidItem
from voxmill.identity import content_hash
from voxmill.server.engines import (
    Transcript,
    decode_audio,
)
from voxmill.server.faults import BodyFault
from voxmill.server.limits import (
    BodyTimeout,
    BodyTooLarge,
    LimitedReceive,
    check_declared_length,
)
from voxmill.server.resets import RAW_SEND, drop_connection
from voxmill.server.service import (
    MEDIA_TYPES,
    NULL_ENGINE,
    NULL_TRANSCRIPT,
    Drop,
    Form,
    Reply,
    ServerConfig,
    Service,
    UploadedFile,
)
from voxmill.server.websocket import serve_stream

log = logging.getLogger(__name__)

# --- HTTP helpers ------------------------------------------------------------------------------------


async def _read_form(request: Request) -> Form:
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise Reply(415, "send the request as multipart/form-data (even without a file)")
    try:
        form = await request.form()
    except (BodyTooLarge, BodyTimeout):
        raise
    except Exception as exc:  # malformed multipart: python-multipart's own errors
        raise Reply(400, f"could not parse the multipart body: {exc}") from None
    fields: dict[str, str] = {}
    files: dict[str, UploadedFile] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[name] = UploadedFile(value.filename or "", await value.read())
                fields.pop(name, None)
            else:
                fields[name] = value
                files.pop(name, None)
    finally:
        await form.close()
    return Form(fields, files)


async def _trickle(body: bytes, seconds: float, pieces: int = 10) -> AsyncIterator[bytes]:
    step = max(1, -(-len(body) // pieces))
    for start in range(0, len(body), step):
        await asyncio.sleep(seconds / pieces)
        yield body[start : start + step]


def _deliver(body: bytes, media_type: str, headers: dict[str, str], fault: BodyFault) -> Response:
    if fault.truncate:
        headers["x-voxmill-fault"] = "truncate"
        return Response(body[: len(body) // 2], media_type=media_type, headers=headers)
    if fault.slow_seconds:
        headers["x-voxmill-fault"] = "slow-body"
        headers["content-length"] = str(len(body))
        return StreamingResponse(_trickle(body, fault.slow_seconds), media_type=media_type, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


class _ResetResponse(Response):
    """Not a response: drops the TCP connection with an RST (SO_LINGER 0) when it is 'sent'."""

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await drop_connection(scope, send)


class _App(Starlette):
    """Starlette that remembers the server's own ``send`` in the scope, so a fault can reset the socket."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


# --- endpoints ---------------------------------------------------------------------------------------


def create_app(config: ServerConfig) -> Starlette:
    """The local server as a Starlette app (serve it with uvicorn, or :func:`serve_in_thread`)."""
    service = Service(config)

    async def guarded(request: Request, handler: Callable[[Form, dict[str, str]], Any]) -> Response:
        arrival = service.stats.record_request()
        try:
            return await answer(request, handler)
        finally:
            service.stats.settle(arrival)

    async def answer(request: Request, handler: Callable[[Form, dict[str, str]], Any]) -> Response:
        headers = {"x-request-id": uuid.uuid4().hex, "x-voxmill-engine": service.engine_label(None)}
        body = LimitedReceive(request.receive, config.max_upload_bytes, config.body_timeout_s)
        if not service.authorized(request.headers.get("authorization")):
            return await _finish(Reply(401, "missing or wrong bearer token (Authorization: Bearer <token>)"),
                                 headers, body)
        try:
            check_declared_length(request.headers.get("content-length"), config.max_upload_bytes)
            # the body is read first, as a real API does: a client that hangs up later is still billed
            form = await _read_form(Request(request.scope, body))
            await service.take_slot()
            try:
                await service.pre_work_faults()
                response = await handler(form, headers)
            finally:
                service.give_slot()
        except Reply as reply:
            return await _finish(reply, headers, body)
        except BodyTooLarge as exc:
            return await _finish(Reply(413, str(exc)), headers, body, drain=False)
        except BodyTimeout as exc:
            return await _finish(Reply(408, str(exc)), headers, body, drain=False)
        except Drop:
            service.stats.record_reset()
            return _ResetResponse()
        except Exception:  # an engine or library failure: still a counted, JSON 500 (never a bare one)
            log.exception("unhandled error answering %s", request.url.path)
            reply = Reply(500, "internal error in the local server (its log has the traceback)")
            return await _finish(reply, headers, body)
        service.stats.record_status(response.status_code)
        return response

    async def _finish(reply: Reply, headers: dict[str, str], body: LimitedReceive, *, drain: bool = True) -> Response:
        """The JSON error response; a body not read to its end is drained within the cap and deadline
        (so the client reads this answer, not a reset), else the connection closes after the answer."""
        service.stats.record_status(reply.status)
        headers = {**headers, **reply.headers, "x-credits-remaining": str(service.credits)}
        if not body.complete and not (drain and await body.drain()):
            headers["connection"] = "close"
        return JSONResponse(reply.body(), status_code=reply.status, headers=headers)

    async def generate_work(form: Form, headers: dict[str, str]) -> Response:
        model = form.fields.get("model")
        if not model:
            raise Reply(400, "the 'model' field is required", param="model")
        content_hash = form.content_hash()
        service.draw_faults(content_hash)
        params: dict[str, Any] = {k: v for k, v in form.fields.items() if k != "model"}
        params.update(form.files)
        request = service.validate(model, params)
        kind = request.model.kind
        headers["x-voxmill-engine"] = service.engine_label(kind)
        if request.params.get("stream"):
            raise Reply(400, "streaming over HTTP is not offered by the local server; use the WebSocket",
                         param="stream")
        for name in request.model.file_params:
            if name in form.fields and name not in form.files:
                raise Reply(422, f"{model}: parameter {name!r} must be sent as a file part", param=name)
        if kind == "asr":
            transcript = await _transcribe(service, form, request)
            await service.work_latency(audio_seconds=transcript.duration)
            fmt = request.output_format
            if fmt == "text":
                body, media_type = transcript.text.encode(), "text/plain; charset=utf-8"
            else:
                body, media_type = json.dumps(transcript.to_json()).encode(), "application/json"
        else:
            headers.update(service.voice_headers(request))
            speed = float(request.params.get("voice_settings", {}).get("speed", 1.0))
            await service.work_latency(characters=len(request.params["text"]))
            samples = await service.speak(request.params["text"], speed, request.params)
            garbage = service.faults.garbage_audio(TTS_SAMPLE_RATE // 10 if samples is None else len(samples))
            if garbage is not None:
                samples, headers["x-voxmill-fault"] = garbage, "garbage-audio"
            fmt = request.output_format
            body, media_type = await service.encode(samples, fmt), MEDIA_TYPES[fmt]
        fault = service.faults.body_fault()
        headers["x-credits-remaining"] = str(service.bill(content_hash, truncated=fault.truncate, model=model))
        return _deliver(body, media_type, headers, fault)

    async def upload_work(form: Form, headers: dict[str, str]) -> Response:
        service.draw_faults(None)
        model = form.fields.get("model")
        if model not in UPLOAD_MODELS:
            raise Reply(400, f"model {model!r} does not take voice uploads; use one of {', '.join(UPLOAD_MODELS)}",
                         param="model")
        extra = sorted(set(form.fields) - {"model"} | set(form.files) - {"voice_reference_file"})
        if extra:
            raise Reply(422, f"upload: unknown parameter(s) {', '.join(extra)}; send model and "
                              "voice_reference_file", param=extra[0])
        reference = form.files.get("voice_reference_file")
        if reference is None:
            raise Reply(422, "upload: voice_reference_file (a WAV or MP3 file part) is required",
                         param="voice_reference_file")
        suffix = Path(reference.name).suffix.lower().lstrip(".")
        if suffix not in UPLOAD_FILE_TYPES:
            raise Reply(422, f"upload: file {reference.name!r} has type {suffix or '(none)'!r}; accepted: "
                              f"{', '.join(UPLOAD_FILE_TYPES)}", param="voice_reference_file")
        try:
            await service.in_thread(lambda: decode_audio(reference.data))
        except InvalidItem as exc:
            raise Reply(400, f"upload: {exc.message}", param="voice_reference_file") from None
        voice_id = f"{model}-{content_hash(reference.data)[:16]}"
        service.voices[model].add(voice_id)
        service.stats.record_upload()
        headers["x-credits-remaining"] = str(service.credits)
        return JSONResponse({"voice_id": voice_id}, headers=headers)

    async def generate(request: Request) -> Response:
        return await guarded(request, generate_work)

    async def upload(request: Request) -> Response:
        return await guarded(request, upload_work)

    async def stream(websocket: WebSocket) -> None:
        await serve_stream(service, websocket)

    def admin(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            if not service.authorized(request.headers.get("authorization")):
                return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
            return await handler(request)

        return endpoint

    async def stats(request: Request) -> Response:
        return JSONResponse(service.stats.snapshot())

    async def reset(request: Request) -> Response:
        service.reset()
        return JSONResponse(service.stats.snapshot())

    async def faults(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(service.faults.config.to_dict())
        try:
            changes = await request.json()
        except json.JSONDecodeError as exc:
            return JSONResponse({"error": f"body is not JSON: {exc.msg}"}, status_code=400)
        if not isinstance(changes, dict):
            return JSONResponse({"error": "send a JSON object of fault fields"}, status_code=400)
        try:
            new = service.faults.config.updated(changes)
        except ConfigError as exc:
            return JSONResponse({"error": exc.message}, status_code=400)
        service.faults.configure(new)
        return JSONResponse(new.to_dict())

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "engine": service.engine_label(None)})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if config.preload:
            await service.in_thread(service.preload)
        yield

    app = _App(
        routes=[
            Route("/api/v1/generate", generate, methods=["POST"]),
            Route("/api/v1/generate/upload", upload, methods=["POST"]),
            WebSocketRoute("/api/v1/generate/ws", stream),
            Route("/admin/stats", admin(stats), methods=["GET"]),
            Route("/admin/reset", admin(reset), methods=["POST"]),
            Route("/admin/faults", admin(faults), methods=["GET", "PUT"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.service = service
    return app


async def _transcribe(service: Service, form: Form, request: ValidatedRequest) -> Transcript:
    upload = form.files["file"]
    try:
        return await service.transcribe(upload.data, str(request.params.get("language") or "en"))
    except InvalidItem as exc:
        raise Reply(400, f"{request.model.name}: {exc.message}", param="file") from None


# --- WebSocket ---------------------------------------------------------------------------------------

__all__ = ["MEDIA_TYPES", "NULL_ENGINE", "NULL_TRANSCRIPT", "ServerConfig", "create_app", "drop_connection"]
