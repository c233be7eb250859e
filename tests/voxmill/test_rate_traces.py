"""The adaptive rate (:class:`voxmill.rate.control.RateControl`) over simulated traces with an injected clock:
a token-bucket API at seconds per request, with short 429 bursts, faults, a limit that drops and one that rises.

The client always has work waiting (every start waited for the rate); each admitted request is reported one
latency after it started (stamped with its start, as the sources do), faults included, and each 429 at once.
"""

from __future__ import annotations

import collections
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from voxmill.rate.control import RateControl
from voxmill.rate.sources import apply_reports


@dataclass
class Trace:
    """What the simulated API saw: (time, admitted?) per request, and the allowed rate over time."""

    requests: list[tuple[float, bool]] = field(default_factory=list)
    rates: list[tuple[float, float]] = field(default_factory=list)

    def admitted_rate(self, start: float, end: float) -> float:
        return sum(1 for t, ok in self.requests if start <= t < end and ok) / (end - start)

    def offered_rate(self, start: float, end: float) -> float:
        return sum(1 for t, _ in self.requests if start <= t < end) / (end - start)

    def limited_share(self, start: float = 0.0, end: float = 1e9) -> float:
        window = [ok for t, ok in self.requests if start <= t < end]
        return window.count(False) / max(1, len(window))

    def rate_at(self, t: float) -> float:
        return next(rate for at, rate in reversed(self.rates) if at <= t)


def simulate(control: RateControl, seconds: float, limit: Callable[[float], float], *, latency: float = 2.0,
             jitter: float = 0.5, faults: float = 0.0, seed: int = 7,
             client_max: float | Callable[[float], float] | None = None) -> Trace:
    """Run the control against a token bucket admitting ``limit(t)`` req/s (burst ``max(1, 0.2 × rps)``).

    ``client_max``: the client itself starts no more than this many requests per second (its CPU, its requests
    in flight, the work it has: a number, or one per moment); a start the rate did not hold back does not grow the
    rate (the limiter's ``_paced``)."""
    rng = random.Random(seed)
    client_free, paced = 0.0, 1.0
    trace = Trace()
    replies: list[tuple[float, float, float, bool, bool]] = []  # (answered at, started at, latency, fault, waited)
    tokens, stamp = 1.0, 0.0
    now, next_start, step = 0.0, 0.0, 0.005
    in_flight = 0
    while now < seconds:
        while replies and replies[0][0] <= now:
            _, started, took, fault, grew = heapq.heappop(replies)
            in_flight -= 1
            # a fault is the API's answer all the same: admitted, and no growth (the limiter's ``admitted``)
            control.succeeded(started, 1, 0 if fault or not grew else 1, latency=took)
        while next_start <= now and client_free <= now:
            start = max(next_start, control.paused_until)
            if start > now:
                break
            if client_max is not None:
                client_free = now + 1.0 / (client_max(now) if callable(client_max) else client_max)
                paced = 0.8 * paced + (0.2 if start >= now - step else 0.0)
            rps = limit(now)
            burst = max(1.0, 0.2 * rps)
            tokens = min(burst, tokens + (now - stamp) * rps)
            stamp = now
            if tokens >= 1.0:
                tokens -= 1.0
                took = latency + rng.uniform(0.0, jitter)
                heapq.heappush(replies, (now + took, now, took, rng.random() < faults, paced > 0.5))
                in_flight += 1
                trace.requests.append((now, True))
            else:
                trace.requests.append((now, False))
                rate = control.allowed(None)
                control.rate_limited(now, 1.0, 1.5 * in_flight / rate)
            next_start = start + 1.0 / control.allowed(None)
        trace.rates.append((now, control.allowed(None)))
        now += step
    return trace


def test_a_steady_limit_at_two_seconds_per_request_is_used_to_90_percent():
    control = RateControl()
    trace = simulate(control, 90.0, lambda t: 20.0)
    assert trace.admitted_rate(30.0, 90.0) >= 0.9 * 20
    assert trace.limited_share(30.0, 90.0) <= 0.05


def test_short_429_bursts_pause_the_rate_without_ratcheting_it_down():
    # 20 req/s, except 2 req/s for 3 s out of every 8 (from t = 30 s): the chaos suite's bursts
    def limit(t: float) -> float:
        return 2.0 if t >= 30.0 and (t - 30.0) % 8.0 < 3.0 else 20.0

    control = RateControl()
    trace = simulate(control, 150.0, limit)
    before = trace.admitted_rate(20.0, 30.0)
    assert before >= 0.85 * 20
    # between bursts the rate returns to where it stood: at the end of each gap, never below half of before
    gaps_end = [30.0 + 8.0 * k + 7.9 for k in range(14)]
    assert min(trace.rate_at(t) for t in gaps_end) >= 0.5 * before
    # and it holds there burst after burst (no ratchet): the last gaps end where the early ones did
    assert trace.rate_at(gaps_end[-1]) >= 0.7 * before
    assert min(trace.rate_at(t) for t in gaps_end[-4:]) >= 0.9 * min(trace.rate_at(t) for t in gaps_end[2:5])
    # the bursts are followed (the API's 2 req/s is not flooded for their whole length)
    assert trace.limited_share(30.0, 150.0) <= 0.35


