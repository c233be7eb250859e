"""Jobs whose output is a bucket (``s3://…``, a moto server on loopback): outputs, tables, job record and
ledger land at the URL; a rerun pays nothing recorded; two runs cannot both write; a kill leaves a lease
that a rerun on the same host takes over. Counts come from the local API server's own stats."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile
from manifest_files import write_manifest
from s3_fixture import BUCKET, s3_bucket  # noqa: F401

from voxmill.bucket import HEAD_FILE, LEASE_FILE, SEGMENTS, RemoteOut
from voxmill.errors import ConfigError
from voxmill.jobs import JobRequest, out_location, run_job
from voxmill.ledger import LedgerRow
from voxmill.settings import ApiKey, RateLimit, Settings

ROOT = Path(__file__).resolve().parents[2]


def _settings(server, tmp_path) -> Settings:
    return Settings(api_key=ApiKey(server.token), base_url=server.base_url,
                    rate_limit=RateLimit(max_concurrent=4), cache_dir=tmp_path / "cache")


def _rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"b{i:03d}", "text": f"Line {i} for the bucket."} for i in range(n)]


def test_synthesize_into_a_bucket_then_rerun_pays_nothing(s3_bucket, null_server, tmp_path, monkeypatch):  # noqa: F811
    fs = s3_bucket
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    manifest = write_manifest(tmp_path / "m.csv", [*_rows(12), {"id": "empty", "text": ""}])
    url = f"s3://{BUCKET}/out/tts"
    request = JobRequest("tts", str(manifest), **out_location(url))
    summary = run_job(request, _settings(null_server, tmp_path))
    assert (summary.done, summary.failed, summary.out_dir) == (12, 1, url)
    assert null_server.stats()["generations_total"] == 12

    results = pq.read_table(io.BytesIO(fs.cat_file(f"{BUCKET}/out/tts/results.parquet"))).to_pylist()
    assert len(results) == 13 and sum(r["status"] == "done" for r in results) == 12
    failures = pq.read_table(io.BytesIO(fs.cat_file(f"{BUCKET}/out/tts/failures.parquet"))).to_pylist()
    assert [r["id"] for r in failures] == ["empty"]
    for row in results:
        if row["status"] == "done":
            data, rate = soundfile.read(io.BytesIO(fs.cat_file(f"{BUCKET}/out/tts/{row['output_path']}")))
            assert rate == row["sample_rate"] and abs(len(data) / rate - row["duration_s"]) < 0.01
    assert json.loads(fs.cat_file(f"{BUCKET}/out/tts/job.json"))["out_dir"] == url
    head = json.loads(fs.cat_file(f"{BUCKET}/out/tts/{HEAD_FILE}"))
    assert head["snapshot"].startswith("ledger/snapshots/") and head["folded"] == []
    assert not fs.exists(f"{BUCKET}/out/tts/{SEGMENTS}") or fs.ls(f"{BUCKET}/out/tts/{SEGMENTS}") == []
    assert not fs.exists(f"{BUCKET}/out/tts/{LEASE_FILE}"), "the lease is given back"
    assert list((tmp_path / "tmp").iterdir()) == [], "the scratch folder is gone"

    again = run_job(request, _settings(null_server, tmp_path))
    assert (again.done, again.skipped_done) == (0, 12) and null_server.stats()["generations_total"] == 12
    more = write_manifest(tmp_path / "m2.csv", _rows(15))
    third = run_job(JobRequest("tts", str(more), **out_location(url)), _settings(null_server, tmp_path))
    assert (third.done, third.skipped_done) == (3, 12) and null_server.stats()["generations_total"] == 15
    assert len(RemoteOut(url).read_table(["id", "status"])) == 16


def test_the_ledger_is_the_snapshot_plus_unfolded_segments(s3_bucket, tmp_path):  # noqa: F811
    url = f"s3://{BUCKET}/out/seg"
    remote = RemoteOut(url)

    def line(item_id: str, status: str) -> bytes:
        row = LedgerRow(id=item_id, key=item_id.ljust(32, "0"), row=0, kind="tts", model="m", status=status,
                        params="{}")
        return (json.dumps(row.__dict__) + "\n").encode()

    remote.write_segment("r1-000000.jsonl", line("a", "failed") + line("b", "done"))
    remote.write_segment("r1-000001.jsonl", line("a", "done") + b'{"torn')  # a torn tail is skipped
    with pytest.raises(FileExistsError):
        remote.write_segment("r1-000000.jsonl", line("c", "done"))  # segments are immutable
    table = remote.read_table(["id", "status"])
    assert dict(zip(table["id"].to_pylist(), table["status"].to_pylist())) == {"a": "done", "b": "done"}


def test_two_runs_cannot_both_write_one_url(s3_bucket, tmp_path):  # noqa: F811
    url = f"s3://{BUCKET}/out/locked"
    first, second = RemoteOut(url), RemoteOut(url)
    first.acquire("run-1")
    with pytest.raises(ConfigError, match="in use by another voxmill run"):
        second.acquire("run-2")
    first.renew()
    with pytest.raises(ConfigError, match="in use"):
        second.acquire("run-2")
    first.release()
    second.acquire("run-2")
    second.release()
    # a lease whose holder died on this host (kill -9) is taken over at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    body = json.dumps({"run_id": "killed", "host": os.uname().nodename, "pid": int(dead.stdout), "expires": 4e9})
    s3_bucket.pipe_file(f"{BUCKET}/out/locked/{LEASE_FILE}", body.encode())
    first.acquire("run-3")
    assert json.loads(s3_bucket.cat_file(f"{BUCKET}/out/locked/{LEASE_FILE}"))["run_id"] == "run-3"
    first.release()


KILL_SCRIPT = """
import sys
from voxmill.jobs import JobRequest, out_location, run_job
from voxmill.settings import ApiKey, RateLimit, Settings
settings = Settings(api_key=ApiKey(sys.argv[3]), base_url=sys.argv[4], rate_limit=RateLimit(max_concurrent=2),
                    cache_dir=sys.argv[5])
