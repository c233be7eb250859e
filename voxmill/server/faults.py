"""Fault injection for the local server: latency, rate limits, errors, resets, truncated and slow bodies.

Faults apply to generate and upload requests only (HTTP and WebSocket), never to ``/admin``. Every fault is
off by default. The configuration is set at start (CLI flags, :class:`FaultConfig`) and changed at run time
with ``PUT /admin/faults``.

Order of decisions for one request, so a test can reason about which fault it sees:

0. requests in flight (``max_in_flight``): past N generate/upload requests at once, ``overload="429"`` answers
   429 (``Retry-After: 1``, a message saying too many requests are in flight) and ``overload="queue"`` holds the
   request (FIFO) until one finishes, which stretches its latency;
1. rate limit (a token bucket: ``rate_limit_rps`` tokens per second, burst ``rate_limit_burst`` or
   ``max(1, rps × 0.2)``): beyond it the request is answered 429 with an integer ``Retry-After`` and does no work;
2. latency: ``latency_ms`` plus a uniform ``[0, jitter_ms]`` extra, plus the work's own cost (a latency
   profile like the hosted models': ``tts_ms_per_char`` × characters of text, ``asr_ms_per_audio_s`` × seconds
   of uploaded audio), slept before the work is answered;
3. one random draw picks at most one of: reset (``reset_rate``), error (``error_rate``; 500 and 503
   alternate, so a 5xx fraction is exactly split);
4. ``fail_first_n``: the first N requests of each distinct content hash answer 503 (deterministic retries);
5. ``garble_text``: a TTS text holding it has the middle of its first ``garble_first_n`` takes garbled;
6. after the work, a 200 may be truncated (``truncate_rate``) or trickled (``slow_body_rate``), each with its
   own draw; truncation wins when both hit.

``garbage_audio_rate`` is a different kind of fault: the HTTP exchange is perfect, but a TTS body (HTTP only)
holds a valid WAV of clipped full-scale noise instead of speech, as a broken engine would return. It is
billed like any generation; only the receiver's QC can notice it (a dataset build's publish gates).
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from typing import Any, Mapping

import numpy as np

from voxmill.errors import ConfigError

#: garbage audio is at least this many samples (0.5 s at 24 kHz), so duration filters alone cannot catch it
GARBAGE_MIN_FRAMES = 12000
_RATES = ("error_rate", "reset_rate", "truncate_rate", "slow_body_rate", "garbage_audio_rate")
#: what the server does past ``max_in_flight``
OVERLOAD_MODES = ("429", "queue")


@dataclass(frozen=True)
class FaultConfig:
    """Which faults the local server injects; every one is off by default."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    #: requests per second allowed; None or 0: no limit
    rate_limit_rps: float | None = None
    #: token bucket size; None: max(1, rate_limit_rps × 0.2)
    rate_limit_burst: float | None = None
    #: fraction of requests answered 500 or 503 (alternating)
    error_rate: float = 0.0
    #: fraction of requests whose TCP connection is dropped (RST) without any response
    reset_rate: float = 0.0
    #: fraction of 200s whose body is cut in half (Content-Length matches the cut body)
    truncate_rate: float = 0.0
    #: fraction of 200s whose body is trickled over ``slow_body_seconds``
    slow_body_rate: float = 0.0
    slow_body_seconds: float = 2.0
    #: the first N requests of each distinct content hash answer 503
    fail_first_n: int = 0
    #: fraction of TTS 200s (HTTP) whose audio is replaced by clipped white noise of the same length (valid WAV)
    garbage_audio_rate: float = 0.0
    #: TTS texts containing this are garbled in the middle (real engine only) on their first ``garble_first_n``
    #: takes: a QC fault that a whole-chunk check may miss
    garble_text: str = ""
    garble_first_n: int = 1
    #: how: ``reverse`` (the middle half played backwards) or ``voice`` (the take an octave up: a swapped voice)
    garble_mode: str = "reverse"
    #: seed of the fault RNG (None: random)
    seed: int | None = None
    #: generate/upload requests served at once; None or 0: no cap
    max_in_flight: int | None = None
    #: past ``max_in_flight``: "429" answers 429 at once, "queue" holds the request until a slot frees
    overload: str = "429"
    #: latency profile: extra milliseconds per character of TTS text
    tts_ms_per_char: float = 0.0
    #: latency profile: extra milliseconds per second of uploaded ASR audio
    asr_ms_per_audio_s: float = 0.0

    def __post_init__(self) -> None:
        for name in _RATES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"fault {name} must be a fraction in [0, 1], got {value}")
        if self.error_rate + self.reset_rate > 1.0:
            raise ConfigError("fault error_rate + reset_rate must not exceed 1")
        if self.max_in_flight is not None and self.max_in_flight < 0:
            raise ConfigError(f"fault max_in_flight must be ≥ 0 (0: no cap), got {self.max_in_flight}")
        if self.overload not in OVERLOAD_MODES:
            raise ConfigError(f"fault overload must be one of {', '.join(OVERLOAD_MODES)}, got {self.overload!r}")
        for name in ("latency_ms", "jitter_ms", "slow_body_seconds", "tts_ms_per_char", "asr_ms_per_audio_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"fault {name} must be ≥ 0, got {getattr(self, name)}")
        if self.rate_limit_rps is not None and self.rate_limit_rps < 0:
            raise ConfigError(f"fault rate_limit_rps must be ≥ 0, got {self.rate_limit_rps}")
        if self.rate_limit_burst is not None and self.rate_limit_burst < 1:
            raise ConfigError(f"fault rate_limit_burst must be ≥ 1, got {self.rate_limit_burst}")
        if self.fail_first_n < 0:
            raise ConfigError(f"fault fail_first_n must be ≥ 0, got {self.fail_first_n}")

    @property
    def burst(self) -> float:
        """The token bucket's size."""
        if self.rate_limit_burst is not None:
            return self.rate_limit_burst
        return max(1.0, (self.rate_limit_rps or 0.0) * 0.2)

    def updated(self, changes: Mapping[str, Any]) -> FaultConfig:
        """A copy with some fields changed; ConfigError on an unknown key or a value of the wrong type."""
        known = {f.name: f for f in fields(self)}
        coerced: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in known:
                raise ConfigError(f"unknown fault {key!r}; known: {', '.join(known)}")
            coerced[key] = _coerce(key, value)
        return replace(self, **coerced)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return asdict(self)


def _coerce(key: str, value: Any) -> Any:
    if key == "overload":
        if str(value) not in OVERLOAD_MODES:
            raise ConfigError(f"fault 'overload' must be one of {', '.join(OVERLOAD_MODES)}, got {value!r}")
        return str(value)
    if value is None:
        if key in ("rate_limit_rps", "rate_limit_burst", "seed", "max_in_flight"):
            return None
        raise ConfigError(f"fault {key!r} cannot be null")
    if key in ("garble_text", "garble_mode"):
        if key == "garble_mode" and value not in ("reverse", "voice"):
            raise ConfigError(f"fault garble_mode must be 'reverse' or 'voice', got {value!r}")
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"fault {key!r} must be a number, got {value!r}")
    if key in ("fail_first_n", "seed", "garble_first_n", "max_in_flight"):
        if value != int(value):
            raise ConfigError(f"fault {key!r} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


class Fault(Enum):
    """What happens to one request before its work is done."""

    NONE = "none"
    RESET = "reset"
    ERROR_500 = "500"
    ERROR_503 = "503"


@dataclass(frozen=True)
class Admission:
    """The rate limiter's answer: admitted, or refused with a Retry-After in whole seconds."""

    admitted: bool
    retry_after: int = 0


@dataclass(frozen=True)
class BodyFault:
    """What happens to a 200's body: cut in half, or trickled over ``slow_seconds``."""

    truncate: bool = False
    slow_seconds: float = 0.0


class FaultInjector:
    """Decides the faults of each request from a :class:`FaultConfig`; thread-safe, seeded."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._config = config or FaultConfig()
        self._rng = random.Random(self._config.seed)
        self._tokens = self._config.burst
        self._stamp = time.monotonic()
        self._errors = 0
        self._seen: dict[str, int] = {}

    @property
    def config(self) -> FaultConfig:
        """The configuration in force."""
        return self._config

    def configure(self, config: FaultConfig) -> None:
        """Replace the configuration: reseeds, refills the bucket and forgets fail_first_n counts."""
        with self._lock:
            self._config = config
            self._rng = random.Random(config.seed)
            self._tokens = config.burst
            self._stamp = time.monotonic()
            self._errors = 0
            self._seen.clear()

    def reset_state(self) -> None:
        """Forget fail_first_n counts and refill the bucket (``POST /admin/reset``)."""
        self.configure(self._config)

    def admit(self) -> Admission:
        """Take one token from the bucket, or say how long until one is there."""
        with self._lock:
            rps = self._config.rate_limit_rps
            if not rps:
                return Admission(True)
            now = time.monotonic()
            self._tokens = min(self._config.burst, self._tokens + (now - self._stamp) * rps)
            self._stamp = now
            if self._tokens >= 1.0 - 1e-9:
                self._tokens -= 1.0
                return Admission(True)
            return Admission(False, retry_after=max(1, math.ceil((1.0 - self._tokens) / rps)))

    def delay_seconds(self) -> float:
        """The base latency to add to this request (``latency_ms`` plus jitter)."""
        with self._lock:
            config = self._config
            extra = self._rng.uniform(0.0, config.jitter_ms) if config.jitter_ms else 0.0
            return (config.latency_ms + extra) / 1000.0

    def work_seconds(self, *, characters: int = 0, audio_seconds: float = 0.0) -> float:
        """The latency profile's cost of this request's work (TTS characters, ASR audio seconds)."""
        config = self._config
        return (characters * config.tts_ms_per_char + audio_seconds * config.asr_ms_per_audio_s) / 1000.0

    def draw(self) -> Fault:
        """Reset, 500/503 or nothing, by one random draw."""
        with self._lock:
            config = self._config
            if not (config.reset_rate or config.error_rate):
                return Fault.NONE
            roll = self._rng.random()
            if roll < config.reset_rate:
                return Fault.RESET
            if roll < config.reset_rate + config.error_rate:
                self._errors += 1
                return Fault.ERROR_500 if self._errors % 2 else Fault.ERROR_503
            return Fault.NONE

    def fail_first(self, content_hash: str) -> bool:
        """True while this content hash has been seen at most ``fail_first_n`` times."""
        with self._lock:
            if not self._config.fail_first_n:
                return False
            count = self._seen.get(content_hash, 0) + 1
            self._seen[content_hash] = count
            return count <= self._config.fail_first_n

    def garbles(self, text: str) -> bool:
        """True for a text holding ``garble_text`` on its first ``garble_first_n`` takes."""
        with self._lock:
            if not self._config.garble_text or self._config.garble_text not in text:
                return False
            key = "garble\0" + text
            count = self._seen.get(key, 0) + 1
            self._seen[key] = count
            return count <= self._config.garble_first_n

    def body_fault(self) -> BodyFault:
        """Whether this 200's body is truncated or trickled."""
        with self._lock:
            config = self._config
            truncate = bool(config.truncate_rate) and self._rng.random() < config.truncate_rate
            slow = bool(config.slow_body_rate) and self._rng.random() < config.slow_body_rate
            if truncate:
                return BodyFault(truncate=True)
            return BodyFault(slow_seconds=config.slow_body_seconds if slow else 0.0)

    def garbage_audio(self, frames: int) -> np.ndarray | None:
        """Clipped full-scale white noise (int16, ``frames`` long, at least 0.5 s at 24 kHz) when this TTS
        answer is to be garbage, else None."""
        with self._lock:
            rate = self._config.garbage_audio_rate
            if not rate or self._rng.random() >= rate:
                return None
            seed = self._rng.getrandbits(64)
        noise = np.random.default_rng(seed).standard_normal(max(frames, GARBAGE_MIN_FRAMES))
        return np.clip(noise * 32767, -32768, 32767).astype(np.int16)


__all__ = ["GARBAGE_MIN_FRAMES", "OVERLOAD_MODES", "Admission", "BodyFault", "Fault", "FaultConfig", "FaultInjector"]