def test_bursts_on_an_api_with_no_standing_limit_leave_the_rate_where_it_stood():
    # the chaos suite's regime: no limit but 2 req/s for 3 s out of every 8 (from t = 5 s), answers in 50–90 ms with
    # 30 % faults, and a client that cannot start more than 80 req/s itself: outside the bursts the rate is not
    # what holds it back. Measured: 66.5 req/s before the first burst, then 50–52 in every gap (0.76 ×); before the
    # rate held where it stood it fell ~2 % per burst (gaps 46.6 → 37.0, 0.56 ×, rate at their ends 65 → 49)
    def limit(t: float) -> float:
        return 2.0 if t >= 5.0 and (t - 5.0) % 8.0 < 3.0 else 1000.0

    control = RateControl()
    trace = simulate(control, 125.0, limit, latency=0.05, jitter=0.04, faults=0.3, client_max=80.0)
    before = trace.admitted_rate(3.0, 5.0)
    gaps = [trace.admitted_rate(5.0 + 8.0 * k + 3.0, 5.0 + 8.0 * k + 8.0) for k in range(15)]
    gap_ends = [trace.rate_at(5.0 + 8.0 * k + 7.9) for k in range(15)]
    assert before >= 0.75 * 80
    assert min(gaps) >= 0.6 * before  # the target: ≥ 50 % of the rate admitted before the first burst
    assert min(gap_ends[-3:]) >= 0.97 * max(gap_ends[:3])  # no ratchet, burst after burst


def test_a_burst_that_finds_the_client_short_of_work_does_not_reset_where_the_rate_stood():
    # the chaos run's regime, where a run's batches wait on items backing off after faults: some bursts find the
    # client starting ~1 req/s. Before, such a burst measured that as what the API admitted before it: its floor
    # and its 429s cut where the rate stood down to ~3 req/s, for good (gaps 2.4–3.4 req/s against 66.5 before the
    # first burst here; in the chaos bench the rate fell from ~70 to ~21 req/s after one such burst). Now the rate
    # in force, never refused, is the measure when the run used under half of it: gaps 49.8–51.4 req/s
    def limit(t: float) -> float:
        return 2.0 if t >= 5.0 and (t - 5.0) % 8.0 < 3.0 else 1000.0

    def client(t: float) -> float:  # short of work for the 4 s before the 3rd and the 4th burst
        return 1.0 if 17.0 <= t < 21.0 or 25.0 <= t < 29.0 else 80.0

    control = RateControl()
    trace = simulate(control, 90.0, limit, latency=0.05, jitter=0.04, faults=0.3, client_max=client)
    before = trace.admitted_rate(3.0, 5.0)
    later_gaps = [trace.admitted_rate(5.0 + 8.0 * k + 3.0, 5.0 + 8.0 * k + 8.0) for k in range(4, 10)]
    assert before >= 0.75 * 80
    assert control.stood_at >= 0.75 * before
    assert min(later_gaps) >= 0.6 * before


def test_faults_never_lower_the_rate():
    control = RateControl()
    faulty = simulate(control, 90.0, lambda t: 20.0, faults=0.3)
    assert faulty.admitted_rate(30.0, 90.0) >= 0.9 * 20
    assert control.allowed(None) >= 0.85 * 20


def test_a_limit_that_drops_is_followed_within_10_s():
    control = RateControl()
    trace = simulate(control, 60.0, lambda t: 20.0 if t < 30.0 else 5.0)
    assert trace.admitted_rate(20.0, 30.0) >= 0.85 * 20
    assert trace.offered_rate(40.0, 44.0) <= 5.5 * 1.1  # offered: admitted plus the 429s
    assert max(rate for at, rate in trace.rates if 40.0 <= at <= 60.0) <= 5.0 * 1.3
    # using most of it: a bucket of one token at 5 req/s wastes some under any jitter (the local server's too)
    assert trace.admitted_rate(40.0, 60.0) >= 0.6 * 5


def test_a_limit_that_rises_is_found_again():
    control = RateControl()
    trace = simulate(control, 90.0, lambda t: 10.0 if t < 30.0 else 20.0)
    assert trace.admitted_rate(20.0, 30.0) >= 0.85 * 10
    assert trace.admitted_rate(60.0, 90.0) >= 0.85 * 20


