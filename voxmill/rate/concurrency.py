"""The adaptive in-flight limit: how many requests to keep in flight, learned from latency and overload signals.

:class:`ConcurrencyControl` is plain data plus pure methods (every method takes ``now``), like
:class:`~voxmill.rate.control.RateControl`, so the in-process budget and the file-shared one run the same code.

Why a limit on requests in flight as well as a rate: by Little's law a run sends ``in flight ÷ latency``
requests per second, so at 2 s per request a fixed 4 in flight caps a run at 2 req/s whatever rate the API
admits; and an API may cap requests in flight rather than (or as well as) the rate. The design follows
Netflix's concurrency-limits (Gradient2: a short-term latency against a long-term baseline, with a
tolerance; growth only while the limit is what holds requests back) and TCP (slow start, then additive
increase; a multiplicative cut on a congestion signal; a remembered threshold, like ``ssthresh``):

- **Growth only while bound.** The limit grows only while requests wait for it (not for the rate, unless
  the limit could not carry that rate: under ``rate × latency`` in flight it is what holds the run back,
  however its starts are spaced; and not when the run has fewer items than slots; the limiter tells which):
  in *slow start* by one per success (doubling every round trip), after the first overload signal by one
  per round trip, or again by one per success while the short-term
  latency is at or under the baseline and no "too many in flight" level is remembered (a latency cut that
  the spread of the work caused, not queueing, costs one round trip, not minutes of additive growth). So it
  follows ``admitted rate × latency`` plus headroom wherever that lies, and never inflates a limit nobody
  uses.
- **Cut when latency rises without throughput.** The short-term latency (an average of the last ~20) is
  compared with a baseline, the unqueued latency. It starts as the plain mean of the first ``INITIAL_LIMIT``
  answers (no latency cut before that), then is a slower average that follows the short-term one down
  quickly, rises freely while the limit is not binding, takes each answer given with no more than
  ``INITIAL_LIMIT`` in flight a round trip after any cut as the reference itself (a latency cut never goes
  under that level), and otherwise only creeps up (over thousands of requests), so a server that queues
  what it cannot serve cannot teach us that its queueing is normal. Past ``TOLERANCE`` × the baseline for a
  round trip (``PERSIST_RTT``: an average of ~20 answers of work that varies in size strays past it for a moment,
  a queue keeps it there; the limit does not grow meanwhile), and
  only while the answers delivered per second did not grow over the last round trip (work of varying size
  comes back shortest first, so early latencies read short and then rise with no queueing at all: what is
  added is then served, and delivery grows with it), the limit is cut by ``TOLERANCE × baseline ÷ latency``
  (at most by half, never below ``INITIAL_LIMIT`` on latency alone), once per round trip.
- **Cut on "too many in flight".** A 429 (or 503) that names concurrency, or a 429 while the limit was what
  bound the run, sets the limit under the requests in flight at that moment (``KNEE_MARGIN`` under, at least
  one: the API counts what it has not yet seen end, such as a connection it has not yet seen closed, so at
  hundreds in flight "just under" is still over), and remembers that level
  (the *knee*): the limit stays below it for ``KNEE_HOLD_S`` (doubling each time the same knee is hit again,
  up to ``MAX_KNEE_HOLD_S``) before one more is tried, so an API that caps requests in flight answers few 429s.
- ``--concurrency`` (``RateLimit.max_concurrent``) is a ceiling, as ``--rps`` is for the rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

#: requests in flight a run starts with (the limit then grows by itself while requests wait for it)
INITIAL_LIMIT = 8.0
#: the limit never goes below this
MIN_LIMIT = 1.0
#: default ceiling of requests in flight (``--concurrency`` / ``VOXMILL_CONCURRENCY`` sets another): high
#: enough for 200 req/s at 2 s per request (Little: 400 in flight) with headroom
DEFAULT_CEILING = 1024
#: the short-term latency may reach this multiple of the baseline before the limit is cut (jitter tolerance)
TOLERANCE = 1.25
#: weight of a new latency sample in the short-term average (≈ the last 20)
SHORT_WEIGHT = 0.05
#: weight of the short-term latency in the baseline while the limit does not bind (≈ the last 20) …
BASELINE_WEIGHT_FREE = 0.05
#: … and while it binds (≈ the last 2,000: queueing we cause must not become the baseline)
BASELINE_WEIGHT_BOUND = 0.0005
#: the short-term latency must stay over the tolerance this share of a round trip (the baseline) before a cut
PERSIST_RTT = 1.0
#: delivered answers per second growing by more than this factor over a round trip means no queueing …
DELIVERY_GROWTH = 1.15
#: … measured over windows of a round trip, at least this long (seconds)
MIN_WINDOW_S = 0.2
#: a "too many in flight" signal cuts the limit to this share of the requests then in flight (at least one under)
KNEE_MARGIN = 0.95
#: after a "too many in flight" signal the limit stays under that level this long (seconds) …
KNEE_HOLD_S = 10.0
#: … doubling each time the same level is hit again, up to this
MAX_KNEE_HOLD_S = 120.0


@dataclass
class ConcurrencyControl:
    """The learned in-flight limit of one API budget; mutable, serialisable with :meth:`to_dict`."""

    #: requests that may be in flight now (fractional: additive growth adds 1/limit per success)
    limit: float = INITIAL_LIMIT
    #: an overload signal (a cut) has been seen: additive growth instead of slow start
    overload_seen: bool = False
    #: requests in flight at the last "too many in flight" signal (0: none), and until when the limit
    #: stays below it
    knee: float = 0.0
    knee_until: float = 0.0
    knee_hold: float = KNEE_HOLD_S
    #: short-term latency (seconds) and its baseline, the unqueued latency; 0: no sample yet
    latency: float = 0.0
    baseline: float = 0.0
    #: answers averaged into the first baseline (up to ``INITIAL_LIMIT``; no latency cut before that)
    calibrated: int = 0
    #: delivered answers per second over the last whole window (about a round trip long) and the one before
    #: it; the current window's start and count
    delivery: float = 0.0
    delivery_before: float = 0.0
    window_start: float = 0.0
    window_count: int = 0
    #: since when the short-term latency has stood over the tolerance while the limit binds (0: it does not)
    above_since: float = 0.0
    #: no further cut before this (one cut per round trip)
    hold_until: float = 0.0
    cuts: int = 0
    #: a fixed limit (adaptation switched off): never grows nor is cut
    fixed: bool = False

    @classmethod
    def starting(cls, ceiling: int) -> ConcurrencyControl:
        """A control nothing is known about yet: ``INITIAL_LIMIT`` (under the ceiling), in slow start."""
        return cls(limit=float(min(ceiling, INITIAL_LIMIT)))

    @classmethod
    def fixed_at(cls, limit: int) -> ConcurrencyControl:
        """A limit that never adapts."""
        return cls(limit=float(limit), fixed=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConcurrencyControl:
        """The inverse of :meth:`to_dict`; unknown keys are ignored."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return asdict(self)

    def allowed(self, ceiling: int) -> int:
        """Requests that may be in flight now: the learned limit (whole) under the caller's ceiling."""
        if self.fixed:
            return max(1, min(ceiling, int(self.limit)))
        return max(1, min(ceiling, math.floor(self.limit + 1e-9)))

    def succeeded(self, now: float, latency: float, in_flight: int, bound: bool, ceiling: int) -> bool:
        """A request went through after ``latency`` seconds, with ``in_flight`` requests in flight;
        ``bound``: requests were waiting for the in-flight limit (not for the rate). True if the limit moved."""
        self._deliver(now)
        if latency > 0:
            self.latency = latency if self.latency <= 0 else self.latency + SHORT_WEIGHT * (latency - self.latency)
            if self.calibrated < INITIAL_LIMIT:
                # the first answers (the first window, sent at the starting limit): their plain mean is the first
                # baseline, not the first answer alone (with work of varying size it may be a short one)
                self.calibrated += 1
                self.baseline += (latency - self.baseline) / self.calibrated
            else:
                self.baseline += self._baseline_step(now, latency, in_flight, bound)
        if self.fixed:
            return False
        before = self.limit
        queueing = bound and self.calibrated >= INITIAL_LIMIT and self.latency > TOLERANCE * self.baseline > 0
        if not queueing:
            self.above_since = 0.0
        elif not self.above_since:
            self.above_since = now
        if queueing and not self._delivery_growing():
            # the server queues what we add: cut, once per round trip, once the latency has stayed up for
            # PERSIST_RTT of a round trip (an average of ~20 answers of work that varies in size strays above the
            # tolerance for a moment; a queue keeps it there)
            persisted = now - self.above_since >= PERSIST_RTT * self.baseline
            if persisted and now >= self.hold_until:
                gradient = max(0.5, TOLERANCE * self.baseline / self.latency)
                # never below the starting limit on latency alone: work of varying size spreads latencies too,
                # and only an answer naming concurrency goes lower
                self.limit = max(min(self.limit, INITIAL_LIMIT), self.limit * gradient)
                self._cut(now, self.latency)
        elif bound:
            # slow start (one more per answer) until the first overload signal, and again while latency is at
            # or under the unqueued baseline (after a cut that was spread, not queueing); else one per round trip
            fast = not self.overload_seen or (self.knee == 0 and self.latency <= self.baseline)
            self.limit += 1.0 if fast else 1.0 / max(self.limit, 1.0)
            if self.knee:
                if now < self.knee_until:
                    self.limit = min(self.limit, max(MIN_LIMIT, self.knee - 1.0))
                elif in_flight >= self.knee:
                    self.knee = 0.0  # above the old knee without a signal: the API admits more now
                    self.knee_hold = KNEE_HOLD_S
        self.limit = min(self.limit, float(ceiling))
        return self.limit != before

    def _baseline_step(self, now: float, latency: float, in_flight: int, bound: bool) -> float:
        """How far the baseline moves on this answer. An average, not a minimum: with work of varying size
        (latency ∝ text length) a minimum would sit in the short tail and every long item would look like
        queueing. It follows the short-term latency freely down and while the limit does not bind; an answer
        given with no more than ``INITIAL_LIMIT`` in flight, a round trip after any cut, is the reference
        itself (a latency cut never goes under that level); otherwise it creeps, so that queueing we cause
        does not become the baseline."""
        if self.latency < self.baseline or not bound:
            return BASELINE_WEIGHT_FREE * (self.latency - self.baseline)
        if in_flight <= INITIAL_LIMIT and now >= self.hold_until:
            return BASELINE_WEIGHT_FREE * (latency - self.baseline)
        return BASELINE_WEIGHT_BOUND * (self.latency - self.baseline)

    def _deliver(self, now: float) -> None:
        """Count one answer into the delivery windows (each about a round trip, at least 0.2 s)."""
        if self.window_start <= 0:
            self.window_start = now
        self.window_count += 1
        elapsed = now - self.window_start
        if elapsed >= max(MIN_WINDOW_S, self.baseline):
            self.delivery_before, self.delivery = self.delivery, self.window_count / elapsed
            self.window_start, self.window_count = now, 0

    def _delivery_growing(self) -> bool:
        """Answers per second grew by more than ``DELIVERY_GROWTH`` over the last round trip: whatever latency
        does, what we add is being served, not queued."""
        return self.delivery_before > 0 and self.delivery > DELIVERY_GROWTH * self.delivery_before

    def overloaded(self, now: float, in_flight: int) -> bool:
        """A 429/503 saying too many requests are in flight (``in_flight`` counting the refused one): the limit
        goes under that level (``KNEE_MARGIN``) and stays there a while. True if cut (one cut per round trip)."""
        if self.fixed or now < self.hold_until:
            return False
        level = float(max(in_flight, 1))
        if self.knee and abs(level - self.knee) <= 1.0 and now >= self.knee_until:
            self.knee_hold = min(MAX_KNEE_HOLD_S, self.knee_hold * 2.0)  # the same knee again: wait longer
        elif not self.knee or level < self.knee - 1.0:
            self.knee_hold = KNEE_HOLD_S
        self.knee = level
        self.knee_until = now + self.knee_hold
        self.limit = max(MIN_LIMIT, min(self.limit, level - 1.0, KNEE_MARGIN * level))
        self._cut(now, self.latency)
        return True

    def _cut(self, now: float, latency: float) -> None:
        self.overload_seen = True
        self.hold_until = now + max(0.2, latency)
        self.cuts += 1


__all__ = ["DEFAULT_CEILING", "INITIAL_LIMIT", "ConcurrencyControl"]
