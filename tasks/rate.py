"""A rate budget shared through a Prefect global concurrency limit: workers on other machines draw from it too.

:class:`PrefectSource` is a :class:`~voxmill.rate.sources.TokenSource` (the core's limiter depends only on
that protocol): the budget of one API key and base URL is the global concurrency limit
``voxmill-rate-<budget id>`` on the configured Prefect API, used as a rate limit (its slots decay at
``slot_decay_per_second``). Tokens are taken in bulk (up to :data:`BULK_TOKENS` per ``rate_limit()`` call:
one call per request reaches only ~5.6/s of 10/s here) and spread locally one interval apart.

The learned rate lives in the limit's ``slot_decay_per_second``: each lease reads it, adopts another worker's
cut (a 429 seen by one worker slows all), and writes this worker's growth or cut back. The adaptive logic is
the core's :class:`~voxmill.rate.control.RateControl`; only a cut is measured differently (one worker sees
only its share of the admitted rate, so a cut is a plain ``BACKOFF`` of the shared rate).

Select it with ``VOXMILL_RATE_SCOPE=prefect`` (or ``RunOptions(rate_scope="prefect")``) when a Prefect API
is configured (``PREFECT_API_URL``); :func:`prefect_source` is the picklable factory the settings carry.
"""

from __future__ import annotations

import logging
import threading
import time

from voxmill.errors import ConfigError
from voxmill.identity import budget_id
from voxmill.rate.concurrency import ConcurrencyControl
from voxmill.rate.control import BACKOFF, RECOVER_TO, RateControl
from voxmill.rate.sources import Lease
from voxmill.settings import RATE_SCOPES, RateScope, Settings

log = logging.getLogger(__name__)

#: tokens taken per ``rate_limit()`` call at most (also the limit's slot count: the burst after an idle spell)
BULK_TOKENS = 10
#: a lease covers about this many seconds of the rate (fewer tokens per call at low rates)
LEASE_SECONDS = 1.0
#: a grant that took longer than this many lease lengths was held back by Prefect, not by the rate
SLOW_GRANT = 2.5
#: the shared rate is rewritten when this worker's rate differs from it by more than this fraction
WRITE_TOLERANCE = 0.01


def limit_name(settings: Settings) -> str:
    """The global concurrency limit of the settings' key and base URL (a fingerprint, never the key)."""
    if settings.api_key is None:
        raise ConfigError("a Prefect-shared rate budget needs an API key (VOXMILL_API_KEY)")
    return f"voxmill-rate-{budget_id(settings.api_key.reveal(), settings.base_url)}"


