"""Launch latency and sharded throughput on a real Prefect server.

Parts (``--parts launch,shards``):

- **launch**: ``voxmill synthesize`` of one item against an already-running Prefect server: seconds from
  ``Popen`` to the first request reaching the API (the local null server's own counter), against a plain
  ``python -c "import httpx; httpx.post(...)"`` baseline launched the same way, and ``import prefect`` alone.
  Goal: ≤ 3 s.
- **shards**: ``make deploy``'s stack (server, work pool, deployments, worker) and a null server limited to
  ``--rps`` requests/s; the synthesize deployment over ``--items`` items with ``shards=1`` then ``shards=2``
  (the job's rate limit is split between shards). The send rate is measured on the server (first to last
  request); billed twice = generations − items. Goal: the same aggregate rate, nothing billed twice.

Every number is relative to a baseline measured in the same run; the machine's load average is printed.
"""

from __future__ import annotations

import argparse
import csv
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from voxmill.cli.prefect_server import owned_prefect_server  # noqa: E402
from voxmill.server import FaultConfig, ServerConfig, serve_in_thread  # noqa: E402


def _requests(base_url: str, token: str) -> dict:
    return httpx.get(f"{base_url}/admin/stats", headers={"Authorization": f"Bearer {token}"}).json()


def _time_to_first_request(cmd: list[str], env: dict[str, str], base_url: str, token: str, limit: float = 120) -> float:
    before = _requests(base_url, token)["requests"]
    started = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < limit:
            if _requests(base_url, token)["requests"] > before:
                return time.perf_counter() - started
            time.sleep(0.01)
        raise RuntimeError(f"no request within {limit} s: {' '.join(cmd)}")
    finally:
        process.wait(timeout=300)


def bench_launch(repeats: int) -> None:
    token = secrets.token_urlsafe(12)
    with serve_in_thread(ServerConfig(token=token, engine="null")) as server, owned_prefect_server() as api_url:
        env = {**os.environ, "PREFECT_API_URL": api_url, "VOXMILL_API_KEY": token, "VOXMILL_BASE_URL": server.base_url,
               "PYTHONPATH": str(REPO), "DO_NOT_TRACK": "1"}
        post = (f"import httpx; httpx.post('{server.base_url}/api/v1/generate', headers={{'Authorization': "
                f"'Bearer {token}'}}, files={{'model': (None, 'higgs2p5'), 'text': (None, 'Hello there.')}})")
        rows: dict[str, list[float]] = {name: [] for name in ("plain httpx script", "import prefect (alone)",
                                                              "voxmill synthesize")}
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(repeats):
                manifest = Path(tmp) / f"m{i}.csv"
                manifest.write_text(f"id,text\nlaunch{i},Launch number {i}.\n")
                rows["plain httpx script"].append(
                    _time_to_first_request([sys.executable, "-c", post], env, server.base_url, token))
                started = time.perf_counter()
                subprocess.run([sys.executable, "-c", "import prefect"], env=env, check=True)
                rows["import prefect (alone)"].append(time.perf_counter() - started)
                cmd = [sys.executable, "-m", "voxmill.cli", "synthesize", str(manifest), "-o", f"{tmp}/out{i}",
                       "--no-progress"]
                rows["voxmill synthesize"].append(_time_to_first_request(cmd, env, server.base_url, token))
        base = statistics.median(rows["plain httpx script"])
        print(f"\nlaunch → first API request, Prefect server already running (median of {repeats}; "
              f"load {os.getloadavg()[0]:.2f})")
        print(f"{'':<26}{'median s':>10}{'min s':>8}{'× baseline':>12}")
        for name, values in rows.items():
            print(f"{name:<26}{statistics.median(values):>10.2f}{min(values):>8.2f}"
                  f"{statistics.median(values) / base:>12.1f}")


def bench_shards(items: int, rps: float) -> None:
    from voxmill.cli.deploy import deploy, undeploy

    token = secrets.token_urlsafe(12)
    faults = FaultConfig(rate_limit_rps=rps)
    with serve_in_thread(ServerConfig(token=token, engine="null", faults=faults)) as server, \
            tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "clone"
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.split()
        for name in listed:
            if (REPO / name).is_file():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes((REPO / name).read_bytes())
        manifest = Path(tmp) / "items.csv"
        with open(manifest, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "text"])
            writer.writerows([f"s{i}", f"Item {i} of the shard benchmark."] for i in range(items))
        saved = {k: os.environ.get(k) for k in ("VOXMILL_API_KEY", "VOXMILL_BASE_URL", "PREFECT_API_URL")}
        os.environ.update(VOXMILL_API_KEY=token, VOXMILL_BASE_URL=server.base_url)
        os.environ.pop("PREFECT_API_URL", None)
        try:
            import socket

            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            stack = deploy(root=root, port=port)
            results = []
            for shards in (1, 2):
                server_stats_before = _requests(server.base_url, token)
                out = Path(tmp) / f"out-{shards}"
                cmd = [sys.executable, "-m", "prefect", "deployment", "run", "voxmill-synthesize/synthesize",
                       "-p", f"manifest={manifest}", "-p", f"out_dir={out}", "-p", f"shards={shards}",
                       "--param", f'options={{"requests_per_second": {rps}, "max_concurrent": 32}}',
                       "-p", "output_format=wav",
                       "--watch"]
                process = subprocess.Popen(cmd, env=stack.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                first = last = None
                seen = server_stats_before["requests"]
                while process.poll() is None:
                    now = _requests(server.base_url, token)["requests"]
                    if now > seen:
                        first = first or time.perf_counter()
                        last, seen = time.perf_counter(), now
                    time.sleep(0.05)
                stats = _requests(server.base_url, token)
                sent = stats["requests"] - server_stats_before["requests"]
                made = stats["generations_total"] - server_stats_before["generations_total"]
                rate = sent / (last - first) if first and last and last > first else float("nan")
                results.append((shards, process.returncode, sent, made - items, rate))
            undeploy(root)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    base_rate = results[0][4]
    print(f"\n{items} items, server limited to {rps:.0f} req/s (load {os.getloadavg()[0]:.2f})")
    print(f"{'shards':<8}{'exit':>6}{'requests':>10}{'billed twice':>14}{'req/s':>9}{'× 1 shard':>11}")
    for shards, code, sent, twice, rate in results:
        print(f"{shards:<8}{code:>6}{sent:>10}{twice:>14}{rate:>9.1f}{rate / base_rate:>11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="launch,shards")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--rps", type=float, default=200.0)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if "launch" in parts:
        bench_launch(args.repeats)
    if "shards" in parts:
        bench_shards(args.items, args.rps)


if __name__ == "__main__":
    main()
