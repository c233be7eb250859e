"""``runner="dask"`` on a cluster started separately: a ``dask scheduler`` and two ``dask worker`` processes, each
in its own directory, reached at ``tcp://127.0.0.1:PORT``; the job writes the same table as the thread runner."""

from __future__ import annotations

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

from voxmill.ledger import read_results
from voxmill.options import RunOptions

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.prefect, pytest.mark.e2e, pytest.mark.slow]
COLUMNS = ["id", "key", "status", "sha256", "duration_s", "output_path"]



@pytest.fixture
def dask_cluster(null_server, prefect_api, tmp_path) -> Iterator[str]:
    pytest.importorskip("distributed")
    dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": prefect_api, "DO_NOT_TRACK": "1",
           "VOXMILL_API_KEY": null_server.token, "VOXMILL_CACHE_DIR": str(tmp_path / "cache")}
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                   "--dashboard-address", ":0"], env=env, cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for name in ("w1", "w2"):
        home = tmp_path / name
        home.mkdir()
        processes.append(subprocess.Popen(
            [dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
             "--local-directory", str(home)],
            env={**env, "HOME": str(home), "TMPDIR": str(home)}, cwd=home,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    deadline = time.monotonic() + 60
    while True:
        try:
            with Client(address, timeout=5) as client:
                if len(client.scheduler_info()["workers"]) == 2:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the Dask cluster did not come up"
        time.sleep(0.5)
    yield address
    for process in reversed(processes):
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_dask_runner_on_a_separately_started_cluster_writes_the_thread_runners_table(
        dask_cluster, null_server, tmp_path, monkeypatch):
    from flows.synthesize import synthesize

    monkeypatch.setenv("VOXMILL_API_KEY", null_server.token)
    monkeypatch.setenv("VOXMILL_BASE_URL", null_server.base_url)
    monkeypatch.setenv("VOXMILL_CACHE_DIR", str(tmp_path / "cache"))
    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"d{i:02d}", "text": f"Dask line {i}."} for i in range(30)])
    tables = {}
    for runner, address in (("thread", None), ("dask", dask_cluster)):
        state = synthesize(manifest=str(manifest), out_dir=str(tmp_path / runner), batch_size=5, return_state=True,
                           options=RunOptions(runner=runner, workers=2, dask_address=address))
        assert state.is_completed(), state.message
        tables[runner] = read_results(tmp_path / runner).select(COLUMNS).sort_by("id").to_pylist()
    assert tables["dask"] == tables["thread"] and len(tables["dask"]) == 30
    from distributed import Client

    with Client(dask_cluster, timeout=10) as client:
        prefixes = client.run_on_scheduler(lambda dask_scheduler: {
            name: sum(prefix.state_counts.values()) for name, prefix in dask_scheduler.task_prefixes.items()})
    print(f"\ntask prefixes on the separately started scheduler: {prefixes}")
    assert sum(prefixes.values()) >= 6, "the cluster's workers ran the 6 batches"
