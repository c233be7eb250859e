"""The rate budget kept in Redis (``rate_scope="redis"``), over real sockets and a real ``redis-server``.

Three OS processes with the same key and separate cache directories (no file budget in common) draw from one
Redis key: against a server limited at 20 req/s with no rate given they are admitted ≥ 18 req/s together with
≤ 5 % 429s. Stopping the store mid-run fails no item: each worker falls back to a local share of the budget.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from manifest_files import write_manifest
from server_rates import StatsSampler

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (make system-deps)")

JOB_SCRIPT = """
import json, sys
from pathlib import Path
from tasks.settings import resolve_settings
from voxmill.jobs import JobRequest, run_job
from voxmill.options import RunOptions
settings = resolve_settings(RunOptions(rate_scope="redis"))
summary = run_job(JobRequest("tts", sys.argv[1], Path(sys.argv[2]), workers=2), settings)
print(json.dumps({"done": summary.done, "failed": summary.failed, "api_rate": summary.api_rate}))
"""



class RedisServer:
    """A throwaway ``redis-server`` on a loopback port (no persistence)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def _jobs(server, redis_url: str, tmp_path: Path, names: str, items: int) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DO_NOT_TRACK": "1", "VOXMILL_API_KEY": server.token,
           "VOXMILL_BASE_URL": server.base_url, "VOXMILL_CONCURRENCY": "8", "VOXMILL_MAX_ATTEMPTS": "8",
           "VOXMILL_REDIS_URL": redis_url}
    processes = []
    for name in names:
        rows = [{"id": f"{name}{i}", "model": "higgs2p5", "text": f"Line {i} of the {name} Redis rate test."}
                for i in range(items)]
        processes.append(subprocess.Popen(
            [sys.executable, "-c", JOB_SCRIPT, str(write_manifest(tmp_path / f"{name}.csv", rows)),
             str(tmp_path / f"out-{name}")],
            env={**env, "VOXMILL_CACHE_DIR": str(tmp_path / f"cache-{name}")},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes


def _finished(processes: list[subprocess.Popen], items: int) -> list[dict]:
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr[-2000:]
        result = json.loads(stdout.strip().splitlines()[-1])
        assert (result["done"], result["failed"]) == (items, 0), result
        results.append(result)
    return results


@pytest.mark.rate
@pytest.mark.e2e
def test_three_workers_share_one_redis_budget_at_the_apis_rate(make_server, redis_server, tmp_path):
    server = make_server(rate_limit_rps=20)
    items = 150
    with StatsSampler(server) as sampler:
        _finished(_jobs(server, redis_server.url, tmp_path, "abc", items), items)
    final = sampler.samples[-1]
    assert final.ok == 3 * items
    offered, admitted = sampler.busy_rates(3 * items)
    # past slow start (the first seconds double from 4 req/s): the steady share of the budget
    start = sampler.at(next(s.t for s in sampler.samples if s.ok > 0) + 3.0)
    end = sampler.last_busy(3 * items)
    steady = (end.ok - start.ok) / (end.t - start.t)
    print(f"\nthree processes, one Redis budget, server at 20 req/s: {admitted:.2f} req/s admitted over the run, "
          f"{steady:.2f} after slow start ({offered:.2f} offered); {final.limited} × 429 of {final.requests}")
    assert steady >= 18.0, f"{steady:.2f} req/s combined against 20 req/s"
    # the scale-out issue's ≤ 5 % 429s
    assert final.limited <= 0.05 * final.requests, final


@pytest.mark.rate
@pytest.mark.e2e
def test_stopping_the_store_mid_run_fails_no_item(make_server, redis_server, tmp_path):
    server = make_server(rate_limit_rps=20)
    items = 120
    with StatsSampler(server, action=(4.0, redis_server.stop)) as sampler:
        _finished(_jobs(server, redis_server.url, tmp_path, "ab", items), items)
    final = sampler.samples[-1]
    assert sampler.action_at is not None and redis_server.process.poll() is not None, "the store was stopped"
    after = [s for s in sampler.samples if s.t > sampler.action_at]
    assert after and after[-1].ok - after[0].ok > 20, "work went on after the store stopped"
    assert final.ok == 2 * items
    print(f"\nstore stopped at {sampler.action_at:.1f} s: {final.ok} done, {final.limited} × 429 of {final.requests}")
    assert final.limited <= 0.15 * final.requests, final
