"""Settings: small value objects with their defaults in one place, read from ``VOXMILL_*`` variables.

| variable | meaning | default |
|---|---|---|
| VOXMILL_API_KEY | Bearer key for the hosted API | none: use the local server |
| VOXMILL_BASE_URL | API base URL | https://api-web.eigenai.com |
| VOXMILL_RPS / VOXMILL_RPM | requests per second / minute: a ceiling for the learned rate | none / none |
| VOXMILL_ADAPTIVE_RATE | learn the API's rate limit (0: a fixed rate, VOXMILL_RPS or unlimited) | 1 |
| VOXMILL_SHARED_RATE | one rate budget per key and base URL for every process on this machine | 1 |
| VOXMILL_CONCURRENCY | requests in flight at once | 4 |
| VOXMILL_MAX_ATTEMPTS | tries per request against faults (5xx, resets, cut bodies), the first included | 6 |
| VOXMILL_RATE_LIMITED_DEADLINE | seconds a request keeps retrying 429s, from its first try | 900 |
| VOXMILL_TIMEOUT | read timeout per request, seconds | 180 |
| VOXMILL_CACHE_DIR | voice_id cache and other reusable state | ~/.cache/voxmill |
| VOXMILL_ASR_MAX_SECONDS | longest audio sent in one ASR request; longer files are split on silence | 600 |
| VOXMILL_RATE_SCOPE | who shares the rate budget: machine (processes here), prefect (a Prefect API) | machine |
| VOXMILL_PRICES | JSON price table for estimates (`voxmill estimate`, `audiobook --list`, dataset plans) | none |

This module is the only reader of these variables; a run's own choices come from
:class:`voxmill.options.RunOptions` on top of them (:func:`voxmill.options.settings_for`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from voxmill.catalog import ASR_MAX_SECONDS
from voxmill.errors import ConfigError
from voxmill.rate.concurrency import DEFAULT_CEILING

if TYPE_CHECKING:
    from voxmill.rate.sources import TokenSource

DEFAULT_BASE_URL = "https://api-web.eigenai.com"

RateScope = Literal["machine", "prefect", "redis"]
#: machine: a file per machine; prefect: a Prefect global concurrency limit; redis: a key in Redis
#: (``voxmill.rate.redis_source``, at VOXMILL_REDIS_URL) — the cross-machine budget that holds the API's rate
RATE_SCOPES: tuple[RateScope, ...] = ("machine", "prefect", "redis")
#: a local server's engines: real (piper/whisper) or null (instant, for plumbing tests)
LocalEngine = Literal["real", "null"]
LOCAL_ENGINES: tuple[LocalEngine, ...] = ("real", "null")
#: where a job's batches run: threads of this process, a process pool, or Dask workers
RunnerKind = Literal["thread", "process", "dask"]
RUNNERS: tuple[RunnerKind, ...] = ("thread", "process", "dask")


class ApiKey:
    """A secret that never prints itself: ``repr``/``str`` show only that it is set.

    Pickling (a process or Dask task runner sends the run's settings to its workers) carries the key's
    *recipe*, never its value: ``reload=(function, args)`` re-reads it where it is unpickled — the
    environment variable it came from (:meth:`from_env`), or the Prefect Secret block (``tasks.settings``).
    A key without a recipe refuses to be pickled. The one key that travels as itself is the token of a
    local server started for one run (:meth:`for_local_server`): it opens nothing but a loopback server
    that dies with that run.
    """

    __slots__ = ("_value", "_reload")

    def __init__(self, value: str, *, reload: tuple[Callable[..., ApiKey], tuple[Any, ...]] | None = None) -> None:
        if not value or not value.strip():
            raise ConfigError("the API key is empty: set VOXMILL_API_KEY to your key")
        self._value = value.strip()
        self._reload = reload

    @classmethod
    def from_env(cls, name: str = "VOXMILL_API_KEY", environ: Mapping[str, str] | None = None) -> ApiKey:
        """The key in environment variable ``name``; pickles as "read ``name`` again"."""
        value = (os.environ if environ is None else environ).get(name, "")
        if not value.strip():
            raise ConfigError(f"{name} is not set in this process: set it where the flow's workers run")
        return cls(value, reload=(ApiKey.from_env, (name,)))

    @classmethod
    def for_local_server(cls, token: str) -> ApiKey:
        """The token of a local server started for one run; the only key that pickles as itself."""
        return cls(token, reload=(ApiKey.for_local_server, (token,)))

    def reveal(self) -> str:
        """The key itself, for the Authorization header only."""
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[Callable[..., ApiKey], tuple[Any, ...]]:
        if self._reload is None:
            raise TypeError(
                "this ApiKey has no recipe to reload it and cannot be pickled; "
                "give workers VOXMILL_API_KEY or a Prefect Secret block (run option api_key_block)"
            )
        return self._reload


@dataclass(frozen=True)
class RateLimit:
    """How fast requests may go: a rate (per second and/or per minute) and a cap on requests in flight.

    ``adaptive``: the rate and the requests in flight are learned from the API's answers, and the given rates
    and ``max_concurrent`` are ceilings (``max_concurrent`` defaults to ``DEFAULT_CEILING``, 1024; the memory
    available may lower it); ``shared``:
    every process on this machine with the same key and base URL draws from one budget (``cache_dir/rate``);
    ``source_factory``: the budget lives elsewhere, built in each process by this picklable function (a
    module-level one, e.g. ``tasks.rate.prefect_source``: a Prefect global concurrency limit). ``scope`` says
    who shares the budget: ``"prefect"`` is realised by the Prefect layer (``tasks.settings``), which sets
    ``source_factory``.
    """

    requests_per_second: float | None = None
    requests_per_minute: float | None = None
    max_concurrent: int = DEFAULT_CEILING
    adaptive: bool = True
    shared: bool = True
    source_factory: Callable[[Settings], TokenSource] | None = None
    scope: RateScope = "machine"

    def __post_init__(self) -> None:
        if self.scope not in RATE_SCOPES:
            raise ConfigError(f"rate scope must be one of {', '.join(RATE_SCOPES)}, got {self.scope!r} "
                              "(VOXMILL_RATE_SCOPE)")
        if self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be ≥ 1, got {self.max_concurrent}")
        for name in ("requests_per_second", "requests_per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 (or unset for no limit), got {value}")

    @property
    def rate_per_second(self) -> float | None:
        """The tighter of the two limits, in requests per second (None: unlimited)."""
        rates = [r for r in (self.requests_per_second, (self.requests_per_minute or 0) / 60 or None) if r]
        return min(rates) if rates else None


@dataclass(frozen=True)
class RetryPolicy:
    """One retry policy for every request: capped exponential backoff with jitter; Retry-After wins.

    Faults (5xx, resets, timeouts, cut bodies) are retried up to ``max_attempts`` tries. A 429 is the API
    pacing us, not a fault of the item: 429s are retried until ``rate_limited_deadline`` seconds after the
    request's first try, and do not count towards ``max_attempts``.
    """

    max_attempts: int = 6
    rate_limited_deadline: float = 900.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    jitter: float = 0.5
    #: a Retry-After longer than this fails the attempt instead of sleeping through it
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be ≥ 1, got {self.max_attempts}")
        if self.rate_limited_deadline < 0:
            raise ConfigError(f"rate_limited_deadline must be ≥ 0 seconds, got {self.rate_limited_deadline}")


@dataclass(frozen=True)
class Timeouts:
    """Per-request timeouts in seconds (TTS of long text and ASR of long audio are slow: read is generous)."""

    connect: float = 10.0
    read: float = 180.0
    write: float = 60.0
    pool: float = 60.0


@dataclass(frozen=True)
class Settings:
    """Everything configurable about talking to the API, with defaults; ``Settings.from_env()`` reads them."""

    api_key: ApiKey | None = None
    base_url: str = DEFAULT_BASE_URL
    rate_limit: RateLimit = field(default_factory=RateLimit)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "voxmill")
    asr_max_seconds: float = ASR_MAX_SECONDS
    #: the JSON price table estimates use (None: costs unknown)
    prices_path: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``VOXMILL_*`` variables; a malformed value is a ConfigError naming the variable."""
        env = os.environ if environ is None else environ
        key = env.get("VOXMILL_API_KEY")
        # defaults come from the value objects themselves: each default is written once
        limit, retry, timeouts, base = RateLimit(), RetryPolicy(), Timeouts(), cls()
        concurrency, attempts = _number(env, "VOXMILL_CONCURRENCY"), _number(env, "VOXMILL_MAX_ATTEMPTS")
        deadline = _number(env, "VOXMILL_RATE_LIMITED_DEADLINE")
        return cls(
            api_key=ApiKey.from_env("VOXMILL_API_KEY", env) if key and key.strip() else None,
            base_url=env.get("VOXMILL_BASE_URL") or base.base_url,
            rate_limit=RateLimit(
                requests_per_second=_number(env, "VOXMILL_RPS"),
                requests_per_minute=_number(env, "VOXMILL_RPM"),
                max_concurrent=int(concurrency) if concurrency else limit.max_concurrent,
                adaptive=_flag(env, "VOXMILL_ADAPTIVE_RATE", limit.adaptive),
                shared=_flag(env, "VOXMILL_SHARED_RATE", limit.shared),
                scope=(env.get("VOXMILL_RATE_SCOPE") or "").strip() or limit.scope,  # type: ignore[arg-type]
            ),
            retry=RetryPolicy(
                max_attempts=int(attempts) if attempts else retry.max_attempts,
                rate_limited_deadline=deadline if deadline is not None else retry.rate_limited_deadline,
            ),
            timeouts=Timeouts(read=_number(env, "VOXMILL_TIMEOUT") or timeouts.read),
            cache_dir=Path(env["VOXMILL_CACHE_DIR"]) if env.get("VOXMILL_CACHE_DIR") else base.cache_dir,
            asr_max_seconds=_number(env, "VOXMILL_ASR_MAX_SECONDS") or base.asr_max_seconds,
            prices_path=Path(env["VOXMILL_PRICES"]) if env.get("VOXMILL_PRICES") else base.prices_path,
        )

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields replaced."""
        return replace(self, **changes)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a switch: use 1 or 0")


def _number(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


__all__ = ["ApiKey", "DEFAULT_BASE_URL", "LOCAL_ENGINES", "LocalEngine", "RATE_SCOPES", "RUNNERS", "RateLimit",
           "RateScope", "RunnerKind", "RetryPolicy", "Settings", "Timeouts"]
