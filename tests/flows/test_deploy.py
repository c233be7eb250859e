"""`make deploy` end to end, as a new user would meet it: a copy of the repo (no VOXMILL_HOME, no key, no Secret
block), a real `prefect server start`, the process work pool, every deployment applied, a real worker; every
deployment runs with its defaults, a 2-shard run merges into one table, and a Failed run's result is read back
from another process; a shard's flow-run process killed with SIGKILL mid-run, and the parent rerun, pays only
for what that shard had not recorded. `undeploy` stops what was started."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import free_port
from manifest_files import write_manifest
from server_rates import StatsSampler

from voxmill.audio.formats import check_audio_body
from voxmill.audio.measure import measure_file
from voxmill.cli.deploy import DEPLOYMENTS, Stack, deploy, undeploy
from voxmill.ledger import Ledger
from voxmill.server import request_content_hash

REPO = Path(__file__).resolve().parents[2]
#: make test's parallel stage (``--dist loadgroup``) runs each group on one xdist worker, with that worker's own
#: stack: two stacks side by side halve the longest chain of the suite (one stack held every test: ~9 min under load)
STACK_A = pytest.mark.xdist_group("deploy-stack-a")
STACK_B = pytest.mark.xdist_group("deploy-stack-b")



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


BUCKET = "voxmill-deploy"
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@pytest.fixture(scope="module")
def bucket() -> Iterator[object]:
    """A moto S3 server the stack's worker reaches through the AWS variables (set before the worker starts)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    before = {k: os.environ.get(k) for k in AWS_VARIABLES}
    os.environ.update({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://{host}:{port}"})
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        fs.rm(BUCKET, recursive=True)
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def stack(clone: Path, bucket) -> Iterator[Stack]:
    env_before = {k: os.environ.pop(k) for k in ("PREFECT_API_URL", "VOXMILL_API_KEY") if k in os.environ}
    query_before = os.environ.get("PREFECT_WORKER_QUERY_SECONDS")
    os.environ["PREFECT_WORKER_QUERY_SECONDS"] = "2"  # the worker looks for runs every 2 s, not 10: a faster suite
    try:
        stack = deploy(root=clone, port=free_port())
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


FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@dataclass
class DeploymentRun:
    """A deployment run created from the test's own process with the API calls ``run_deployment`` makes, instead of
    a Python started (and Prefect imported, ~3 CPU-s) per run; its state is read over the REST API."""

    stack: Stack
    id: str

    def state(self) -> dict[str, Any] | None:
        """The run's state (``type``, ``name``, ``message``); None while the API does not answer."""
        try:
            response = httpx.get(f"{self.stack.api_url}/flow_runs/{self.id}", timeout=10)
            response.raise_for_status()
        except httpx.HTTPError:
            return None
        return response.json()["state"]

    def ended(self) -> bool:
        state = self.state()
        return state is not None and state["type"] in FINAL_STATES

    def wait(self, timeout: float = 300) -> tuple[str, str]:
        """The run's final state: (name, message), as ``run_deployment(..., timeout=None)`` waits for it."""
        deadline = time.monotonic() + timeout
        while not ((state := self.state()) and state["type"] in FINAL_STATES):
            assert time.monotonic() < deadline, f"run {self.id} is still {state} after {timeout:g} s"
            time.sleep(1)
        return state["name"], state["message"] or ""


def _run_deployment(stack: Stack, name: str, parameters: dict[str, Any],
                    secret: tuple[str, str] | None = None) -> DeploymentRun:
    """Start deployment ``name`` with ``parameters`` on the stack (saving the Secret block ``secret`` = (name, value)
    first), as a user's ``run_deployment(name, parameters=...)`` would."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
        if secret:
            Secret(value=secret[1]).save(secret[0], overwrite=True)
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(name)
            run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    return DeploymentRun(stack, str(run.id))


def _ended(run: DeploymentRun) -> tuple[str, str]:
    return run.wait(timeout=300)


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


@STACK_A
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
    failing = _run_deployment(stack, DEPLOYMENTS[0], {"manifest": str(bad), "out_dir": str(tmp_path / "out"),
                                                      "options": {"local_engine": "null"}})
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

    state, message = failing.wait(timeout=300)
    assert state == "Failed", message
    reader = _python(stack, READ_RESULT, failing.id)
    output, errors = reader.communicate(timeout=120)
    assert output.strip() == "JobFailed 1 1 {'validation': 1}", errors[-2000:]


def _python(stack: Stack, script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**{k: v for k, v in stack.env().items() if k not in ("VOXMILL_API_KEY", "VOXMILL_BASE_URL")}, **(env or {})}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


KEY_BLOCK = "voxmill-kill-test"
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


def _sharded_run(stack: Stack, manifest: Path, out: Path | str, server) -> DeploymentRun:
    """A 2-shard synthesize of ``manifest`` into ``out`` (a folder or a URL), 2 requests in flight per shard."""
    return _run_deployment(stack, DEPLOYMENTS[0], {
        "manifest": str(manifest), "out_dir": str(out), "shards": 2, "output_format": "wav",
        "options": {"base_url": server.base_url, "api_key_block": KEY_BLOCK, "max_concurrent": 2}},
        secret=(KEY_BLOCK, server.token))


def _wait_until(ready, parent: DeploymentRun, timeout: float = 240) -> None:
    """Poll ``ready()`` every 0.1 s until it holds; fail at once if ``parent`` ends first (its state read each s)."""
    deadline, checked = time.monotonic() + timeout, time.monotonic()
    while not ready():
        if time.monotonic() - checked > 1:
            checked = time.monotonic()
            assert not parent.ended(), f"shard 0 never got going: the parent run ended {parent.state()}"
        assert time.monotonic() < deadline, f"shard 0 never got going in {timeout:g} s: {parent.state()}"
        time.sleep(0.1)


@STACK_B
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
    _wait_until(lambda: killed.exists() and len(_done_ids(killed)) >= 3, parent)
    os.kill(_holder_of(Ledger(killed).journal_dir / ".lock"), signal.SIGKILL)  # the shard's flow-run process
    server.wait_settled()  # the server finishes (and bills) what the dead shard had asked for
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


RATE_ITEMS = 360


@pytest.mark.slow
@pytest.mark.prefect
@pytest.mark.rate
def test_two_shards_given_the_servers_rate_run_at_that_rate_combined(stack: Stack, make_server, tmp_path):
    """The job's cap is the shared budget's cap: 2 shards at --rps 20 against 20 req/s run at ≥ 18 req/s."""
    server = make_server(rate_limit_rps=20)
    rows = [{"id": f"r{n:03d}", "text": f"Shard rate check, line {n}."} for n in range(RATE_ITEMS)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    with StatsSampler(server) as sampler:
        state, message = _ended(_run_deployment(stack, DEPLOYMENTS[0], {
            "manifest": str(manifest), "out_dir": str(tmp_path / "out"), "shards": 2, "output_format": "wav",
            "options": {"base_url": server.base_url, "api_key_block": "voxmill-rate-test", "max_concurrent": 8,
                        "requests_per_second": 20.0}}, secret=("voxmill-rate-test", server.token)))
    assert state == "Completed", message
    final = sampler.samples[-1]
    assert final.ok == RATE_ITEMS
    offered, admitted = sampler.busy_rates(RATE_ITEMS)
    print(f"\n2 shards, --rps 20, server at 20 req/s: {admitted:.2f} req/s admitted ({offered:.2f} offered), "
          f"{final.limited} × 429 of {final.requests}")
    assert admitted >= 18.0, f"{admitted:.2f} req/s combined: the shards split the cap instead of sharing it"
    assert final.limited <= 0.05 * final.requests, final


def _bucket_run(stack: Stack, name: str, manifest: str, url: str, server,
                output_format: str | None = "wav") -> DeploymentRun:
    """A 3-shard run of deployment ``name`` from ``manifest`` into ``url``."""
    formats = {"output_format": output_format} if output_format else {}
    return _run_deployment(stack, name, {
        "manifest": manifest, "out_dir": url, "shards": 3, **formats,
        "options": {"base_url": server.base_url, "api_key_block": "voxmill-bucket-test"}},
        secret=("voxmill-bucket-test", server.token))


def _artifact_kinds(stack: Stack, run_id: str) -> dict[str, Any]:
    """What the UI shows of a sharded run: each child run's artifact kinds by its name, and the parent's."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def kinds(client, flow_run_id) -> list[str]:  # type: ignore[no-untyped-def]
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
        return sorted(str(a.type) for a in found)

    with temporary_settings(updates={PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=(
            FlowRunFilterParentFlowRunId(any_=[run_id]))))
        return {"children": {c.name: kinds(client, c.id) for c in children}, "parent": kinds(client, run_id)}


@STACK_A
@pytest.mark.slow
@pytest.mark.prefect
def test_three_shards_from_a_bucket_into_a_bucket(stack: Stack, bucket, make_server, tmp_path):
    """Manifest and output in the bucket: every item done once, one merged table at the URL, outputs beside it."""
    import io

    server = make_server()
    rows = [{"id": f"u{n:02d}", "text": f"Bucket shard line number {n}."} for n in range(24)]
    bucket.pipe_file(f"{BUCKET}/in/m.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    url = f"s3://{BUCKET}/out/sharded"
    run = _bucket_run(stack, DEPLOYMENTS[0], f"s3://{BUCKET}/in/m.jsonl", url, server)
    state, message = _ended(run)
    assert state == "Completed", message
    # visible in the UI: the shards are the parent's subflow runs, each with its progress artifact; the parent
    # has its own progress artifact and the table of shards that it updated as they finished
    seen = _artifact_kinds(stack, run.id)
    assert sorted(seen["children"]) == ["shard-0-of-3", "shard-1-of-3", "shard-2-of-3"], seen
    assert all("progress" in kinds for kinds in seen["children"].values()), seen
    assert "progress" in seen["parent"] and "table" in seen["parent"], seen
    assert server.stats()["generations_total"] == len(rows), "every item paid exactly once"
    merged = pq.read_table(io.BytesIO(bucket.cat_file(f"{BUCKET}/out/sharded/results.parquet"))).to_pylist()
    assert sorted(r["id"] for r in merged) == [r["id"] for r in rows] and {r["status"] for r in merged} == {"done"}
    assert {r["output_path"].split("/")[1] for r in merged} == {"0-of-3", "1-of-3", "2-of-3"}
    for row in merged:
        check_audio_body(bucket.cat_file(f"{BUCKET}/out/sharded/{row['output_path']}"), "wav")
    assert not bucket.glob(f"{BUCKET}/out/sharded/**/lease.json"), "every lease given back"


@STACK_A
@pytest.mark.slow
@pytest.mark.prefect
def test_a_shard_killed_mid_run_into_a_bucket_then_rerun_pays_only_what_no_segment_held(
        stack: Stack, bucket, make_server, tmp_path):
    from voxmill.bucket import LEASE_FILE, RemoteOut

    server = make_server(latency_ms=400)
    texts = {f"item-{n:02d}": f"Bucket kill check, sentence number {n}." for n in range(SHARD_ITEMS)}
    manifest = write_manifest(tmp_path / "m.csv", [{"id": i, "text": t} for i, t in texts.items()])
    hash_of = {i: request_content_hash({"model": "higgs2p5", "text": t}, {}) for i, t in texts.items()}
    url = f"s3://{BUCKET}/killed"
    killed, other = RemoteOut(f"{url}/shards/0-of-2"), RemoteOut(f"{url}/shards/1-of-2")

    def done_ids(remote: RemoteOut) -> set[str]:
        table = remote.read_table(["id", "status"])
        return set(table.filter(pc.equal(table["status"], "done"))["id"].to_pylist())

    parent = _sharded_run(stack, manifest, url, server)
    _wait_until(lambda: len(done_ids(killed)) >= 3, parent)
    holder = json.loads(bucket.cat_file(f"{BUCKET}/killed/shards/0-of-2/{LEASE_FILE}"))
    os.kill(holder["pid"], signal.SIGKILL)  # the shard's flow-run process, named by its lease
    server.wait_settled()  # the server finishes (and bills) what the dead shard had asked for
    generated_at_kill = {h for h, n in server.stats()["generations"].items() if n}
    recorded_at_kill = done_ids(killed)

    state, message = _ended(parent)
    assert state == "Failed" and "shard 0-of-2" in message and "Crashed" in message, message
    other_ids = done_ids(other)
    assert other_ids and other_ids.isdisjoint(recorded_at_kill)
    in_flight = {i for i, h in hash_of.items() if h in generated_at_kill} - recorded_at_kill - other_ids
    paid_before_rerun = sum(server.stats()["generations"].values())

    state, message = _ended(_sharded_run(stack, manifest, url, server))
    assert state == "Completed", message
    killed_slice = done_ids(killed)
    assert killed_slice.isdisjoint(other_ids) and killed_slice | other_ids == set(texts)
    generations = Counter(server.stats()["generations"])
    assert sum(generations.values()) - paid_before_rerun == len(killed_slice) - len(recorded_at_kill), (
        "the rerun sent exactly what no segment of the killed shard held, and nothing of the other shard")
    assert len(in_flight) <= 2 * SHARD_CONCURRENCY + 2, in_flight  # in flight, or finished in the last flush
    merged = pq.read_table(io.BytesIO(bucket.cat_file(f"{BUCKET}/killed/results.parquet"))).to_pylist()
    assert sorted(r["id"] for r in merged) == sorted(texts) and {r["status"] for r in merged} == {"done"}
    print(f"recorded at the kill: {len(recorded_at_kill)}/{len(killed_slice)}; lost at the kill: {len(in_flight)}")


@STACK_B
@pytest.mark.slow
@pytest.mark.prefect
def test_three_workers_with_no_shared_disk_run_sharded_jobs_bucket_to_bucket(
        stack: Stack, clone: Path, bucket, make_server, tmp_path):
    """3 process workers, each in its own empty directory with its own HOME, TMPDIR and Prefect home, sharing
    only the Prefect API, the bucket and the local API server (the stack's own worker is paused meanwhile):
    a 3-shard synthesize and a 3-shard corpus transcription, s3:// to s3://, every item done exactly once, one
    merged table each in the bucket, and no file of either job left in any worker's directory."""
    import io

    server = make_server()
    workers, homes = [], []
    env_base = {k: v for k, v in stack.env().items()
                if not k.startswith(("VOXMILL_", "PREFECT_HOME", "PREFECT_LOCAL_STORAGE"))}
    for n in range(3):
        home = tmp_path / f"worker-{n}"
        (home / "tmp").mkdir(parents=True)
        homes.append(home)
        env = {**env_base, "HOME": str(home), "TMPDIR": str(home / "tmp"), "PREFECT_HOME": str(home / ".prefect"),
               "PREFECT_LOCAL_STORAGE_PATH": str(home / ".prefect" / "storage"), "PYTHONPATH": str(clone),
               "PREFECT_WORKER_QUERY_SECONDS": "2"}
        workers.append(subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "voxmill",
                                         "--type", "process", "--name", f"no-disk-{n}"], env=env, cwd=home,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    stack_worker = int((stack.state_dir / "worker.pid").read_text())
    os.killpg(stack_worker, signal.SIGSTOP)
    try:
        rows = [{"id": f"w{n:02d}", "text": f"No shared disk, line {n}."} for n in range(18)]
        bucket.pipe_file(f"{BUCKET}/nodisk/in.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        tts_url, asr_url = f"s3://{BUCKET}/nodisk/tts", f"s3://{BUCKET}/nodisk/asr"
        state, message = _ended(_bucket_run(stack, DEPLOYMENTS[0], f"s3://{BUCKET}/nodisk/in.jsonl", tts_url,
                                            server))
        assert state == "Completed", message
        assert server.stats()["generations_total"] == len(rows), "every item paid exactly once"
        merged = pq.read_table(io.BytesIO(bucket.cat_file(f"{BUCKET}/nodisk/tts/results.parquet"))).to_pylist()
        assert sorted(r["id"] for r in merged) == [r["id"] for r in rows]

        sent = server.stats()["requests"]
        state, message = _ended(_bucket_run(stack, "voxmill-transcribe/transcribe",
                                            f"s3://{BUCKET}/nodisk/tts/shards/**/*.wav", asr_url, server, None))
        assert state == "Completed", message
        transcribed = pq.read_table(io.BytesIO(bucket.cat_file(f"{BUCKET}/nodisk/asr/results.parquet"))).to_pylist()
        assert len(transcribed) == len(rows) and {r["status"] for r in transcribed} == {"done"}
        # identical silence from the null engine: each shard sends one request and reuses it for the rest
        assert 1 <= server.stats()["requests"] - sent <= 3
    finally:
        os.killpg(stack_worker, signal.SIGCONT)
        for process in workers:
            os.killpg(process.pid, signal.SIGTERM)
        for process in workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    job_files = [p for home in homes for p in home.rglob("*") if p.is_file()
                 and p.suffix in (".wav", ".parquet", ".jsonl", ".txt", ".srt", ".vtt")
                 or p.name in ("job.json", "lease.json")]
    assert job_files == [], job_files
    leftovers = [p for home in homes for p in (home / "tmp").iterdir()]
    assert all(not any(p.rglob("*.*")) for p in leftovers if p.is_dir()), leftovers



def _restart_prefect_server(stack: Stack, down_s: float) -> None:
    """Kill ``make deploy``'s Prefect server (its whole session), wait ``down_s``, start it again on the same port
    and database, as `deploy` does (pid file included, so `undeploy` stops the new one)."""
    pid_file = stack.state_dir / "server.pid"
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    time.sleep(down_s)
    port = stack.api_url.rsplit(":", 1)[1].split("/")[0]
    env = {**stack.env(), "PREFECT_UI_API_URL": stack.api_url}
    with open(stack.state_dir / "server.log", "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                   port], env=env, cwd=stack.state_dir.parent, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file.write_text(str(server.pid))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{stack.api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the Prefect server did not come back")


@STACK_B
@pytest.mark.slow
def test_prefect_server_restart_mid_run_of_a_worker_run_pays_nothing_twice(stack: Stack, make_server, tmp_path):
    """A deployment run executed by the worker while `make deploy`'s Prefect server is killed for 10 s and started
    again: the job either finishes or ends Crashed/Failed and the rerun finishes it; no item is paid twice beyond
    the requests in flight, and the run's state is readable once the server is back."""
    server = make_server(latency_ms=100)
    rows = 150
    texts = {f"item-{n:03d}": f"Prefect restart check, sentence number {n}." for n in range(rows)}
    manifest = write_manifest(tmp_path / "m.csv", [{"id": i, "text": t} for i, t in texts.items()])
    out = tmp_path / "restart"
    one_run = {"manifest": str(manifest), "out_dir": str(out), "output_format": "wav",
               "options": {"base_url": server.base_url, "api_key_block": KEY_BLOCK, "max_concurrent": 2}}
    run = _run_deployment(stack, DEPLOYMENTS[0], one_run, secret=(KEY_BLOCK, server.token))
    deadline = time.monotonic() + 240
    while not (out.exists() and len(_done_ids(out)) >= 20):
        assert time.monotonic() < deadline, "the worker's run never got going"
        time.sleep(0.2)
    _restart_prefect_server(stack, down_s=10)
    deadline = time.monotonic() + 300
    while (state := (run.state() or {}).get("type")) not in FINAL_STATES:
        assert time.monotonic() < deadline, f"the run is still {state} 300 s after the restart"
        time.sleep(2)
    if state != "COMPLETED":  # ended by the outage: the rerun finishes it
        rerun = _run_deployment(stack, DEPLOYMENTS[0], one_run, secret=(KEY_BLOCK, server.token))
        deadline = time.monotonic() + 300
        while (final := (rerun.state() or {}).get("type")) != "COMPLETED":
            assert final not in ("FAILED", "CRASHED") and time.monotonic() < deadline, final
            time.sleep(2)
    assert _done_ids(out) == set(texts)
    generations = Counter(server.stats()["generations"])
    twice = sum(n - 1 for n in generations.values())
    assert twice <= 2, twice  # at most the 2 requests in flight when the run ended
    print(f"the worker's run ended {state} after a 10 s Prefect outage; paid twice: {twice}")


@STACK_B
@pytest.mark.slow
def test_prefect_server_restart_mid_cli_run_pays_nothing_twice_and_stays_quiet(stack: Stack, make_server, tmp_path):
    """`voxmill synthesize` against `make deploy`'s server, killed for 10 s mid-run and started again: the job
    finishes (or the rerun does), no item is paid twice beyond the requests in flight, and the terminal shows
    none of Prefect's event-delivery errors."""
    server = make_server(latency_ms=100)
    rows = 150
    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"item-{n:03d}", "text": f"CLI restart check {n}."}
                                                   for n in range(rows)])
    out = tmp_path / "cli-restart"
    env = {**stack.env(), "VOXMILL_API_KEY": server.token, "VOXMILL_BASE_URL": server.base_url,
           "VOXMILL_CONCURRENCY": "2"}
    command = [sys.executable, "-m", "voxmill.cli", "synthesize", str(manifest), "-o", str(out), "--no-progress"]
    cli = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (out.exists() and len(_done_ids(out)) >= 20):
        assert cli.poll() is None and time.monotonic() < deadline, cli.stdout.read()[-3000:]
        time.sleep(0.2)
    _restart_prefect_server(stack, down_s=10)
    said, _ = cli.communicate(timeout=300)
    first_exit = cli.returncode
    if first_exit != 0:
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert len(_done_ids(out)) == rows
    twice = sum(n - 1 for n in Counter(server.stats()["generations"]).values())
    assert twice <= 2, twice
    lines = [line for line in said.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith(f"{rows} done") or first_exit != 0, said[-3000:]
    assert "EventsWorker" not in said and "WARNING" not in said and "Traceback" not in said, said[-3000:]
    print(f"the CLI run exited {first_exit} after a 10 s Prefect outage; paid twice: {twice}; it said: {said!r}")
