"""`make deploy` end to end, as a new user would meet it: a copy of the repo (no VOXMILL_HOME, no key, no Secret
block), a real `prefect server start`, the process work pool, every deployment applied, a real worker; every
deployment runs with its defaults, a 2-shard run merges into one table, and a Failed run's result is read back
from another process; a shard's flow-run process killed with SIGKILL mid-run, and the parent rerun, pays only
for what that shard had not recorded. `undeploy` stops what was started."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from manifest_files import write_manifest

from voxmill.audio.formats import check_audio_body
from voxmill.audio.measure import measure_file
from voxmill.cli.deploy import DEPLOYMENTS, Stack, deploy, undeploy
from voxmill.ledger import Ledger
from voxmill.server import request_content_hash

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
    query_before = os.environ.get("PREFECT_WORKER_QUERY_SECONDS")
    os.environ["PREFECT_WORKER_QUERY_SECONDS"] = "2"  # the worker looks for runs every 2 s, not 10: a faster suite
    try:
        stack = deploy(root=clone, port=_free_port())
        yield stack
    finally:
        stopped = undeploy(clone)
        os.environ.update(env_before)
        if query_before is None:
            os.environ.pop("PREFECT_WORKER_QUERY_SECONDS")
        else:
            os.environ["PREFECT_WORKER_QUERY_SECONDS"] = query_before
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
    " 'options': {'local_engine': 'null'}}, timeout=None, poll_interval=1)\n"
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
@pytest.mark.e2e
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


def _python(stack: Stack, script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**{k: v for k, v in stack.env().items() if k not in ("VOXMILL_API_KEY", "VOXMILL_BASE_URL")}, **(env or {})}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


KEY_BLOCK = "voxmill-kill-test"
RUN_SHARDED = (
    "import json, os, sys\n"
    "from prefect.blocks.system import Secret\n"
    "from prefect.deployments import run_deployment\n"
    f"Secret(value=os.environ['TEST_SERVER_TOKEN']).save({KEY_BLOCK!r}, overwrite=True)\n"
    "run = run_deployment(sys.argv[1], parameters={'manifest': sys.argv[2], 'out_dir': sys.argv[3], 'shards': 2,"
    f" 'options': {{'base_url': sys.argv[4], 'api_key_block': {KEY_BLOCK!r}, 'max_concurrent': 2}},"
    " 'output_format': 'wav'},"
    " timeout=None, poll_interval=1)\n"
    "print(json.dumps([run.state.name, run.state.message]))\n"
)
SHARD_ITEMS = 30
SHARD_CONCURRENCY = 2


def _done_ids(out: Path) -> set[str]:
    table = Ledger(out).read(["id", "status"])
    return set(table.filter(pc.equal(table["status"], "done"))["id"].to_pylist())


def _holder_of(lock: Path) -> int:
    """The pid of the process that has ``lock`` open: the flow run that holds a shard's ledger."""
    target = os.path.realpath(lock)
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == target for fd in fd_dir.iterdir()):
                return int(fd_dir.parent.name)
        except OSError:  # a process that ended, or one not ours
            continue
    raise AssertionError(f"no process holds {lock}")


def _sharded_run(stack: Stack, manifest: Path, out: Path, server) -> subprocess.Popen:
    return _python(stack, RUN_SHARDED, DEPLOYMENTS[0], str(manifest), str(out), server.base_url,
                   env={"TEST_SERVER_TOKEN": server.token})


def _ended(process: subprocess.Popen) -> tuple[str, str]:
    output, errors = process.communicate(timeout=300)
    assert process.returncode == 0, errors[-3000:]
    state, message = json.loads(output.strip().splitlines()[-1])
    return state, message or ""


@pytest.mark.slow
@pytest.mark.e2e
def test_killed_shard_then_rerun_parent_pays_only_for_what_it_had_not_recorded(stack: Stack, make_server, tmp_path):
    server = make_server(latency_ms=400)  # a shard of ~15 items at 2 in flight: ~3 s of work to kill into
    texts = {f"item-{n:02d}": f"Sharded resume check, sentence number {n}." for n in range(SHARD_ITEMS)}
    manifest = write_manifest(tmp_path / "m.csv", [{"id": i, "text": t} for i, t in texts.items()])
    hash_of = {i: request_content_hash({"model": "higgs2p5", "text": t}, {}) for i, t in texts.items()}
    out = tmp_path / "sharded"
    killed = out / "shards" / "0-of-2"

    parent = _sharded_run(stack, manifest, out, server)
    deadline = time.monotonic() + 240
    while not (killed.exists() and len(_done_ids(killed)) >= 3):
        if parent.poll() is not None or time.monotonic() > deadline:
            parent.kill()
            raise AssertionError(f"shard 0 never got going: {parent.communicate()[1][-3000:]}")
        time.sleep(0.1)
    os.kill(_holder_of(Ledger(killed).journal_dir / ".lock"), signal.SIGKILL)  # the shard's flow-run process
    time.sleep(1.0)  # let the server finish what the dead shard had asked for
    generated_at_kill = {h for h, n in server.stats()["generations"].items() if n}
    recorded_at_kill = _done_ids(killed)

    state, message = _ended(parent)
    assert state == "Failed" and "shard 0-of-2" in message and "Crashed" in message, message
    other = _done_ids(out / "shards" / "1-of-2")
    assert other and other.isdisjoint(recorded_at_kill), "the other shard finished its slice"
    assert not (out / "results.parquet").exists(), "no merge from a parent whose shard crashed"
    in_flight = {i for i, h in hash_of.items() if h in generated_at_kill} - recorded_at_kill - other
    assert len(in_flight) <= 2 * SHARD_CONCURRENCY, in_flight
    paid_before_rerun = sum(server.stats()["generations"].values())

    state, message = _ended(_sharded_run(stack, manifest, out, server))
    assert state == "Completed", message
    killed_slice = _done_ids(killed)
    assert killed_slice.isdisjoint(other) and killed_slice | other == set(texts)
    assert len(recorded_at_kill) < len(killed_slice), "the kill came before the shard had finished"
    generations = Counter(server.stats()["generations"])
    assert sum(generations.values()) - paid_before_rerun == len(killed_slice) - len(recorded_at_kill), (
        "the rerun sent exactly what the killed shard had not recorded, and nothing of the other shard")
    for item_id, content in hash_of.items():
        assert 1 <= generations[content] <= 1 + (item_id in in_flight), (item_id, generations[content])

    merged = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(r["id"] for r in merged) == sorted(texts) and {r["status"] for r in merged} == {"done"}
    for row in merged:
        check_audio_body((out / row["output_path"]).read_bytes(), "wav")
    print(f"recorded at the kill: {len(recorded_at_kill)}/{len(killed_slice)}; in flight: {len(in_flight)}; "
          f"paid twice: {sum(n - 1 for n in generations.values())}")
