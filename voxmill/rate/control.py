"""The adaptive rate: what rate to send at, learned from successes and 429s, and the schedule of start times.

:class:`RateControl` is plain data plus pure methods (every method takes ``now``), so one implementation
serves both the in-process budget and the file-shared one (which loads it, updates it under a lock and
stores it back). It knows nothing of asyncio, files or HTTP.

How the rate moves (TCP-like, tuned for an API whose limit is undocumented):

- **Slow start** (no 429 seen yet on this API): the rate doubles every ``SLOW_START_DOUBLING_S`` while
  requests succeed and the rate is what holds them back.
- **On a 429** (at most one cut per episode: 429s of requests already in flight when the rate was cut do
  not cut again): the new rate is ``BACKOFF`` × the rate the API actually admitted over the last moments
  (never below half the current rate per cut, nor below ``MIN_RATE``). Measuring what was admitted, not
  only multiplying the current rate, brings the rate to the API's limit in one or two cuts, even when the
  limit drops a lot mid-run.
- **Bursts are pauses, faults are not signals.** A *burst* is a run of 429s with gaps under ``BURST_GAP_S``.
  While one lasts (up to ``MAX_BURST_S`` at the floor), no cut lands below ``BURST_FLOOR`` × the rate the API admitted
  before it, and once it ends the rate climbs back to where the admitted rate stood before it (not to what
  was admitted during it), so short bursts of 429s do not ratchet the rate down. 429s that go on for longer
  are a new, lower limit: the floor goes and the rate follows the limit down. Answers that are not 429s
  (5xx, resets, cut bodies included) count as admitted: the API took the request, and a fault never
  lowers the rate. A burst that finds the run short of work (using under half its rate: its items waiting
  to retry) measures the rate in force, never refused, as what the API admitted before it: a run with
  nothing to send learns nothing about the API.
- **Congestion avoidance** (after a 429): the rate climbs quickly (``FAST_RECOVERY``) back to just under
  the admitted rate measured before the burst, then back towards the rate that stood before the burst
  (``RETURN_GAIN`` × the gap per second, slowing as it nears it, as TCP CUBIC does), then grows
  ``PROBE_GROWTH`` per second near the limit, and that
  growth doubles for every further ``PROBE_ACCELERATE_S`` without a 429, so a limit raised mid-run is found
  again. The rate thus spends most of its time within a few percent of the limit, with one 429 every few
  seconds at most.
- Admitted requests are recorded at the time they *started* (the caller passes their latency), and the
  measuring window ends one typical latency plus ``LATENCY_SPREAD`` typical deviations ago (later starts are
  only partly answered yet; every request's own latency is :meth:`~RateControl.heard`, in a shared budget too,
  so the deviation is the requests' and not an average's), and in a shared budget no later than every
  reporting process has reported (``reported_until``), so the admitted rate is the rate the API admitted,
  not a part of it.
- After a burst (not a touch of the limit) the rate climbs back from its floor at ≥ ``RETURN_GAIN`` × the
  relative gap per second, and where it stood holds burst after burst while no 429 comes between them.
- In a shared budget (``shared``) a cut does not void the start times other processes have leased: its episode
  lasts until their 429s have come back, and new bookings follow theirs.
- The rate only grows while it is the bottleneck (requests wait for it): a run held back by its
  concurrency or by the work itself never inflates a rate it does not use.
- A user's ``--rps``/``--rpm`` is a ceiling; with nothing learned yet, a run with a ceiling starts at it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import Any

#: requests per second of a first run on an API nothing is known about
INITIAL_RATE = 4.0
#: the rate never goes below this (requests per second)
MIN_RATE = 0.05
#: slow start doubles the rate this often (seconds) while requests succeed
SLOW_START_DOUBLING_S = 0.35
#: after a cut, the rate is this fraction of the rate the API was measured to admit
BACKOFF = 0.9
#: one cut lowers the rate by at most this factor
MAX_CUT = 0.5
#: relative growth per second in congestion avoidance
PROBE_GROWTH = 0.02
#: after a cut, the rate climbs back at this relative growth per second up to RECOVER_TO × the measured limit
FAST_RECOVERY = 0.25
RECOVER_TO = 0.97
#: below the rate that stood before a burst, the rate grows at least this × the relative gap per second
RETURN_GAIN = 0.5
#: the probing growth doubles every this many seconds without a 429
PROBE_ACCELERATE_S = 10.0
#: successes are remembered this long for measuring the admitted rate (seconds)
HISTORY_S = 5.0
#: successes this close together (seconds) are kept as one report
COALESCE_S = 0.05
#: the admitted rate is measured over at least this many of the latest successes …
MEASURE_REQUESTS = 16.0
#: … spanning at least this long (seconds): at hundreds per second 16 successes arrive in bunches
MEASURE_S = 0.25
#: 429s closer together than this (seconds) belong to one burst
BURST_GAP_S = 2.0
#: 429s spanning less than this (seconds) are a touch of the limit, not a burst: climbing back after one, a
#: 429 before the rate is back where it stood means it stood too high
BURST_TOUCH_S = 1.0
#: 429s that go on this long (seconds) with the rate at the burst floor are a new, lower limit: cuts may then
#: go below the floor
MAX_BURST_S = 4.0
#: the rate does not grow until this long (seconds) after the latest 429
BURST_QUIET_S = 0.5
#: during a burst, no cut goes below this fraction of the rate admitted before it
BURST_FLOOR = 0.5
#: weight of a new latency report in the typical latency (and in its typical deviation)
LATENCY_WEIGHT = 0.1
#: the measuring window ends this many typical deviations past the typical latency before now: starts later
#: than that are only partly heard of yet (the quicker answers first), and would read as a lower rate
LATENCY_SPREAD = 2.0
#: a Retry-After up to this long (seconds) is a per-request floor only; a longer one pauses every request
SHORT_RETRY_AFTER_S = 2.0
#: how far the schedule may lag behind now (seconds, at most one interval): a late wake-up is caught up
#: instead of lost, which matters at hundreds of requests per second
SCHEDULE_SLACK_S = 0.01
#: requests that may start back to back after an idle period (GCRA burst tolerance): 1, because an API's
#: own bucket may hold a single token (the local server's does below 10 req/s), and under load the
#: schedule keeps its pace anyway (a late wake-up does not move the next booking)
DEFAULT_BURST = 1


@dataclass
class RateControl:
    """The learned rate of one API budget and its schedule; mutable, serialisable with :meth:`to_dict`."""

    #: requests per second allowed now
    rate: float = INITIAL_RATE
    #: a 429 has been seen on this budget (congestion avoidance instead of slow start)
    limit_seen: bool = False
    #: earliest start of the next token (GCRA)
    next_free: float = 0.0
    #: no token starts before this (a long Retry-After)
    paused_until: float = 0.0
    #: when the rate was last cut, and until when further 429s belong to that cut's episode
    last_cut: float = 0.0
    hold_until: float = 0.0
    #: the rate climbs fast up to this after a cut (just under the limit measured then)
    recover_to: float = 0.0
    #: bumped at every cut or pause: start times booked under an older epoch are booked again
    epoch: int = 0
    #: ``[first time, successes, last time]`` reports of the last HISTORY_S seconds
    history: list[list[float]] = field(default_factory=list)
    #: when this budget was first used (the measuring window never reaches before it)
    born: float | None = None
    cuts: int = 0
    #: a fixed rate (adaptation switched off): 429s never cut it and successes never raise it
    fixed: bool = False
    #: typical latency of admitted requests and its typical deviation (seconds): how far behind now the
    #: measuring window ends
    latency: float = 0.0
    latency_dev: float = 0.0
    #: when the current burst of 429s began and when its latest 429 came (0: none yet)
    burst_started: float = 0.0
    last_429: float = 0.0
    #: the rate the API admitted just before the current burst (its floor and recovery target), and the
    #: rate in force then (the rate climbs back towards it, slowing as it nears it)
    before_burst: float = 0.0
    stood_at: float = 0.0
    #: when a cut of the current burst first reached the floor (0: not yet); 429s for MAX_BURST_S after that
    #: mean a lower limit, not a burst
    floor_since: float = 0.0

    @classmethod
    def starting(cls, ceiling: float | None) -> RateControl:
        """A control nothing is known about yet: at the ceiling when there is one, else in slow start."""
        return cls(rate=ceiling) if ceiling is not None else cls()

    @classmethod
    def fixed_at(cls, rate: float | None) -> RateControl:
        """A rate that never adapts (None: unlimited, only long Retry-After pauses apply)."""
        return cls(rate=rate if rate is not None else math.inf, fixed=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RateControl:
        """The inverse of :meth:`to_dict`; unknown keys are ignored (a newer version wrote them)."""
        known = cls.__dataclass_fields__
        fields = {k: v for k, v in data.items() if k in known}
        # reports written before they kept their last time: [time, successes] → [time, successes, time]
        fields["history"] = [list(entry) if len(entry) >= 3 else [entry[0], entry[1], entry[0]]
                             for entry in fields.get("history", ())]
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return asdict(self)

    # --- the schedule -----------------------------------------------------------------------------

    def allowed(self, ceiling: float | None) -> float:
        """The rate in force: the learned rate under the caller's ceiling."""
        return min(self.rate, ceiling) if ceiling is not None else self.rate

    def take(self, now: float, count: int, ceiling: float | None, burst: int = DEFAULT_BURST) -> tuple[float, float]:
        """Reserve ``count`` consecutive start times: ``(first start, interval)``; starts are
        ``first + i * interval``. The schedule may lag ``burst - 1`` intervals (a burst) plus a wake-up's
        lateness behind ``now``."""
        if self.born is None:
            self.born = now
        interval = 1.0 / self.allowed(ceiling)
        # the schedule may fall behind by a wake-up's lateness (≤ SCHEDULE_SLACK_S) and catch it up
        lag = (burst - 1) * interval + min(interval, SCHEDULE_SLACK_S)
        start = max(self.next_free, now - lag, self.paused_until)
        self.next_free = start + count * interval
        return start, interval

    # --- feedback ---------------------------------------------------------------------------------

    def succeeded(
        self, now: float, count: int = 1, grow: int | None = None, ceiling: float | None = None,
        until: float | None = None, latency: float | None = None,
    ) -> None:
        """``count`` requests were admitted (answered other than 429), started at ``now`` … ``until`` (default
        ``now``); ``latency``: their own latency (it is :meth:`heard`); without it they were answered one typical
        latency after they started (a shared budget hears each latency through :meth:`heard`, and reports
        successes in bunches). ``grow`` of them (default all) had waited for the rate, so the rate grows by them
        (never past ``ceiling``: a rate nobody may use is not learned)."""
        if count <= 0:
            return
        if latency is not None and latency > 0:
            self.heard(latency)
        if self.born is None:
            self.born = now
        last = now if until is None else max(now, until)
        history = self.history
        if history and abs(now - history[-1][0]) < COALESCE_S:
            history[-1][1] += count  # coalesce: the history stays short at any rate
            history[-1][-1] = max(history[-1][-1], last)
        elif not history or now > history[-1][0]:
            history.append([now, float(count), last])
        else:  # another process reported later successes first
            bisect.insort(history, [now, float(count), last])
        while history and history[0][0] < now - HISTORY_S:
            history.pop(0)
        grow = count if grow is None else grow
        rate = self.rate
        if grow <= 0 or self.fixed or (ceiling is not None and rate >= ceiling):
            return
        answered = last + (latency if latency is not None else self.latency)
        if self.last_429 and answered < self.last_429 + BURST_QUIET_S:
            return  # answered while 429s still arrive: a burst cuts the rate for its length
        if not self.limit_seen:
            self.rate = rate * 2.0 ** (grow / (rate * SLOW_START_DOUBLING_S))
        else:
            if rate < self.recover_to:
                growth = FAST_RECOVERY
                if self.stood_at > rate and self.last_429 - self.burst_started >= BURST_TOUCH_S:
                    # after a burst (not a touch): from its floor back to where the rate stood, at least
                    # RETURN_GAIN × the relative gap per second (twice the fast recovery from half-way)
                    growth = max(growth, RETURN_GAIN * (self.stood_at - rate) / rate)
            else:
                quiet = max(0.0, now - self.last_cut - PROBE_ACCELERATE_S)
                growth = PROBE_GROWTH * 2.0 ** min(quiet / PROBE_ACCELERATE_S, 6.0)
                if self.stood_at > rate and self.last_429 - self.burst_started >= BURST_TOUCH_S:
                    # after a burst (not a touch): back towards where the rate stood before it (like CUBIC)
                    growth = max(growth, RETURN_GAIN * (self.stood_at - rate) / rate)
            self.rate = rate + grow * growth  # grow ≈ rate × dt: relative growth `growth` per second
        if ceiling is not None:
            self.rate = min(self.rate, ceiling)

    def heard(self, latency: float) -> None:
        """One admitted request's own latency (seconds): the typical latency and its typical deviation, which
        set where the measuring window ends. Each request's, not an average's: an average hides the spread, and
        the window would then count starts whose slower answers are still on their way."""
        if latency <= 0:
            return
        if self.latency <= 0:
            self.latency = latency
        else:
            self.latency_dev += LATENCY_WEIGHT * (abs(latency - self.latency) - self.latency_dev)
            self.latency += LATENCY_WEIGHT * (latency - self.latency)

    def rate_limited(
        self, now: float, retry_after: float | None, hold_s: float, *, reported_until: float | None = None,
        shared: bool = False,
    ) -> bool:
        """A 429: cut the rate once per episode; a long Retry-After pauses every start. True if cut.

        ``hold_s``: how long 429s of requests already in flight may keep arriving (≈ their latency).
        ``reported_until``: successes answered before this have all been reported (a shared budget: other
        processes report at their next lease); the admitted rate is measured up to it. ``shared``: start times
        already leased to other processes stay in use at the old rate until they run out (they learn of the cut
        at their next lease): the cut's episode lasts until their 429s have come back, and new bookings follow
        theirs instead of overlapping them.
        """
        if retry_after is not None and retry_after > SHORT_RETRY_AFTER_S:
            if now + retry_after > self.paused_until:
                self.paused_until = now + retry_after
                self.epoch += 1
        if self.fixed:
            return False
        new_burst = not self.last_429 or now - self.last_429 > BURST_GAP_S
        # the last burst was one brief touch of the limit (a probe), not a pause the API imposed for a while
        touched = self.last_429 - self.burst_started < BURST_TOUCH_S
        self.last_429 = now
        if new_burst:
            self.burst_started = now
            self.floor_since = 0.0
            self.before_burst = self.admitted_rate(now, reported_until)
            if self.limit_seen and not touched and self.before_burst < BURST_FLOOR * self.rate:
                # a burst, not a touch, found the run using under half its rate, though nothing was refused since the
                # last burst: the run was short of work (its items waiting to retry, say), so it admitted what it
                # had, not what the API allows; the rate in force, never refused, is the measure
                self.before_burst = self.rate
            # where the rate stood; still on its way back from the last burst, where it stood before that one
            if not self.limit_seen:
                # slow start overshoots by at most about one doubling: the API admitted at least half of it
                self.stood_at = max(self.before_burst, 0.5 * self.rate)
            elif not touched:
                # the last 429s were a burst, and none came since: the API admitted the rate up to now, and where
                # it stood before that burst still holds (taking the lower of the two would ratchet it down a
                # little at every burst), also when nothing was admitted lately: a run short of work (its items
                # waiting to retry) learns nothing about the API, and the rate does not grow while it is not used
                self.stood_at = max(self.rate, self.stood_at)
            else:
                self.stood_at = self.rate
        elif self.rate > self.recover_to:
            self.stood_at = min(self.stood_at, self.rate)  # climbed back past the measured level: too far
        if now < self.hold_until:
            return False
        admitted = self.admitted_rate(now, reported_until)
        base = max(min(self.rate, admitted) if admitted > 0 else self.rate, self.rate * MAX_CUT)
        # what stood before the burst: the admitted rate then, or the rate in force when the admitted rate was
        # measured while it still climbed back (one latency late) — but never more than twice what was admitted
        stood = max(self.before_burst, min(self.stood_at, 2.0 * self.before_burst))
        if now - self.burst_started < BURST_TOUCH_S:
            stood = self.before_burst  # so far a touch of the limit: what was admitted is where it stood
        floor = BURST_FLOOR * stood
        if base * BACKOFF <= floor and not self.floor_since:
            self.floor_since = now
        if not self.floor_since or now - self.floor_since <= MAX_BURST_S:
            # a short burst is a pause: the cut stops at a floor, and the rate returns to where it stood
            self.rate = max(MIN_RATE, base * BACKOFF, floor)
            self.recover_to = stood * RECOVER_TO
        else:
            # 429s for longer than a burst: the limit itself is lower now
            self.rate = max(MIN_RATE, base * BACKOFF)
            self.recover_to = base * RECOVER_TO
            self.before_burst = base  # what over-offering measures as admitted is low (a bucket wastes tokens)
            self.stood_at = 0.0
            self.burst_started = now
            self.floor_since = 0.0
        self.limit_seen = True
        self.last_cut = now
        booked = max(now, self.next_free) if shared else now
        self.hold_until = booked + max(hold_s, 2.0 / self.rate, 0.1)
        self.epoch += 1
        self.cuts += 1
        if not shared:
            # booked starts at the old rate are void: the next start is one new interval after now
            self.next_free = min(self.next_free, now + 1.0 / self.rate)
        return True

    def admitted_rate(self, now: float, reported_until: float | None = None) -> float:
        """Successes per second over the latest ≥ MEASURE_REQUESTS successes spanning ≥ MEASURE_S (0 when too
        little is known).

        Sized by a count of successes as well as by time, so the measurement is steady at 2 req/s and at 200
        and still recent at both. A report holds successes from its first to its last start (``[first,
        count, last]``). Admitted requests are recorded at their start and heard of one latency later (the
        quicker ones first), and, in a shared budget, at the reporting process's next lease
        (``reported_until``: every success answered before it has been reported): only starts before that
        horizon less the latency and its spread are complete, so the window ends at the newest of those (or at
        the horizon itself, when successes have stopped: the gap counts) — counting later, partly heard starts
        would read as a lower rate than the API admitted.
        """
        history = self.history
        horizon = now if reported_until is None else min(now, reported_until)
        complete = horizon - self.latency - LATENCY_SPREAD * self.latency_dev
        if history and history[-1][-1] > complete:
            history = [entry for entry in history if entry[-1] <= complete]
        if not history:
            return 0.0
        newest = history[-1][-1]
        end = newest if complete - newest < 1.0 else complete - COALESCE_S
        counted = 0.0
        opened = history[0][-1]
        for entry in reversed(history):
            if counted >= MEASURE_REQUESTS and end - entry[-1] >= MEASURE_S:
                opened = entry[-1]
                break
            counted += entry[1]
        else:
            counted -= history[0][1]  # ran out of history: the oldest report only opens the window
        return counted / (end - opened) if counted > 0 and end > opened else 0.0

__all__ = ["BURST_FLOOR", "DEFAULT_BURST", "INITIAL_RATE", "SCHEDULE_SLACK_S", "RateControl", "SHORT_RETRY_AFTER_S"]
