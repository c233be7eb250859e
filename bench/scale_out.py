"""Scale-out benchmark (not a test): outputs into a bucket vs a local directory, and the cross-machine rate budgets.

    .venv/bin/python bench/scale_out.py                          # both parts
    .venv/bin/python bench/scale_out.py --parts bucket --items 10000
    .venv/bin/python bench/scale_out.py --parts scopes --scope-items 150

Parts (``--parts bucket,scopes``):
- **bucket**: ``run_job`` of ``--items`` TTS items (null engine in its own process, limited to ``--rps``)
  into a local directory, then the same manifest into ``s3://…`` on a moto server (its own process,
  ``moto_server``). Wall time of each, the bucket/local ratio, and the objects that landed. Then ``--puts``
  objects the size of an output PUT alone into the same moto, the way the shipper uploads them: the bucket's
  own ceiling in PUT/s and the CPU each PUT costs the client and moto.
- **scopes**: three OS processes (separate cache directories: no machine budget in common), no rate given,
  against a server limited to 20 req/s, sharing one budget through ``rate_scope=prefect`` (a Prefect global
  concurrency limit on a test Prefect API) and then ``rate_scope=redis`` (a ``redis-server`` on loopback).
  The admitted rate after slow start and the share of 429s, from the server's own counters.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import ROOT, ServerProcess, free_port  # noqa: E402

JOB = """
import json, sys, time
from pathlib import Path
from tasks.settings import resolve_settings
from voxmill.jobs import JobRequest, out_location, run_job
from voxmill.options import RunOptions
scope = sys.argv[3] or None
rps = float(sys.argv[4]) if sys.argv[4] else None
settings = resolve_settings(RunOptions(rate_scope=scope, requests_per_second=rps))
started = time.monotonic()
summary = run_job(JobRequest("tts", sys.argv[1], **out_location(sys.argv[2]), workers=4), settings)
print(json.dumps({"done": summary.done, "failed": summary.failed, "wall_s": time.monotonic() - started,
                  "cpu_s": time.process_time()}))
"""


def write_manifest(path: Path, prefix: str, items: int) -> Path:
    with open(path, "w") as handle:
        handle.write("id,text\n")
        for i in range(items):
            handle.write(f"{prefix}{i},Scale-out benchmark line {i} of {prefix}.\n")
    return path


def run_jobs(specs: list[tuple[Path, str]], env: dict[str, str], scope: str, rps: str, tmp: Path) -> list[dict]:
    processes = []
    for n, (manifest, out) in enumerate(specs):
        processes.append(subprocess.Popen(
            [sys.executable, "-c", JOB, str(manifest), out, scope, rps],
            env={**env, "VOXMILL_CACHE_DIR": str(tmp / f"cache-{scope or 'machine'}-{n}")}, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a job failed:\n{stderr[-3000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


class Moto:
    """``moto_server`` in its own process on a loopback port, with a bucket."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        self.process = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": self.endpoint}
        import s3fs

        deadline = time.monotonic() + 30
        while True:
            try:
                self.fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.endpoint}, key="bench",
                                            secret="bench")
                self.fs.mkdir("bench")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def part_bucket(args: argparse.Namespace, tmp: Path) -> None:
    server = ServerProcess(args.rps, args.latency_ms)
    moto = Moto()
    try:
        env = {**os.environ, **moto.env, "PYTHONPATH": str(ROOT), "VOXMILL_API_KEY": server.token,
               "VOXMILL_BASE_URL": server.base_url, "VOXMILL_CONCURRENCY": str(args.concurrency),
               "TMPDIR": str(tmp)}
        manifest = write_manifest(tmp / "bucket.csv", "b", args.items)
        rows = []
        for name, out in (("local directory", str(tmp / "out-local")), ("s3:// (moto)", "s3://bench/out")):
            server.reset()
            moto_cpu = moto.cpu_seconds()
            result = run_jobs([(manifest, out)], env, "", str(args.rps), tmp)[0]
            rows.append((name, result["done"], result["wall_s"], args.items / result["wall_s"], result["cpu_s"],
                         moto.cpu_seconds() - moto_cpu))
        objects = len(moto.fs.find("bench/out"))
        puts = puts_alone(moto, tmp, args.puts)
    finally:
        moto.stop()
        server.stop()
    print(f"\n{args.items} TTS items, server limited to {args.rps:g} req/s, {args.latency_ms:g} ms latency, "
          f"concurrency {args.concurrency}")
    print(f"{'output':<18}{'done':>7}{'wall s':>9}{'items/s':>9}{'× local':>9}{'job CPU s':>11}{'moto CPU s':>12}")
    for name, done, wall, rate, cpu, moto_cpu in rows:
        print(f"{name:<18}{done:>7}{wall:>9.1f}{rate:>9.1f}{rows[0][2] / wall:>9.2f}{cpu:>11.1f}{moto_cpu:>12.1f}")
    print(f"objects in the bucket after the run: {objects}")
    count, wall, cpu, moto_cpu, size = puts
    print(f"PUTs alone, same moto, {count} objects of {size / 1000:.0f} kB (an output's size) through "
          f"RemoteOut.upload_many, nothing else running: {count / wall:.0f} PUT/s, {1000 * cpu / count:.2f} ms "
          f"client CPU and {1000 * moto_cpu / count:.2f} ms moto CPU per PUT; the local job ran at "
          f"{rows[0][3]:.0f} items/s")


