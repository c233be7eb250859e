"""Stopping a run in this process (no Prefect): a stop request with the API unreachable ends the job within the
grace, sends nothing new, leaves unsent items pending; ``voxmill status`` counts against the manifest."""

from __future__ import annotations

import threading
import time

from manifest_files import write_manifest

from tests.tcp_proxy import CuttableProxy
from voxmill.jobs import JobRequest, run_job
from voxmill.ledger import Ledger
from voxmill.report import describe_out_dir
from voxmill.settings import ApiKey, RateLimit, RetryPolicy, Settings
from voxmill.shutdown import request_stop, reset_stop


def test_stop_with_the_api_unreachable_ends_within_the_grace(make_server, tmp_path, monkeypatch):
    monkeypatch.setenv("VOXMILL_STOP_GRACE", "1")
    server = make_server(latency_ms=100)
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    proxy = CuttableProxy((host, int(port)))
    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"i{n}", "text": f"Stop check {n}."} for n in range(60)])
    out = tmp_path / "out"
    settings = Settings(api_key=ApiKey(server.token), base_url=proxy.base_url, rate_limit=RateLimit(max_concurrent=4),
                        retry=RetryPolicy(initial_backoff=0.5, max_backoff=5, max_attempts=50),
                        cache_dir=tmp_path / "cache")
    result = {}
    runner = threading.Thread(target=lambda: result.update(summary=run_job(
        JobRequest("tts", str(manifest), out, batch_size=10, workers=2), settings)))
    runner.start()
    deadline = time.monotonic() + 60
    while server.stats()["generations_total"] < 10:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proxy.cut()  # every request now fails and would be retried 50 times with backoff
    time.sleep(0.5)
    requests_at_stop = server.stats()["requests"]
    stopped_at = time.monotonic()
    try:
        request_stop("stopped by a test")
        runner.join(timeout=10)
        took = time.monotonic() - stopped_at
    finally:
        reset_stop()
    assert not runner.is_alive() and took < 1 + 2, took
    summary = result["summary"]
    assert summary.stopped == "stopped by a test"
    assert server.stats()["requests"] == requests_at_stop  # nothing more reached the server
    done = summary.done
    assert 10 <= done < 60 and summary.failed == 0 and summary.not_attempted > 0
    table = Ledger(out).read()
    assert table.num_rows == done  # unsent items stay pending: no failed row for them
    report = describe_out_dir(out)
    assert f"{done} done, 0 failed, {60 - done} not yet sent, of 60 rows" in report.text
    assert (report.rows, report.not_sent) == (60, 60 - done)