# --- measuring what the API admitted -----------------------------------------------------------------------


def test_the_admitted_rate_is_measured_over_starts_already_heard_of_in_full():
    # 20 req/s, 2 s + up to 0.5 s per request: at any moment the latest ~0.5 s of starts are only partly answered
    # (the quicker first); measuring up to the newest start heard of read them as a lower rate (0.85–0.9 × here)
    rng = random.Random(3)
    control = RateControl()
    answers = sorted((t / 20 + 2.0 + rng.uniform(0.0, 0.5), t / 20) for t in range(400))
    now = 15.0
    for answered, started in answers:
        if answered <= now:
            control.succeeded(started, 1, latency=answered - started)
    assert control.admitted_rate(now) == pytest.approx(20.0, rel=0.05)


def test_a_shared_budget_measures_up_to_what_every_process_has_reported():
    # three processes at 6 req/s each (18 together, answers in ~5 ms) report their successes at their next lease,
    # one every 0.6 s, staggered: at the 429 the other two have up to 0.6 s of successes not yet written
    control = RateControl()
    reported = {p: 0.0 for p in range(3)}
    now = 0.0
    while now < 10.0:
        now = round(now + 0.2, 6)
        process = round(now / 0.2) % 3
        starts = [s / 18 for s in range(int(reported[process] * 18), int(now * 18)) if s % 3 == process]
        for started in starts:
            control.succeeded(started, 1, latency=0.005)
        reported[process] = now
    others = min(at for p, at in reported.items() if p != process)
    assert control.admitted_rate(now, reported_until=others) == pytest.approx(18.0, rel=0.05)
    assert control.admitted_rate(now) < 0.92 * 18.0  # what the newest report alone made of it
    # so the cut lands at BACKOFF × the admitted rate, and the rate climbs back fast to just under it
    control.rate = 19.0
    control.limit_seen = True
    assert control.rate_limited(now, 1.0, 0.0, reported_until=others, shared=True)
    assert control.rate == pytest.approx(0.9 * 18.0, rel=0.06)
    assert control.recover_to >= 0.9 * 18.0


def test_a_cut_in_a_shared_budget_lasts_until_the_starts_leased_to_others_have_come_back():
    control = RateControl(rate=20.0, limit_seen=True)
    first, interval = control.take(10.0, 12, None)  # three processes' leases: 0.6 s of starts booked ahead
    booked = first + 12 * interval
    assert control.rate_limited(10.05, 1.0, 0.0, shared=True)
    assert control.next_free == booked  # new starts follow the leased ones instead of overlapping them
    # the leased starts still go out at the old rate: their 429s belong to the same cut
    assert not control.rate_limited(booked - 0.01, 1.0, 0.0, shared=True)
    assert control.cuts == 1
    # one process alone voids its own booking instead: the next start is one new interval after the cut
    alone = RateControl(rate=20.0, limit_seen=True)
    alone.take(10.0, 12, None)
    alone.rate_limited(10.05, 1.0, 0.0)
    assert alone.next_free == pytest.approx(10.05 + 1.0 / alone.rate)


def test_a_shared_budget_learns_the_spread_of_each_latency_not_of_an_average():
    # a shared budget hears its processes' successes in bunches, at their next lease: each latency is handed over
    # (apply_reports), so the measuring window ends past the slow answers. Handing over one smoothed latency per
    # bunch (as before) hid the spread (a deviation of 0.01–0.03 s where the true one is 0.125 s), and the admitted
    # rate read low at some moments (here 16.8 of 20 req/s at worst, 19.4 on average): a 429 at such a moment cut
    # the rate, and set the level it climbed back to, that much too low
    rng = random.Random(3)
    answers = sorted((t / 20 + 2.0 + rng.uniform(0.0, 0.5), t / 20) for t in range(400))
    each, smoothed = [], []
    for moment in range(30):
        now = 10.0 + 0.1 * moment
        heard = [(answered - started, started) for answered, started in answers if answered <= now]
        control = RateControl()
        apply_reports(control, collections.deque(latency for latency, _ in heard),
                      [[started, 1, 0, started] for _, started in heard], None)
        each.append(control.admitted_rate(now))
        average = sum(latency for latency, _ in heard) / len(heard)
        old = RateControl()
        for _, started in heard:
            old.succeeded(started, 1, 0, latency=average)
        smoothed.append(old.admitted_rate(now))
    assert control.latency_dev == pytest.approx(0.125, rel=0.3)
    assert min(each) >= 0.98 * 20.0 and max(each) <= 1.02 * 20.0
    assert min(smoothed) < 0.9 * 20.0  # what the budget made of it before
