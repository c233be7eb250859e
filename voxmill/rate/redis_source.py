"""The rate budget of one API key and base URL kept in Redis: every worker on every machine draws from it.

:class:`RedisSource` is :class:`~voxmill.rate.sources.FileSource` with the file and its ``flock`` replaced by a
Redis key and a Redis lock: the same :class:`~voxmill.rate.control.RateControl` (adaptive cut and growth measured
on the admitted rate of all workers), the same bulk leases (~``LEASE_SECONDS`` of the rate per lease), and one
clock for every machine (Redis ``TIME``). A lease costs 4 round trips (lock, read, write, unlock) — well under a
millisecond each on a LAN — so the budget holds at the API's rate where a Prefect global concurrency limit
(one HTTP call and a database write per grant) falls short.

When the store cannot be reached (a lease, a report), the worker does not fail an item: it switches to a
conservative local budget — the shared rate divided by the number of workers seen in the last
:data:`WORKER_WINDOW_S`, adaptive from there — and tries the store again every :data:`RETRY_S`.

Select it with ``VOXMILL_RATE_SCOPE=redis`` and ``VOXMILL_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``);
needs the ``redis`` package (``pip install 'voxmill[redis]'``).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
import uuid
from typing import Any

from voxmill.errors import ConfigError
from voxmill.identity import budget_id
from voxmill.rate.control import RateControl
from voxmill.rate.sources import (
    LEASE_SECONDS,
    MAX_HEARD,
    MAX_LEASE,
    REPORTING_S,
    FileSource,
    Lease,
    LocalSource,
    apply_reports,
    reported_until,
)

log = logging.getLogger(__name__)

#: seconds between tries to reach the store again while on the local fallback
RETRY_S = 2.0
#: workers that leased within this many seconds count towards the fallback's share
WORKER_WINDOW_S = 5.0
#: a Redis call that takes longer than this counts as the store being down
SOCKET_TIMEOUT_S = 0.5
#: the lock's own expiry (a holder that died frees it after this)
LOCK_TIMEOUT_S = 2.0


class RedisSource(FileSource):
    """The budget of one key and base URL in Redis (see the module doc). ``key`` names it (never the API key)."""

    blocking = True  # network round trips: the limiter leases from a thread

    def __init__(self, client: Any, key: str, base_url: str, ceiling: float | None = None) -> None:
        # no file: FileSource's fields, without its __init__
        self.client, self.key, self.base_url = client, key, base_url
        self.path = key  # for FileSource's messages
        self._fd = None
        self._pending: list[list[float]] = []
        self._ceiling = ceiling
        self._epoch = 0
        self._local_epoch = 0
        self._rate = 0.0
        self._worker = uuid.uuid4().hex[:12]
        self._workers = 1
        self._fallback: LocalSource | None = None
        self._retry_at = 0.0
        self._switches = 0
        # FileSource's latency estimate, kept per worker; the in-flight limit is learned per worker too (the store
        # shares the rate): a local source holds it
        self._latency = 0.0
        self._heard: collections.deque[float] = collections.deque(maxlen=MAX_HEARD)
        self._in_flight_here = LocalSource(RateControl.fixed_at(None))
        self._reported_until = 0.0
        self._try(lambda control, now: None)

    # --- the store, or the fallback -------------------------------------------------------------------

    @property
    def on_fallback(self) -> bool:
        """Whether this worker is on its local budget (the store was unreachable)."""
        return self._fallback is not None

    def _try(self, change) -> float | None:  # type: ignore[no-untyped-def]
        """``_update`` against the store; None (and the fallback switched on) when the store is down."""
        if self._fallback is not None:
            if time.monotonic() < self._retry_at:
                return None
        try:
            offset = self._update(change)
        except Exception as exc:  # redis.RedisError, OSError: any failure of the store
            self._go_local(exc)
            return None
        if self._fallback is not None:
            log.warning("rate budget %s is reachable again: back on the shared budget", self.key)
            self._fallback = None
            self._switches += 1
        return offset

    def _go_local(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + RETRY_S
        if self._fallback is not None:
            return
        share = self._rate / max(1, self._workers) if self._rate and self._rate != float("inf") else None
        control = RateControl(rate=share) if share else RateControl()
        self._fallback = LocalSource(control)
        self._switches += 1
        log.warning("rate budget %s unreachable (%s): a local budget of %s req/s until it is back", self.key,
                    exc, f"{share:.3g}" if share else "slow-start")

    def _update(self, change) -> float:  # type: ignore[no-untyped-def]
        """Lock, load, apply buffered reports and ``change(control, now)``, store, unlock (FileSource's
        ``_update`` on Redis); returns the store − monotonic clock offset used."""
        client = self.client
        with client.lock(f"{self.key}:lock", timeout=LOCK_TIMEOUT_S, blocking_timeout=LOCK_TIMEOUT_S):
            seconds, micros = client.time()
            now = seconds + micros / 1e6
            offset = now - time.monotonic()
            read = client.pipeline()
            read.get(self.key)
            # the workers that reported successes lately, and when they last did
            read.zrangebyscore(f"{self.key}:reporting", now - REPORTING_S, "+inf", withscores=True)
            raw, seen = read.execute()
            self._reported_until = reported_until(now, (at for worker, at in seen if worker.decode() != self._worker))
            control = self._parse(raw)
            reporting = bool(self._pending)
            apply_reports(control, self._heard, self._pending, self._ceiling)
            change(control, now)
            body = json.dumps({"base_url": self.base_url, "control": control.to_dict()})
            pipe = client.pipeline()
            pipe.set(self.key, body)
            pipe.zadd(f"{self.key}:workers", {self._worker: now})
            pipe.zremrangebyscore(f"{self.key}:workers", 0, now - WORKER_WINDOW_S)
            pipe.zcard(f"{self.key}:workers")
            if reporting:
                pipe.zadd(f"{self.key}:reporting", {self._worker: now})
                pipe.zremrangebyscore(f"{self.key}:reporting", 0, now - REPORTING_S)
            self._workers = int(pipe.execute()[3])
        self._epoch = control.epoch
        self._rate = control.rate
        return offset

    def _parse(self, raw: bytes | None) -> RateControl:
        if raw:
            try:
                return RateControl.from_dict(json.loads(raw)["control"])
            except (ValueError, KeyError, TypeError):
                log.warning("rate budget %s was unreadable; starting it afresh", self.key)
        return RateControl.starting(self._ceiling)

    # --- TokenSource ----------------------------------------------------------------------------------

    def lease(self, ceiling: float | None, burst: int) -> Lease:
        booked: list[tuple[float, float, int]] = []

        def take(control: RateControl, now: float) -> None:
            count = max(1, min(MAX_LEASE, round(control.allowed(ceiling) * LEASE_SECONDS)))
            booked.append((*control.take(now, count, ceiling, burst), count))

        offset = self._try(take)
        if offset is None:
            local = self._fallback.lease(ceiling, burst)  # type: ignore[union-attr]
            return Lease(local.first, local.interval, local.count, self.epoch)
        first, interval, count = booked[0]
        return Lease(first - offset, interval, count, self.epoch)

    def succeeded(self, grew: bool, ceiling: float | None, latency: float | None = None) -> None:
        if self._fallback is not None:
            self._fallback.succeeded(grew, ceiling, latency)
            return
        # FileSource buffers with wall times: here the store's clock is the one that matters, and a
        # success is ≤ one lease old when it is written, so the local wall clock is close enough
        super().succeeded(grew, ceiling, latency)

    # --- the in-flight limit: this worker's own ---------------------------------------------------------

    def in_flight_limit(self, ceiling: int, in_flight: int) -> int:
        return self._in_flight_here.in_flight_limit(ceiling, in_flight)

    def finished(self, latency: float, in_flight: int, bound: bool, ceiling: int) -> None:
        self._in_flight_here.finished(latency, in_flight, bound, ceiling)

    def overloaded(self, in_flight: int) -> None:
        self._in_flight_here.overloaded(in_flight)

    def rate_limited(self, retry_after: float | None, hold_s: float) -> None:
        if self._fallback is not None:
            self._fallback.rate_limited(retry_after, hold_s)
            return

        def cut(control: RateControl, now: float) -> None:
            control.rate_limited(now, retry_after, hold_s, reported_until=self._reported_until, shared=True)

        if self._try(cut) is None:
            self._fallback.rate_limited(retry_after, hold_s)  # type: ignore[union-attr]
        self._local_epoch += 1

    @property
    def epoch(self) -> int:
        base = self._fallback.epoch if self._fallback is not None else self._epoch + self._local_epoch
        return base + 1_000_000 * self._switches

    def rate(self, ceiling: float | None) -> float:
        if self._fallback is not None:
            return self._fallback.rate(ceiling)
        return super().rate(ceiling)

    def flush(self) -> None:
        if self._pending and self._fallback is None:
            self._try(lambda control, now: None)

    def __del__(self) -> None:
        return None


#: where the store is when VOXMILL_REDIS_URL does not say
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_source(settings: Any) -> RedisSource:
    """The Redis-kept budget of ``settings``' (a :class:`voxmill.settings.Settings`; not imported: settings
    imports this package) key and base URL (the picklable factory ``RateLimit.source_factory``
    carries; each worker process reads ``VOXMILL_REDIS_URL`` from its own environment)."""
    try:
        import redis
    except ImportError:
        raise ConfigError("rate scope 'redis' needs the redis package: pip install 'voxmill[redis]'") from None
    if settings.api_key is None:
        raise ConfigError("a Redis-shared rate budget needs an API key (VOXMILL_API_KEY)")
    url = os.environ.get("VOXMILL_REDIS_URL", "").strip() or DEFAULT_REDIS_URL
    client = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S)
    key = f"voxmill-rate:{budget_id(settings.api_key.reveal(), settings.base_url)}"
    return RedisSource(client, key, settings.base_url, settings.rate_limit.rate_per_second)


__all__ = ["DEFAULT_REDIS_URL", "RETRY_S", "RedisSource", "redis_source"]
