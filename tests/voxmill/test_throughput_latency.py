"""Throughput at real latencies, with no rate or concurrency flags, over real sockets; every count is the
server's own (``/admin/stats``).

- 2 s ± 0.5 s per request, a limit of 20 req/s → the steady rate (the second half of 800 items) reaches ≥ 90 %
  of the limit (Little's law needs ~45 in flight: the in-flight limit is learned), ≤ 5 % of requests answered
  429, no failed item;
- an API capping requests in flight at 8 (answering 429 past them), 2 s per request, no rate limit → the
  server never serves more than 8, ≤ 5 % 429s, ≥ 85 % of 8 ÷ latency, and the learned limit settles at ≤ 8
  (one more while probing);
- the same cap in queue mode (the server holds what it cannot serve) → the latency the client sees stays
  within 1.5 × the unqueued 2 s, at ≥ 85 % of 8 ÷ latency.

The in-flight claims stay at the issue's 2 s: at 1 s (tried, 120 items) the queue test measured a median latency
of 3.0 s (3 × the unqueued 1 s: slow start's overshoot is a larger share of a shorter run) and the 429 test
5 × 429 of 125 (4 %, at its bound), so halving their time would weaken them.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import LocalServer
from manifest_files import write_manifest
from server_rates import StatsSampler

from voxmill.jobs import JobRequest, run_job
from voxmill.ledger import read_run_record
from voxmill.progress import ProgressBoard
from voxmill.settings import ApiKey, Settings

pytestmark = pytest.mark.rate


def no_flags(server: LocalServer, tmp_path: Path) -> Settings:
    """Defaults only (adaptive rate and in-flight limit, shared budget), with the test's own cache directory."""
    return Settings(api_key=ApiKey(server.token), base_url=server.base_url, cache_dir=tmp_path / "cache")


def manifest(path: Path, items: int) -> Path:
    return write_manifest(path, [{"id": f"r{i}", "model": "higgs2p5", "text": f"Line {i} of the latency test."}
                                 for i in range(items)])


def steady(sampler: StatsSampler, total: int, start: float = 0.3, end: float = 0.9) -> tuple[float, float]:
    """(admitted req/s, 429 share) between ``start`` and ``end`` of the items done: past the ramp, before the
    tail."""
    window = [s for s in sampler.samples if start * total <= s.ok <= end * total]
    first, last = window[0], window[-1]
    limited = (last.limited - first.limited) / max(1, last.requests - first.requests)
    return (last.ok - first.ok) / (last.t - first.t), limited


def test_two_second_latency_reaches_the_rate_limit_with_no_flags(make_server, tmp_path):
    server = make_server(latency_ms=2000, jitter_ms=500, rate_limit_rps=20)
    items = 800  # ~45 s: the limit is found within ~10 s; the steady window (the second half of the items, ~20 s at
    # 20 req/s) spans several cut-and-climb cycles. At 600 items (a ~13 s window) one run of four read 16.7 req/s
    board = ProgressBoard()
    with StatsSampler(server) as sampler:
        summary = run_job(JobRequest("tts", str(manifest(tmp_path / "m.csv", items)), tmp_path / "out"),
                          no_flags(server, tmp_path), progress=board)

    assert summary.done == items and summary.failed == 0, summary
    stats = server.stats()
    rate, _ = steady(sampler, items, 0.5, 0.95)
    limited = stats["by_status"].get("429", 0)
    print(f"\n2 s ± 0.5 s, 20 req/s: steady {rate:.2f} req/s, {limited} × 429 of {stats['requests']}, "
          f"server in flight ≤ {stats['in_flight_high']}, learned limit {summary.in_flight_limit}")
    # the throughput issue asks ≥ 0.9 × the limit (before it: 1.8 req/s at 4 in flight). The shared budget once read
    # the admitted rate up to ~16 % low at its 429s (it learned the spread of an average latency, not of each one),
    # and this test read 17.7 in a `make test`; since: 19.38–20.09 req/s in six runs (docs/benchmarks.md)
    assert rate >= 0.9 * 20, rate
    assert limited <= 0.05 * stats["requests"]
    assert stats["generations_total"] == items  # nothing paid twice


def test_an_api_capping_requests_in_flight_with_429s(make_server, tmp_path):
    server = make_server(latency_ms=2000, max_in_flight=8)
    items = 120
    with StatsSampler(server) as sampler:
        summary = run_job(JobRequest("tts", str(manifest(tmp_path / "m.csv", items)), tmp_path / "out"),
                          no_flags(server, tmp_path))

    assert summary.done == items and summary.failed == 0, summary
    stats = server.stats()
    rate, _ = steady(sampler, items)
    limited = stats["by_status"].get("429", 0)
    print(f"\nmax 8 in flight (429): steady {rate:.2f} req/s, {limited} × 429 of {stats['requests']}, "
          f"learned limit {summary.in_flight_limit}")
    assert stats["in_flight_high"] <= 8
    assert limited <= 0.05 * stats["requests"], stats
    assert rate >= 0.85 * 8 / 2.0, rate
    assert summary.in_flight_limit is not None and summary.in_flight_limit <= 9
    # the run record in results.parquet says the same
    record = read_run_record(tmp_path / "out")
    assert record is not None and record["in_flight_limit"] == summary.in_flight_limit
    assert record["in_flight_high"] == summary.in_flight_high >= 8


def test_an_api_queueing_past_its_cap_keeps_latency_within_bounds(make_server, tmp_path):
    server = make_server(latency_ms=2000, max_in_flight=8, overload="queue")
    items = 120
    out = tmp_path / "out"
    with StatsSampler(server) as sampler:
        summary = run_job(JobRequest("tts", str(manifest(tmp_path / "m.csv", items)), out),
                          no_flags(server, tmp_path))

    assert summary.done == items and summary.failed == 0, summary
    rate, _ = steady(sampler, items)
    latencies = pq.read_table(out / "results.parquet", columns=["latency_s"]).column("latency_s").to_pylist()
    later = statistics.median(latencies[len(latencies) // 3:])  # past the slow start's overshoot
    stats = server.stats()
    print(f"\nmax 8 in flight (queue): steady {rate:.2f} req/s, median latency {later:.2f} s, "
          f"queued ≤ {stats['queued_high']}, learned limit {summary.in_flight_limit}")
    assert stats["in_flight_high"] <= 8 and stats["by_status"] == {"200": items}
    assert later <= 1.5 * 2.0, later
    assert rate >= 0.85 * 8 / 2.0, rate