class PrefectSource:
    """The budget of one key and base URL as a Prefect global concurrency limit (see the module doc).

    ``lease`` blocks (an API call, and a wait for slots): the limiter calls it in a thread (``blocking``).
    """

    blocking = True

    def __init__(self, name: str, control: RateControl) -> None:
        self.name = name
        self.control = control
        #: the in-flight limit is learned per worker (a Prefect limit shares only the rate)
        self.concurrency = ConcurrencyControl()
        self._lock = threading.Lock()  # the control is touched by the loop (feedback) and the lease thread
        #: the shared rate as last read or written; None until the first lease
        self._shared: float | None = None
        self._cut = False
        self._adopted = 0  # cuts by other workers adopted here: bumps the epoch
        self._client = None
        self._grow = True

    def _api(self):  # type: ignore[no-untyped-def]
        if self._client is None:
            from prefect.client.orchestration import get_client

            self._client = get_client(sync_client=True)
            self._client.__enter__()
        return self._client

    def lease(self, ceiling: float | None, burst: int) -> Lease:
        from prefect.concurrency.sync import rate_limit

        rate = min(self._sync(ceiling), 1000.0)
        count = max(1, min(BULK_TOKENS, round(rate * LEASE_SECONDS)))
        asked = time.monotonic()
        rate_limit(self.name, occupy=count, strict=True)
        waited = time.monotonic() - asked
        with self._lock:
            # a grant slower than the workers' share of the rate means Prefect's latency held requests back,
            # not the rate: those waits must not grow it (else it overshoots, then bursts into 429s)
            self._grow = waited <= SLOW_GRANT * count / rate
            first, interval = self.control.take(time.monotonic(), count, ceiling, burst)
            return Lease(first, interval, count, self.epoch)

    def succeeded(self, grew: bool, ceiling: float | None, latency: float | None = None) -> None:
        with self._lock:
            self.control.succeeded(time.monotonic(), 1, 1 if grew and self._grow else 0, ceiling)

    def rate_limited(self, retry_after: float | None, hold_s: float) -> None:
        with self._lock:
            self.control.history.clear()  # this worker's successes are only its share: cut the shared rate
            if self.control.rate_limited(time.monotonic(), retry_after, hold_s):
                self._cut = True

    def in_flight_limit(self, ceiling: int, in_flight: int) -> int:
        return self.concurrency.allowed(ceiling)

    def finished(self, latency: float, in_flight: int, bound: bool, ceiling: int) -> None:
        with self._lock:
            self.concurrency.succeeded(time.monotonic(), latency, in_flight, bound, ceiling)

    def overloaded(self, in_flight: int) -> None:
        with self._lock:
            self.concurrency.overloaded(time.monotonic(), in_flight)

    @property
    def epoch(self) -> int:
        return self.control.epoch + self._adopted

    def rate(self, ceiling: float | None) -> float:
        return self.control.allowed(ceiling)

    def flush(self) -> None:
        if self._shared is None:
            return
        try:
            self._sync(None)
        except Exception as exc:  # the end of a run: the rate is lost for the next one, nothing else
            log.warning("could not write the learned rate to Prefect limit %s: %s", self.name, exc)

    def _sync(self, ceiling: float | None) -> float:
        """Read the shared rate, merge this worker's news into it, write it back when it moved; the rate."""
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
        from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

        api = self._api()
        try:
            shared = api.read_global_concurrency_limit_by_name(self.name).slot_decay_per_second
        except ObjectNotFound:
            shared = None
        if not shared:  # no limit yet (or one that does not decay): this worker's rate starts it
            with self._lock:
                wanted = self._shared = min(self.control.allowed(ceiling), 1000.0)
            try:
                api.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                    name=self.name, limit=BULK_TOKENS, slot_decay_per_second=wanted, active=True))
                log.info("created Prefect rate budget %s at %.3g req/s", self.name, wanted)
            except ObjectAlreadyExists:  # another worker made it first, or it did not decay
                if shared is not None:
                    api.update_global_concurrency_limit(
                        self.name, GlobalConcurrencyLimitUpdate(limit=BULK_TOKENS, slot_decay_per_second=wanted))
            return wanted
        with self._lock:
            control = self.control
            last = self._shared
            if control.fixed:
                wanted = min(control.rate, 1000.0)
            elif self._cut:
                wanted = min(control.rate, shared)  # a cut another worker made meanwhile is not cut again
                self._cut = False
            elif last is not None and shared < last * (1 - WRITE_TOLERANCE):
                # another worker was cut: adopt its rate, and this worker's in-flight 429s belong to that cut
                control.rate = shared
                control.limit_seen = True
                control.recover_to = shared / BACKOFF * RECOVER_TO  # as if cut here: climb back fast to it
                control.last_cut = time.monotonic()
                control.hold_until = control.last_cut + max(2.0 / shared, 0.1)
                control.next_free = min(control.next_free, time.monotonic() + 1.0 / shared)
                self._adopted += 1
                wanted = shared
            else:
                # this worker's growth since the last sync, on top of what the others made of the rate
                wanted = max(shared + (control.rate - (last if last is not None else control.rate)), 0.05)
            control.rate = wanted
            self._shared = wanted
        if abs(wanted - shared) > WRITE_TOLERANCE * shared:
            api.update_global_concurrency_limit(self.name, GlobalConcurrencyLimitUpdate(slot_decay_per_second=wanted))
        return self.control.allowed(ceiling)


def prefect_source(settings: Settings) -> PrefectSource:
    """The Prefect-shared budget of ``settings`` (the factory ``RateLimit.source_factory`` carries; it pickles)."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ConfigError(
            "VOXMILL_RATE_SCOPE=prefect needs a Prefect API server: set PREFECT_API_URL (prefect server start), "
            "or use the default scope (one budget per machine)"
        )
    limit = settings.rate_limit
    ceiling = limit.rate_per_second
    control = RateControl.starting(ceiling) if limit.adaptive else RateControl.fixed_at(ceiling)
    return PrefectSource(limit_name(settings), control)


__all__ = ["BULK_TOKENS", "PrefectSource", "RATE_SCOPES", "RateScope", "limit_name", "prefect_source"]