def puts_alone(moto: Moto, tmp: Path, count: int) -> tuple[int, float, float, float, int]:
    """Upload ``count`` files the size of the job's outputs, the way the shipper does: the bucket's own ceiling."""
    from voxmill.bucket import RemoteOut

    outputs = sorted((tmp / "out-local" / "audio").glob("*"))
    size = outputs[0].stat().st_size if outputs else 20_000
    scratch = tmp / "puts"
    (scratch / "audio").mkdir(parents=True)
    names = [f"audio/p{i}.wav" for i in range(count)]
    for name in names:
        (scratch / name).write_bytes(os.urandom(size))
    os.environ.update(moto.env)  # this process talks to the same moto as the jobs did
    remote = RemoteOut("s3://bench/puts")
    moto_cpu, cpu, started = moto.cpu_seconds(), time.process_time(), time.monotonic()
    for first in range(0, count, 100):  # the shipper's flushes carry ~100 outputs each at 200 items/s
        remote.upload_many(scratch, names[first:first + 100])
    return count, time.monotonic() - started, time.process_time() - cpu, moto.cpu_seconds() - moto_cpu, size


def part_scopes(args: argparse.Namespace, tmp: Path) -> None:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    server = ServerProcess(20.0, args.latency_ms)
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    rows = []
    try:
        with prefect_test_harness(server_startup_timeout=120):
            env = {**os.environ, "PYTHONPATH": str(ROOT), "VOXMILL_API_KEY": server.token,
                   "VOXMILL_BASE_URL": server.base_url, "VOXMILL_CONCURRENCY": "8", "VOXMILL_MAX_ATTEMPTS": "8",
                   "PREFECT_API_URL": PREFECT_API_URL.value(), "DO_NOT_TRACK": "1",
                   "VOXMILL_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
            for scope in ("prefect", "redis"):
                server.reset()
                specs = [(write_manifest(tmp / f"{scope}-{n}.csv", f"{scope}{n}-", args.scope_items),
                          str(tmp / f"o-{scope}-{n}")) for n in range(3)]
                samples: list[tuple[float, int, int]] = []
                started = time.monotonic()
                stop = threading.Event()

                def sample(stop: threading.Event = stop, samples: list = samples, started: float = started) -> None:
                    while not stop.wait(0.5):
                        stats = server.stats()["by_status"]
                        samples.append((time.monotonic() - started, stats.get("200", 0), stats.get("429", 0)))

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                results = run_jobs(specs, env, scope, "", tmp)
                stop.set()
                sampler.join()
                total = 3 * args.scope_items
                busy = [s for s in samples if 0 < s[1] < total - 10]
                first = next(s for s in busy if s[0] >= busy[0][0] + 3.0)
                last = busy[-1]
                steady = (last[1] - first[1]) / (last[0] - first[0])
                final = server.stats()["by_status"]
                ok, limited = final.get("200", 0), final.get("429", 0)
                rows.append((scope, sum(r["done"] for r in results), steady, 100.0 * limited / (ok + limited)))
    finally:
        redis.kill()
        server.stop()
    print(f"\n3 processes × {args.scope_items} items, no rate given, server limited to 20 req/s")
    print(f"{'rate_scope':<12}{'done':>7}{'req/s after slow start':>25}{'× limit':>9}{'429 %':>8}")
    for scope, done, steady, share in rows:
        print(f"{scope:<12}{done:>7}{steady:>25.2f}{steady / 20:>9.2f}{share:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="bucket,scopes")
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--puts", type=int, default=2000, help="objects PUT alone after the bucket runs")
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--scope-items", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="voxmill-scale-") as tmp:
        for part in args.parts.split(","):
            {"bucket": part_bucket, "scopes": part_scopes}[part](args, Path(tmp))


if __name__ == "__main__":
    main()
