"""Kill -9 and resume: a flow run in a subprocess is killed at several points and rerun; the server's own
counters prove that every item was generated and none twice except those in flight at a kill."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from voxmill.audio.formats import check_audio_body
from voxmill.ledger import Ledger
from voxmill.server import request_content_hash

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ITEMS = 60
CONCURRENCY = 4


def done_ids(out) -> set[str]:
    table = Ledger(out).read()
    return set(table.filter(pc.equal(table["status"], "done"))["id"].to_pylist()) if table.num_rows else set()


def start_run(manifest, out, server, prefect_api):
    env = {
        **os.environ,
        "VOXMILL_API_KEY": server.token,
        "VOXMILL_BASE_URL": server.base_url,
        "VOXMILL_CONCURRENCY": str(CONCURRENCY),
        "PREFECT_API_URL": prefect_api,
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "voxmill.cli", "synthesize", str(manifest), "-o", str(out), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def wait_until(predicate, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError("the run never reached the kill point")


def test_sigkill_at_several_points_then_resume(make_server, prefect_api, tmp_path):
    server = make_server(latency_ms=120)
    texts = {f"item-{n:03d}": f"Resume check sentence number {n} for the ledger." for n in range(ITEMS)}
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows(texts.items())
    hash_of = {i: request_content_hash({"model": "higgs2p5", "text": t}, {}) for i, t in texts.items()}
    out = tmp_path / "out"

    in_flight_at_kill: list[set[str]] = []
    kill_points = [
        lambda: server.stats()["requests"] >= 1,  # before anything is recorded
        lambda: len(done_ids(out)) >= ITEMS // 3,
        lambda: len(done_ids(out)) >= 2 * ITEMS // 3,
    ]
    for reached in kill_points:
        process = start_run(manifest, out, server, prefect_api)
        assert wait_until(reached, process), process.stdout.read().decode()[-3000:]
        process.send_signal(signal.SIGKILL)
        process.wait()
        server.wait_for(lambda stats: stats["in_flight"] == 0)  # the server finished what the dead client asked
        generated = {h for h, n in server.stats()["generations"].items() if n}
        recorded = done_ids(out)
        in_flight_at_kill.append({i for i, h in hash_of.items() if h in generated and i not in recorded})

    final = start_run(manifest, out, server, prefect_api)
    output = final.communicate(timeout=300)[0].decode()
    assert final.returncode == 0, output[-3000:]

    generations = Counter({h: n for h, n in server.stats()["generations"].items()})
    for item_id, content in hash_of.items():
        assert generations[content] >= 1, f"{item_id} was never generated"
        lost_to_kills = sum(item_id in batch for batch in in_flight_at_kill)
        assert generations[content] <= 1 + lost_to_kills, (
            f"{item_id} generated {generations[content]}× but in flight at only {lost_to_kills} kill(s)"
        )
    paid_twice = sum(n - 1 for n in generations.values())
    print(f"in flight at each kill: {[len(b) for b in in_flight_at_kill]}; generated twice: {paid_twice}")
    assert paid_twice <= sum(len(b) for b in in_flight_at_kill)
    assert all(len(b) <= 2 * CONCURRENCY for b in in_flight_at_kill), in_flight_at_kill

    table = pq.read_table(out / "results.parquet")  # reads cleanly
    assert table.num_rows == ITEMS and set(table["status"].to_pylist()) == {"done"}
    assert sorted(table["id"].to_pylist()) == sorted(texts)
    for row in table.to_pylist():
        check_audio_body((out / row["output_path"]).read_bytes(), "wav")
    assert not list((out / "audio").glob(".*"))  # no temp files left behind