run_job(JobRequest("tts", sys.argv[1], **out_location(sys.argv[2]), batch_size=5, workers=1), settings)
"""


def _killed_mid_run(script: str, prefix: str, phrase: str, url: str, server, tmp_path: Path):  # noqa: ANN202
    """Run ``script`` on 40 distinct texts into ``url``, SIGKILL it once 6 rows are in the bucket, and wait until
    the server has served what it had sent: (args, env, remote, texts, ids recorded, generations paid)."""
    import time

    texts = [f"{phrase}, distinct sentence {i}." for i in range(40)]
    rows = [{"id": f"{prefix}{i:02d}", "text": t} for i, t in enumerate(texts)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    remote = RemoteOut(url)
    args = [sys.executable, "-c", script, str(manifest), url, server.token, server.base_url, str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(remote.read_table(["id"])) < 6:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.05)
    process.kill()
    process.wait()
    server.wait_settled()  # what the server was doing for the dead run ends (and is billed)
    recorded = set(remote.read_table(["id"])["id"].to_pylist())
    return args, env, remote, texts, recorded, server.stats()["generations_total"]


@pytest.mark.e2e
def test_kill_9_then_rerun_pays_only_what_no_segment_recorded(s3_bucket, make_server, tmp_path):  # noqa: F811
    server = make_server(latency_ms=150)
    killed = _killed_mid_run(KILL_SCRIPT, "k", "Killed bucket run", f"s3://{BUCKET}/out/killed", server, tmp_path)
    args, env, remote, texts, recorded, paid_at_kill = killed
    assert 6 <= len(recorded) < len(texts) and remote.exists(LEASE_FILE), "killed mid-run, its lease left behind"

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert server.stats()["generations_total"] - paid_at_kill == len(texts) - len(recorded), \
        "the rerun sent exactly what no segment held"
    assert paid_at_kill - len(recorded) <= 2 * 2 + 4, "lost at the kill: in flight, or finished in the last flush"
    table = remote.read_table(["id", "status"])
    assert sorted(table["id"].to_pylist()) == sorted(f"k{i:02d}" for i in range(40))
    assert set(table["status"].to_pylist()) == {"done"} and not remote.exists(LEASE_FILE)
    print(f"\nrecorded at the kill: {len(recorded)}; paid but unrecorded: {paid_at_kill - len(recorded)}")


MIRROR_KILL_SCRIPT = """
import sys
from pathlib import Path
from voxmill.bucket import mirrored
from voxmill.jobs import JobRequest, run_job
from voxmill.settings import ApiKey, RateLimit, Settings
settings = Settings(api_key=ApiKey(sys.argv[3]), base_url=sys.argv[4], rate_limit=RateLimit(max_concurrent=2),
                    cache_dir=sys.argv[5])
with mirrored(sys.argv[2]) as local:  # what an audiobook job into a URL runs its chunks in
    run_job(JobRequest("tts", sys.argv[1], Path(local), batch_size=5, workers=1), settings)
"""


@pytest.mark.e2e
def test_a_mirrored_job_ships_as_it_goes_so_a_kill_loses_only_the_last_flush(s3_bucket, make_server,  # noqa: F811
                                                                             tmp_path):
    server = make_server(latency_ms=150)
    killed = _killed_mid_run(MIRROR_KILL_SCRIPT, "m", "Mirrored run", f"s3://{BUCKET}/out/mirrored", server,
                             tmp_path)  # rows reach the bucket while the job still runs
    args, env, remote, texts, recorded, paid_at_kill = killed
    assert 6 <= len(recorded) < len(texts)
    assert all(remote.exists(f"audio/{item}.wav") for item in recorded), "outputs land before their rows"

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert server.stats()["generations_total"] - paid_at_kill == len(texts) - len(recorded), \
        "the rerun sent exactly what no segment held"
    table = remote.read_table(["id", "status"])
    assert sorted(table["id"].to_pylist()) == [f"m{i:02d}" for i in range(40)]
    assert set(table["status"].to_pylist()) == {"done"} and not remote.exists(LEASE_FILE)
