"""The rate budget shared through a Prefect global concurrency limit (``tasks.rate``), over real sockets.

Two OS processes with the same key but separate cache directories (so no file budget is shared between them)
draw from the one limit on the session's Prefect API: against a server limited at 10 req/s they offer
≤ 10.5 req/s together, and the rate they learned is the limit's ``slot_decay_per_second``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from manifest_files import write_manifest
from server_rates import StatsSampler

from tasks.rate import BULK_TOKENS, limit_name, prefect_source
from tasks.settings import resolve_settings
from voxmill.errors import ConfigError
from voxmill.options import DEFAULT_OPTIONS
from voxmill.settings import ApiKey, Settings

ROOT = Path(__file__).resolve().parents[2]

JOB_SCRIPT = """
import json, sys
from pathlib import Path
from tasks.settings import resolve_settings
from voxmill.jobs import JobRequest, run_job
from voxmill.options import RunOptions
summary = run_job(JobRequest("tts", sys.argv[1], Path(sys.argv[2])), resolve_settings(RunOptions(rate_scope="prefect")))
print(json.dumps({"done": summary.done, "failed": summary.failed, "api_rate": summary.api_rate}))
"""


def test_the_scope_is_chosen_by_setting_and_needs_a_prefect_api(monkeypatch):
    monkeypatch.setenv("VOXMILL_API_KEY", "sk-test-key")
    assert resolve_settings(DEFAULT_OPTIONS).rate_limit.source_factory is None
    monkeypatch.setenv("VOXMILL_RATE_SCOPE", "prefect")
    settings = resolve_settings(DEFAULT_OPTIONS)
    assert settings.rate_limit.source_factory is prefect_source
    assert "sk-test-key" not in limit_name(settings)
    monkeypatch.setenv("VOXMILL_RATE_SCOPE", "galaxy")
    with pytest.raises(ConfigError, match="VOXMILL_RATE_SCOPE"):
        resolve_settings(DEFAULT_OPTIONS)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: None}), pytest.raises(ConfigError, match="PREFECT_API_URL"):
        prefect_source(Settings(api_key=ApiKey("sk-test-key"), base_url="http://127.0.0.1:9"))


@pytest.mark.slow
@pytest.mark.rate
def test_two_processes_share_one_prefect_limit(make_server, prefect_api, tmp_path):
    from prefect.client.orchestration import get_client

    server = make_server(rate_limit_rps=10)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": prefect_api, "DO_NOT_TRACK": "1",
           "VOXMILL_API_KEY": server.token, "VOXMILL_BASE_URL": server.base_url,
           "VOXMILL_CONCURRENCY": "8", "VOXMILL_MAX_ATTEMPTS": "8"}
    items = 80
    with StatsSampler(server) as sampler:
        processes = []
        for name in ("a", "b"):
            rows = [{"id": f"{name}{i}", "model": "higgs2p5", "text": f"Line {i} of the {name} Prefect rate test."}
                    for i in range(items)]
            processes.append(subprocess.Popen(
                [sys.executable, "-c", JOB_SCRIPT, str(write_manifest(tmp_path / f"{name}.csv", rows)),
                 str(tmp_path / f"out-{name}")],
                env={**env, "VOXMILL_CACHE_DIR": str(tmp_path / f"cache-{name}")},  # no file budget in common
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        outputs = [p.communicate(timeout=150) for p in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-2000:]
        result = json.loads(stdout.strip().splitlines()[-1])
        assert result == {**result, "done": items, "failed": 0}

    final = sampler.samples[-1]
    assert final.ok == 2 * items
    offered, admitted = sampler.busy_rates(2 * items)
    settings = Settings(api_key=ApiKey(server.token), base_url=server.base_url)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(limit_name(settings))
    print(f"\ntwo processes, one Prefect limit, 10 req/s: {offered:.2f} req/s offered, {admitted:.2f} admitted, "
          f"{final.limited} × 429 of {final.requests}; limit decays at {limit.slot_decay_per_second:.2f}/s")
    assert offered <= 10.5, f"{offered:.2f} requests/s offered against 10 req/s"
    # measured 8 % here (a worker's cut cannot measure the admitted rate, only its own share of it: it cuts the
    # shared rate by a fixed factor): a bound against regressions, not yet the machine-wide budget's 5 %
    assert final.limited <= 0.15 * final.requests, final
    assert admitted >= 3.0  # the budget is used (bulk acquisitions from the test's SQLite server are slow)
    # the learned rate is the limit's decay; the slots are the bulk size
    assert limit.limit == BULK_TOKENS and 3.0 <= limit.slot_decay_per_second <= 15.0
