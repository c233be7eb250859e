"""The client of the audio API: one pooled ``httpx.AsyncClient``, one retry policy, typed results.

The package keeps its layers apart: :mod:`~voxmill.http.status` (the status table), :mod:`~voxmill.http.retry`
(the tenacity objects), :mod:`~voxmill.http.results` (typed results), :mod:`~voxmill.http.stream` (the
WebSocket path); this module is the client that composes them.

One request path, layered the httpx way: :meth:`VoxmillClient._send` builds the request once →
``_with_retries`` (the one tenacity policy) → ``_attempt`` (status table, parsing, limiter feedback) →
``_send_limited`` (a :class:`~voxmill.limiter.Limiter` slot and the timing) → the transport (one
keep-alive connection per request in flight: :mod:`voxmill.lanes`).
:data:`~voxmill.http.status.STATUS_TABLE` turns statuses into :mod:`voxmill.errors` (its module says how). A
2xx whose body is not the asked audio/JSON is BadResponse (retried: a cut-off body is transient in practice);
a 2xx audio with no samples is EmptyAudio (tried once more, then the item fails ``empty_audio``). A TTS body
streams into the file the caller names (:class:`~voxmill.http.body.BodyFile`): hundreds of long clips in flight
hold their socket buffers, not their audio.

Faults are retried up to ``RetryPolicy.max_attempts`` tries; 429s do not count towards them (the API pacing
us is no fault of the item) and are retried until ``RetryPolicy.rate_limited_deadline`` seconds after the
first try. A Retry-After longer than ``RetryPolicy.max_retry_after`` ends the retries with RateLimited. The final
error carries ``attempts`` and ``status``. The API key is only revealed to build the Authorization header
(and the WebSocket's first message); error messages are our own, never an httpx message chained with its
request, and any text that might echo the key is scrubbed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from voxmill.audio.formats import FORMATS, check_audio_body, detect_format
from voxmill.catalog import UPLOAD_FILE_TYPES, UPLOAD_MODELS, ValidatedRequest
from voxmill.errors import (
    BadResponse,
    ConfigError,
    InvalidItem,
    RateLimited,
    RunStopped,
    TransientError,
    ValidationError,
    VoxmillError,
)
from voxmill.http.body import BodyFile
from voxmill.http.results import SpeechResult, TranscriptResult, float_or_none, segments_of
from voxmill.http.retry import Retryable, Stop, Wait
from voxmill.http.status import error_for_status, item_label
from voxmill.http.stream import stream_speech
from voxmill.identity import content_hash
from voxmill.lanes import LaneTransport
from voxmill.limiter import AsyncRateLimiter, Limiter, build_limiter
from voxmill.settings import Settings
from voxmill.voices import VoiceCache

logger = logging.getLogger(__name__)

GENERATE_PATH = "/api/v1/generate"
UPLOAD_PATH = "/api/v1/generate/upload"
ENGINE_HEADER = "x-voxmill-engine"
CREDITS_HEADER = "x-credits-remaining"
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid")
#: an idle keep-alive connection is closed after this many seconds
KEEPALIVE_EXPIRY_S = 30.0
#: how much of an error body goes into a message
_BODY_PREVIEW = 500
#: a 429/503 whose message says this is about requests in flight, not the rate: the in-flight limit is cut
_TOO_MANY_IN_FLIGHT = re.compile(r"concurren|in[ -]flight|in[ -]progress|parallel|too many connections", re.IGNORECASE)
T = TypeVar("T")
R = TypeVar("R", SpeechResult, TranscriptResult)
_MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "m4a": "audio/mp4", "ogg": "audio/ogg", "webm": "audio/webm"}

#: ``on_retry(item, error, attempt_number)``: called before each sleep between attempts
RetryHook = Callable[[str | None, VoxmillError, int], None]


class VoxmillClient:
    """Talks to the audio API (hosted or the local server): ``async with VoxmillClient(settings) as c``.

    One ``httpx.AsyncClient`` (one keep-alive connection per request in flight, up to ``max_concurrent``)
    serves every request; ``limiter`` (default: :func:`~voxmill.limiter.build_limiter` of ``settings``)
    paces them and may be shared with other clients. Raises ConfigError when ``settings`` has no API key.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        limiter: Limiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        on_retry: RetryHook | None = None,
        voice_cache: VoiceCache | None = None,
        should_stop: Callable[[], str | None] | None = None,
    ) -> None:
        settings = settings if settings is not None else Settings.from_env()
        if settings.api_key is None:
            raise ConfigError(
                "no API key: set VOXMILL_API_KEY to your Eigen AI key (export VOXMILL_API_KEY=...), "
                "or point VOXMILL_BASE_URL at a local voxmill server and set VOXMILL_API_KEY to its key"
            )
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self._own_limiter: AsyncRateLimiter | None = None
        if limiter is None:
            limiter = self._own_limiter = build_limiter(settings)
        self.limiter: Limiter = limiter
        self.on_retry = on_retry
        #: why the run is stopping (None: it is not): checked before every try and while waiting to retry
        self.should_stop = should_stop
        self.voice_cache = voice_cache if voice_cache is not None else VoiceCache.in_dir(settings.cache_dir)
        #: attempts now waiting to be retried (for a "retrying" progress display)
        self.retries_pending = 0
        self._key = settings.api_key
        self._secret = settings.api_key.reveal()
        self._retry = settings.retry
        self._uploads: dict[tuple[str, str], asyncio.Task[str]] = {}
        # absolute URL objects: httpx re-parses and merges a relative path on every request otherwise
        self._urls = {path: httpx.URL(self.base_url + path) for path in (GENERATE_PATH, UPLOAD_PATH)}
        timeouts = settings.timeouts
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self._secret}", "Accept": "*/*"},
            timeout=httpx.Timeout(
                connect=timeouts.connect, read=timeouts.read, write=timeouts.write, pool=timeouts.pool
            ),
            transport=transport if transport is not None else LaneTransport.for_limits(
                settings.rate_limit.max_concurrent, keepalive_expiry=KEEPALIVE_EXPIRY_S
            ),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"VoxmillClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> VoxmillClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections, cancel uploads nobody awaits any more, hand what the limiter learned on."""
        for task in self._uploads.values():
            task.cancel()
        await self._http.aclose()
        if self._own_limiter is not None:
            self._own_limiter.close()  # what it learned goes to the shared budget

    # --- generate ----------------------------------------------------------------------------------

    async def generate(
        self, request: ValidatedRequest, *, item: str | None = None, into: Path | None = None
    ) -> SpeechResult | TranscriptResult:
        """POST ``/api/v1/generate`` (always multipart) with retries; the result type follows the model.

        ``item`` labels error messages (a manifest row id). A TTS body is written to the file ``into`` (needed
        for TTS; created or overwritten, and removed again when the request fails). TTS with ``stream=true`` is
        refused: use :meth:`stream_speech`.
        """
        body: BodyFile | None = None
        if request.model.kind == "tts":
            if request.params.get("stream"):
                raise InvalidItem(
                    f"{item_label(item)}{request.model.name}: stream=true is not supported by generate(); "
                    f"use stream_speech() for streaming, or stream=false for batch work"
                )
            if into is None:
                raise TypeError("a TTS request writes its audio to a file: pass into=PATH")
            body = BodyFile(into)
        parts = await self._multipart(request, item)
        parse = (functools.partial(self._speech, request, body=body, item=item) if body is not None
                 else functools.partial(self._transcript, request, item=item))
        try:
            return await self._send(GENERATE_PATH, parts, parse, item, body)
        except BaseException:
            if body is not None:
                body.discard()  # never left behind as if it were audio
            raise
        finally:
            for _, part in parts:  # files streamed from disk
                if len(part) > 1 and hasattr(part[1], "close"):
                    part[1].close()

    async def synthesize(self, request: ValidatedRequest, *, into: Path, item: str | None = None) -> SpeechResult:
        """Text to speech into the file ``into`` (its checked audio, or no file if it fails); ``request`` must
        be for a TTS model. Put ``into`` beside the final output: moving it there is then atomic."""
        return await self._generate_as(request, item, SpeechResult, into)

    async def transcribe(self, request: ValidatedRequest, *, item: str | None = None) -> TranscriptResult:
        """Speech to text; ``request`` must be for an ASR model."""
        return await self._generate_as(request, item, TranscriptResult)

    async def _generate_as(
        self, request: ValidatedRequest, item: str | None, result_type: type[R], into: Path | None = None
    ) -> R:
        kind, other = ("tts", "transcribe()") if result_type is SpeechResult else ("asr", "synthesize()")
        if request.model.kind != kind:
            what = "a speech recognition" if kind == "tts" else "a text-to-speech"
            raise ValidationError(f"{item_label(item)}{request.model.name} is {what} model; use {other}",
                                  param="model")
        result = await self.generate(request, item=item, into=into)
        assert isinstance(result, result_type)
        return result

    async def _multipart(self, request: ValidatedRequest, item: str | None) -> list[tuple[str, Any]]:
        # text fields go through files= as (None, value): httpx only sends multipart when files is
        # non-empty, and the API wants multipart even without a file
        parts: list[tuple[str, Any]] = [(name, (None, value)) for name, value in request.form_fields().items()]
        for name, value in request.files().items():
            file_types = request.model.param_by_name[name].file_types
            parts.append((name, await _file_part(name, value, file_types, item)))
        return parts

    def _speech(
        self,
        request: ValidatedRequest,
        response: httpx.Response,
        latency: float,
        attempt: int,
        *,
        body: BodyFile | None,
        item: str | None,
    ) -> SpeechResult:
        assert body is not None
        fmt = request.output_format
        try:
            check_audio_body(body.head, fmt, total=body.size)
        except BadResponse as exc:
            raise type(exc)(  # EmptyAudio stays EmptyAudio: it is retried at most once
                f"{item_label(item)}{request.model.name}: {exc.message}", status=response.status_code
            ) from None
        return SpeechResult(
            path=body.path,
            size=body.size,
            format=fmt,
            engine=self._engine(response, request.model.name),
            request_id=_request_id(response),
            credits_remaining=response.headers.get(CREDITS_HEADER),
            status=response.status_code,
            attempts=attempt,
            latency_s=latency,
        )

    def _transcript(
        self,
        request: ValidatedRequest,
        response: httpx.Response,
        latency: float,
        attempt: int,
        *,
        item: str | None,
    ) -> TranscriptResult:
        model = request.model.name
        common = dict(
            engine=self._engine(response, model),
            request_id=_request_id(response),
            credits_remaining=response.headers.get(CREDITS_HEADER),
            status=response.status_code,
            attempts=attempt,
            latency_s=latency,
        )
        if request.output_format == "text":
            text = response.text
            return TranscriptResult(
                text=text.strip(), language=None, duration=None, segments=(), raw=text, **common
            )
        try:
            raw = json.loads(response.content)
        except ValueError:
            raise BadResponse(
                f"{item_label(item)}{model}: response_format=json but the body is not JSON: "
                f"{self._preview(response.content)!r}",
                status=response.status_code,
            ) from None
        text = None
        if isinstance(raw, dict):
            text = raw.get("text")
            if not isinstance(text, str):
                text = raw.get("transcription")
        if not isinstance(text, str):
            raise BadResponse(
                f"{item_label(item)}{model}: the JSON response holds neither 'text' nor 'transcription': "
                f"{self._preview(response.content)!r}",
                status=response.status_code,
            )
        language = raw.get("language")
        return TranscriptResult(
            text=text.strip(),
            language=language if isinstance(language, str) else None,
            duration=float_or_none(raw.get("duration")),
            segments=segments_of(raw.get("segments")),
            raw=raw,
            **common,
        )

    def _engine(self, response: httpx.Response, model: str) -> str:
        return response.headers.get(ENGINE_HEADER) or f"hosted:{model}"

    # --- upload ------------------------------------------------------------------------------------

    async def upload_voice(self, model: str, reference: Path) -> str:
        """The voice_id of ``reference`` for ``model``, uploading it only if the cache has none.

        Cached on disk by (content sha256, model, base_url); concurrent calls for the same reference and
        model share one request.
        """
        if model not in UPLOAD_MODELS:
            raise ValidationError(
                f"{model}: voice upload is for {', '.join(UPLOAD_MODELS)} only", param="model"
            )
        reference = Path(reference)
        suffix = reference.suffix.lower().lstrip(".")
        if suffix not in UPLOAD_FILE_TYPES:
            raise ValidationError(
                f"{model}: voice reference {reference.name!r} has type {suffix or '(none)'!r}; accepted: "
                f"{', '.join(UPLOAD_FILE_TYPES)} (convert it first)",
                param="voice_reference_file",
            )
        try:
            data = await asyncio.to_thread(reference.read_bytes)
        except OSError as exc:
            raise InvalidItem(f"{model}: cannot read voice reference {str(reference)!r}: {exc.strerror}") from None
        digest = content_hash(data)
        cached = self.voice_cache.get(digest, model, self.base_url)
        if cached is not None:
            return cached
        key = (digest, model)
        task = self._uploads.get(key)
        if task is None:
            task = asyncio.ensure_future(self._upload(model, reference.name, suffix, data, digest))
            self._uploads[key] = task
            task.add_done_callback(functools.partial(self._upload_done, key))
        # shield: one caller giving up must not cancel the upload the others wait for
        return await asyncio.shield(task)

    def _upload_done(self, key: tuple[str, str], task: asyncio.Task[str]) -> None:
        self._uploads.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here so an upload whose waiters all gave up logs no warning

    async def _upload(self, model: str, filename: str, suffix: str, data: bytes, digest: str) -> str:
        parts = [
            ("model", (None, model)),
            ("voice_reference_file", (filename, data, _MIME.get(suffix, "application/octet-stream"))),
        ]
        item = f"voice upload {filename}"

        def parse(response: httpx.Response, latency: float, attempt: int) -> str:
            try:
                voice_id = json.loads(response.content).get("voice_id")
            except (ValueError, AttributeError):
                voice_id = None
            if not isinstance(voice_id, str) or not voice_id:
                raise BadResponse(
                    f"{item}: the response holds no 'voice_id': {self._preview(response.content)!r}",
                    status=response.status_code,
                )
            return voice_id

        voice_id: str = await self._send(UPLOAD_PATH, parts, parse, item)
        self.voice_cache.put(digest, model, self.base_url, voice_id)
        return voice_id

    # --- the one request path: retries → limiter and timing → transport → status table → parse ------

    async def _send(
        self,
        path: str,
        parts: list[tuple[str, Any]],
        parse: Callable[[httpx.Response, float, int], Any],
        item: str | None,
        body: BodyFile | None = None,
    ) -> Any:
        """POST ``parts`` as multipart to ``path``, retried by the one policy; ``parse``'s result. A 2xx body
        streams into ``body`` when given (else it is read into the response)."""
        request = self._http.build_request("POST", self._urls[path], files=parts)
        if not any(len(part) > 1 and hasattr(part[1], "read") for _, part in parts):
            request.read()  # the body in one piece: one socket write, and every retry resends it as is
        # else a file streams from disk in 64 KiB pieces (a retry rewinds it): hundreds of large uploads in
        # flight hold no more than their buffers
        return await self._with_retries(functools.partial(self._attempt, request, parse, item, body), item)

    async def _with_retries(self, attempt: Callable[[int], Awaitable[T]], item: str | None) -> T:
        """Run ``attempt(number)`` until it succeeds or the retry policy gives up (then its error)."""
        retrying = AsyncRetrying(
            stop=(stop := Stop(self._retry)),
            wait=Wait(self._retry, stop),
            retry=retry_if_exception(Retryable(self._retry)),
            before_sleep=functools.partial(self._before_sleep, item),
            sleep=self._sleep,
            reraise=True,
        )
        waiting = False  # counted in retries_pending
        try:
            async for state in retrying:
                if waiting:
                    waiting = False
                    self.retries_pending -= 1
                with state:
                    return await attempt(state.retry_state.attempt_number)
                # the attempt failed: tenacity now either sleeps before the next one or re-raises
                waiting = True
                self.retries_pending += 1
        finally:
            if waiting:
                self.retries_pending -= 1
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _attempt(
        self,
        request: httpx.Request,
        parse: Callable[[httpx.Response, float, int], Any],
        item: str | None,
        body: BodyFile | None,
        number: int,
    ) -> Any:
        """One try: the response through the status table and ``parse``; the limiter hears how it went."""
        self._check_stop(item)
        latency: float | None = None
        try:
            response, latency = await self._send_limited(request, item, body, retry=number > 1)
            error = error_for_status(response, item, self.base_url, self._preview)
            if error is not None:
                if response.status_code in (429, 503) and _TOO_MANY_IN_FLIGHT.search(self._preview(response.content)):
                    # too many requests in flight (not the rate, not a fault): the in-flight limit is cut
                    self.limiter.slow_down(None, concurrency=True)
                    error.attempts = number  # heard: not a rate signal, not admitted
                raise error
            result = parse(response, latency, number)
        except RateLimited as exc:
            if exc.attempts != number:  # not yet heard by the limiter
                # a Retry-After over the cap ends this item; it must not freeze every other one
                pause = exc.retry_after
                if pause is not None:
                    pause = min(pause, self._retry.max_retry_after)
                self.limiter.slow_down(pause)
            exc.attempts = number
            raise
        except VoxmillError as exc:
            if exc.status != 429 and exc.attempts != number and not isinstance(exc, ConfigError):
                self.limiter.admitted(latency)  # a fault is the API's answer, not a rate signal
            exc.attempts = number
            raise
        self.limiter.succeeded(latency)
        return result

    async def _send_limited(
        self, request: httpx.Request, item: str | None, body: BodyFile | None = None, *, retry: bool = False
    ) -> tuple[httpx.Response, float]:
        """Send inside a limiter slot (``retry``: a later try, which waits ahead of first tries); the response and
        the seconds it took (to the body's end). The body is read into the response, or a 2xx body streamed into
        ``body`` when given."""
        async with self.limiter.slot(retry=retry):
            self._check_stop(item)  # the wait for a slot may have outlasted the run
            started = time.perf_counter()
            failure: VoxmillError | None = None
            try:
                response = await self._http.send(request, stream=True)
                try:
                    if body is not None and response.is_success:
                        await body.receive(response)
                    else:
                        await response.aread()
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:
                failure = self._transport_error(exc, item)
            if failure is not None:
                # raised outside the handler: no __context__ holding httpx's request
                raise failure
            return response, time.perf_counter() - started

    def _check_stop(self, item: str | None) -> None:
        reason = self.should_stop() if self.should_stop is not None else None
        if reason is not None:
            raise RunStopped(f"{item_label(item)}not sent: the run is stopping ({reason})")

    async def _sleep(self, seconds: float) -> None:
        """Wait before a retry, waking early when the run stops (the next try then raises RunStopped)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.should_stop is not None and self.should_stop() is not None:
                return
            await asyncio.sleep(min(left, 0.1))

    def _before_sleep(self, item: str | None, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, VoxmillError):
            logger.debug("%sattempt %d failed, retrying: %s", item_label(item), state.attempt_number, error)
            if self.on_retry is not None:
                self.on_retry(item, error, state.attempt_number)

    def stream_speech(self, request: ValidatedRequest, *, item: str | None = None) -> AsyncIterator[bytes]:
        """Raw PCM frames from the WebSocket endpoint as they arrive (:func:`voxmill.http.stream.stream_speech`)."""
        return stream_speech(self, request, item=item)

    def _transport_error(self, exc: httpx.HTTPError, item: str | None) -> VoxmillError:
        label = item_label(item)
        reason = self._scrub(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, httpx.UnsupportedProtocol):
            return ConfigError(f"{label}cannot talk to {self.base_url} ({reason}): check VOXMILL_BASE_URL")
        if isinstance(exc, httpx.TimeoutException):
            error: VoxmillError = TransientError(
                f"{label}request to {self.base_url} timed out ({reason}); raise VOXMILL_TIMEOUT if it keeps "
                f"happening"
            )
        elif isinstance(exc, httpx.TransportError):
            error = TransientError(f"{label}connection to {self.base_url} failed ({reason})")
        else:  # decoding errors and the like: the body was not what it claimed to be
            error = BadResponse(f"{label}unreadable response from {self.base_url} ({reason})")
        return error

    def _preview(self, body: bytes) -> str:
        return self._scrub(body[:_BODY_PREVIEW].decode("utf-8", "replace"))

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret and self._secret in text else text

    # --- streaming ---------------------------------------------------------------------------------

# --- helpers ---------------------------------------------------------------------------------------


#: a file given by path larger than this is streamed from disk rather than read into memory
STREAM_UPLOAD_BYTES = 1 * 2**20


async def _file_part(name: str, value: Any, file_types: tuple[str, ...], item: str | None) -> tuple[str, Any, str]:
    """(filename, bytes or an open binary file, content type) of a file parameter given as a path, bytes or an
    open file; a path to a file over ``STREAM_UPLOAD_BYTES`` comes back open, to stream (the caller closes it)."""
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        detected = detect_format(data)
        extension = FORMATS[detected].extension if detected in FORMATS else None
        if extension not in file_types:
            extension = file_types[0] if file_types else "bin"
        return f"{name}.{extension}", data, _MIME.get(extension, "application/octet-stream")
    if hasattr(value, "read"):
        data = await asyncio.to_thread(value.read)
        filename = Path(str(getattr(value, "name", name))).name
    else:
        path = Path(value)
        try:
            if path.stat().st_size > STREAM_UPLOAD_BYTES:
                handle = await asyncio.to_thread(open, path, "rb")
                return path.name, handle, _MIME.get(path.suffix.lower().lstrip("."), "application/octet-stream")
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise InvalidItem(f"{item_label(item)}cannot read {name} {str(path)!r}: {exc.strerror}") from None
        filename = path.name
    if isinstance(data, str):
        raise InvalidItem(f"{item_label(item)}{name}: the file was opened in text mode; open it with 'rb'")
    extension = Path(filename).suffix.lower().lstrip(".")
    return filename, bytes(data), _MIME.get(extension, "application/octet-stream")


def _request_id(response: httpx.Response) -> str | None:
    headers = response.headers
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


__all__ = ["RetryHook", "VoxmillClient"]
