"""SIGTERM while the API is unreachable (Prefect cancellation, a Kubernetes eviction): the CLI stops sending and
retrying, gives the requests in flight a bounded grace, records what came back and exits within the grace
plus 5 s; the rerun pays only for what was in flight."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow.compute as pc
import pytest

from tests.tcp_proxy import CuttableProxy
from voxmill.ledger import Ledger

ROWS = 200
CONCURRENCY = 4
GRACE_S = 4


def done_count(out) -> int:
    table = Ledger(out).read(["id", "status"]) if (out / "ledger").exists() or (out / "results.parquet").exists() \
        else None
    return table.filter(pc.equal(table["status"], "done")).num_rows if table is not None and table.num_rows else 0


def cli(manifest, out, base_url, token, prefect_api, *extra):
    env = {**os.environ, "VOXMILL_API_KEY": token, "VOXMILL_BASE_URL": base_url,
           "VOXMILL_CONCURRENCY": str(CONCURRENCY), "PREFECT_API_URL": prefect_api,
           "VOXMILL_STOP_GRACE": str(GRACE_S), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "voxmill.cli", "synthesize", str(manifest), "-o", str(out),
                             "--no-progress", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.rate  # it times the exit against the grace: with the CPU shared four ways it took 9.7 s (bound 9 s)
@pytest.mark.e2e
@pytest.mark.prefect
def test_sigterm_with_the_api_unreachable_exits_within_the_grace(make_server, prefect_api, tmp_path):
    server = make_server(latency_ms=150)
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    proxy = CuttableProxy((host, int(port)))
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows((f"row-{n:03d}", f"Termination check sentence number {n}.") for n in range(ROWS))
    out = tmp_path / "out"

    process = cli(manifest, out, proxy.base_url, server.token, prefect_api)
    deadline = time.monotonic() + 120
    while done_count(out) < 25:
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()[-3000:]
        time.sleep(0.05)
    proxy.cut()  # the API goes away: requests now fail and are retried with backoff
    time.sleep(1.5)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        said, _ = process.communicate(timeout=GRACE_S + 30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"still running {GRACE_S + 30} s after SIGTERM: {process.stdout.read()[-3000:]}") \
            from None
    took = time.monotonic() - signalled
    assert took <= GRACE_S + 5, (took, said[-3000:])
    assert process.returncode in (143, -signal.SIGTERM), (process.returncode, said[-3000:])
    assert "SIGTERM" in said and "rerun" in said and "Traceback" not in said, said[-3000:]
    recorded = done_count(out)
    assert 25 <= recorded < ROWS
    assert f"{recorded} done, 0 failed, {ROWS - recorded} not yet sent, of {ROWS} rows" in said, said

    rerun = cli(manifest, out, server.base_url, server.token, prefect_api)
    said, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, said[-3000:]
    assert done_count(out) == ROWS
    twice = sum(n - 1 for n in Counter(server.stats()["generations"]).values() if n > 1)
    assert twice <= CONCURRENCY, twice
