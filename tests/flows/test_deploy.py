"""`make deploy` end to end, as a new user would meet it: a copy of the repo (no VOXMILL_HOME, no key, no Secret
block), a real `prefect server start`, the process work pool, every deployment applied, a real worker; every
deployment runs with its defaults, a 2-shard run merges into one table, and a Failed run's result is read back
from another process. `undeploy` stops what was started."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from manifest_files import write_manifest

from voxmill.audio.measure import measure_file
from voxmill.deploy import DEPLOYMENTS, Stack, deploy, undeploy

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The repo's files (tracked and new, not ignored) copied elsewhere: deployments must not need this path."""
    target = tmp_path_factory.mktemp("clone") / "voxmill"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def stack(clone: Path) -> Iterator[Stack]:
    env_before = {k: os.environ.pop(k) for k in ("PREFECT_API_URL", "VOXMILL_API_KEY") if k in os.environ}
    try:
        stack = deploy(root=clone, port=_free_port())
        yield stack
    finally:
        stopped = undeploy(clone)
        os.environ.update(env_before)
    assert [s.split()[0] for s in stopped] == ["worker", "server"]


def _prefect(stack: Stack, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in stack.env().items() if k not in ("VOXMILL_API_KEY", "VOXMILL_BASE_URL")}
    env["COLUMNS"] = "250"  # rich tables: full deployment names
    return subprocess.Popen([sys.executable, "-m", "prefect", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


RUN_FAILING = (
    "import sys\n"
    "from prefect.deployments import run_deployment\n"
    "run = run_deployment(sys.argv[1], parameters={'manifest': sys.argv[2], 'out_dir': sys.argv[3],"
    " 'local_engine': 'null'}, timeout=None, poll_interval=1)\n"
    "print(run.id, run.state.name)\n"
)
READ_RESULT = (
    "import sys, asyncio\n"
    "from prefect.client.orchestration import get_client\n"
    "async def main():\n"
    "    async with get_client() as client:\n"
    "        run = await client.read_flow_run(sys.argv[1])\n"
    "    failure = await run.state.aresult(raise_on_failure=False)\n"
    "    s = failure.summary\n"
    "    print(type(failure).__name__, s.done, s.failed, s.failures_by_kind)\n"
    "asyncio.run(main())\n"
)


@pytest.mark.slow
def test_make_deploy_runs_every_deployment_shards_and_persists_a_failed_result(stack: Stack, clone: Path, tmp_path):
    listed = _prefect(stack, "deployment", "ls").communicate(timeout=120)[0]
    for name in (*DEPLOYMENTS, "voxmill-synthesize/shard", "voxmill-transcribe/shard"):
        assert name in listed, listed
    sharded_out = clone / "out" / "sharded"
    bad = write_manifest(tmp_path / "m.csv", [{"id": "ok", "text": "Fine words."}, {"id": "empty", "text": ""}])
    # every run at once, as a worker meets them: each deployment with its defaults, a 2-shard run, a failing run
    runs = {name: _prefect(stack, "deployment", "run", name, "--watch") for name in DEPLOYMENTS[:-1]}
    # the nightly build's deployment as its schedule would start it: a Scheduled run the worker takes when due
    runs[DEPLOYMENTS[-1]] = _prefect(stack, "deployment", "run", DEPLOYMENTS[-1], "--start-in", "5 seconds",
                                     "--watch")
    runs["shards"] = _prefect(stack, "deployment", "run", DEPLOYMENTS[0], "-p", "shards=2",
                              "-p", f"out_dir={sharded_out}", "--watch")
    failing = _python(stack, RUN_FAILING, DEPLOYMENTS[0], str(bad), str(tmp_path / "out"))
    for name, process in runs.items():
        output = process.communicate(timeout=420)[0]
        assert process.returncode == 0, f"{name}:\n{output[-3000:]}"  # --watch exits 0 only when Completed

    tts = pq.read_table(clone / "out" / "tts" / "results.parquet").to_pylist()
    assert len(tts) == 6 and {r["status"] for r in tts} == {"done"}
    assert all(r["engine"].startswith("piper:") for r in tts), "no key: a local server, labelled"
    asr = pq.read_table(clone / "out" / "asr" / "results.parquet").to_pylist()
    assert len(asr) == 3 and all(r["status"] == "done" and r["wer"] <= 0.15 for r in asr), asr
    roundtrip = pq.read_table(clone / "out" / "roundtrip" / "asr" / "results.parquet")
    assert roundtrip.num_rows == 6

    book = clone / "out" / "audiobooks" / "example"
    chapters = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_chapters", "-of", "json",
                                          str(next(book.glob("*.m4b")))], capture_output=True, text=True,
                                         check=True).stdout)["chapters"]
    assert [c["tags"]["title"] for c in chapters] == ["Chapter One: The Lamp", "Chapter Two: The Storm"]
    dataset = clone / "out" / "datasets" / "demo-speech"
    assert (dataset / "latest").exists() and len(list((dataset / "versions").iterdir())) == 1

    merged = pq.read_table(sharded_out / "results.parquet").to_pylist()
    assert sorted(r["id"] for r in merged) == sorted(r["id"] for r in tts)
    shards_used = {r["output_path"].split("/")[1] for r in merged}
    assert shards_used == {"0-of-2", "1-of-2"}, "both shards did part of the job"
    for row in merged:
        info = measure_file(sharded_out / row["output_path"])
        assert info.format == "mp3" and info.duration_s > 0.5

    output, errors = failing.communicate(timeout=300)
    run_id, state = output.split()[-2:]
    assert state == "Failed", errors[-2000:]
    reader = _python(stack, READ_RESULT, run_id)
    output, errors = reader.communicate(timeout=120)
    assert output.strip() == "JobFailed 1 1 {'validation': 1}", errors[-2000:]


def _python(stack: Stack, script: str, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in stack.env().items() if k not in ("VOXMILL_API_KEY", "VOXMILL_BASE_URL")}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
