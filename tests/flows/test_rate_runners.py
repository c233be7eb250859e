"""The rate budget across a flow's worker processes: a process task runner's workers draw from one budget.

Against a local server limited at 10 req/s with no rate given, every count from the server's own counters.
"""

from __future__ import annotations

import pytest
from manifest_files import write_manifest
from server_rates import StatsSampler

from voxmill.options import RunOptions

pytestmark = [pytest.mark.slow, pytest.mark.rate]


def test_process_runner_workers_share_one_budget(make_server, prefect_api, monkeypatch, tmp_path):
    from flows.synthesize import synthesize

    server = make_server(rate_limit_rps=10)
    monkeypatch.setenv("VOXMILL_API_KEY", server.token)
    monkeypatch.setenv("VOXMILL_BASE_URL", server.base_url)
    monkeypatch.setenv("VOXMILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VOXMILL_MAX_ATTEMPTS", "8")
    items = 120
    rows = [{"id": f"p{i}", "model": "higgs2p5", "text": f"Line {i} of the process runner rate test."}
            for i in range(items)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    with StatsSampler(server) as sampler:
        state = synthesize(manifest=str(manifest), out_dir=str(tmp_path / "out"), batch_size=20,
                           options=RunOptions(runner="process", workers=3, max_concurrent=8), return_state=True)

    assert state.is_completed(), state.message
    final = sampler.samples[-1]
    assert final.ok == items
    offered, admitted = sampler.busy_rates(items)
    print(f"\nprocess runner, 3 workers at 10 req/s: {offered:.2f} req/s offered, {admitted:.2f} admitted, "
          f"{final.limited} × 429 of {final.requests}")
    assert final.limited <= 0.05 * final.requests, final
    assert offered <= 10.5, f"{offered:.2f} requests/s offered against 10 req/s"
    # one budget: the worker processes all drew from the one file of this key and base URL
    assert len(list((tmp_path / "cache" / "rate").glob("*.json"))) == 1
