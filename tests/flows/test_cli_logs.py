"""A CLI-launched run is visible on the Prefect server: its log lines are there (read back from the API), while
the terminal stays quiet (no INFO lines from Prefect)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest
from manifest_files import write_manifest

from voxmill.ledger import read_results

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.prefect
@pytest.mark.e2e
def test_a_cli_run_sends_its_logs_to_the_prefect_server(null_server, prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"l{i}", "text": f"Logged line {i}."} for i in range(6)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env.update(PYTHONPATH=str(ROOT), PREFECT_API_URL=prefect_api, VOXMILL_API_KEY=null_server.token,
               VOXMILL_BASE_URL=null_server.base_url, VOXMILL_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "voxmill.cli", "synthesize", str(manifest), "-o",
                           str(tmp_path / "out"), "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert " | INFO " not in done.stderr, "the terminal shows no INFO lines"
    flow_run_ids = pc.unique(read_results(tmp_path / "out")["flow_run_id"]).to_pylist()
    assert len(flow_run_ids) == 1 and flow_run_ids[0]
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_ids[0]])))
    messages = [log.message for log in logs]
    print(f"\n{len(messages)} log lines on the server, e.g. {messages[:2]}")
    assert len(messages) > 0 and any("6 done" in m for m in messages), messages
