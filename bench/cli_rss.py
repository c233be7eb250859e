"""Peak RSS of the ``voxmill`` CLI's own process (not a wrapper's, not its Prefect server's).

``ru_maxrss`` of a parent's children reports the largest waited-for descendant, which for the CLI is the
Prefect API it starts (~200 MB), and a wrapper's own ``ru_maxrss`` is the wrapper. So the CLI is started
here and its ``/proc/<pid>/status`` high-water mark (VmHWM) read every 20 ms until it exits (the last read
before exit is its peak, up to what it allocates in its last 20 ms).

Runs, in one go, against a null-engine local server it starts (`voxmill serve`): the CLI importing itself and
exiting (the baseline: what every command pays for Python, pyarrow, httpx…), ``voxmill synthesize`` of
``--items`` rows through its own Prefect API, and ``voxmill audiobook BOMB --list`` on a 3 GiB zip-bomb EPUB
(refused by the input limits). Prints one table, the ratios against the baseline measured in the same run.

    .venv/bin/python bench/cli_rss.py [--items 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_with_own_peak(cmd: list[str], env: dict[str, str], *, cwd: Path = ROOT,
                      timeout: float = 900) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, the process's own peak RSS in MB, its stdout + stderr) of ``cmd``."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        peak_kb = 0
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            if time.monotonic() - started > timeout:
                process.kill()
            time.sleep(0.02)
        log.seek(0)
        return process.returncode, time.monotonic() - started, peak_kb / 1024, log.read()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def null_server(*extra: str) -> Iterator[tuple[int, str]]:
    """``voxmill serve --engine null`` (plus ``extra`` flags) in its own process on a free port: (port, token)."""
    token, port = secrets.token_urlsafe(12), _free_port()
    log = tempfile.TemporaryFile("w+")
    server = subprocess.Popen([sys.executable, "-m", "voxmill.cli", "serve", "--engine", "null", "--port", str(port),
                               "--token", token, *extra], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"the local server did not start:\n{log.read()[-2000:]}") from None
                time.sleep(0.2)
        yield port, token
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000, help="rows of the synthesize run (default 2000)")
    args = parser.parse_args(argv)
    from tests.hostile_files import zip_bomb_epub

    python = sys.executable
    with null_server() as (port, token):
        with tempfile.TemporaryDirectory(prefix="voxmill-cli-rss-") as work_dir:
            work = Path(work_dir)
            manifest = work / "m.csv"
            with open(manifest, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id", "text"])
                writer.writerows((f"row-{n}", f"Peak memory check sentence number {n}.") for n in range(args.items))
            bomb = zip_bomb_epub(work / "bomb.epub", mib=3072)
            env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
            env.update(VOXMILL_API_KEY=token, VOXMILL_BASE_URL=f"http://127.0.0.1:{port}", PYTHONPATH=str(ROOT),
                       VOXMILL_CACHE_DIR=str(work / "cache"))
            runs = [
                ("import voxmill.cli (baseline)", [python, "-c", "import voxmill.cli"]),
                (f"voxmill synthesize, {args.items} rows (own Prefect API)",
                 [python, "-m", "voxmill.cli", "synthesize", str(manifest), "-o", str(work / "out"), "--no-progress",
                  "--concurrency", "16"]),
                ("voxmill audiobook 3 GiB zip bomb --list", [python, "-m", "voxmill.cli", "audiobook", str(bomb),
                                                             "--list"]),
            ]
            rows = [(name, *run_with_own_peak(cmd, env)) for name, cmd in runs]
    load = os.getloadavg()[0]
    print(f"\nCLI peak RSS (its own process, VmHWM polled every 20 ms); load average {load:.1f}, "
          f"{os.cpu_count()} cores\n")
    print(f"| {'run':<52} | exit | wall s | peak RSS MB | vs baseline |")
    print(f"|{'-' * 54}|------|--------|-------------|-------------|")
    base = rows[0][3]
    for name, code, wall, peak, _ in rows:
        print(f"| {name:<52} | {code:>4} | {wall:>6.1f} | {peak:>11.0f} | {peak / base:>10.2f}× |")
    for name, code, _, _, output in rows:
        if name.startswith("voxmill audiobook") and code != 2 or name.startswith("voxmill synthesize") and code != 0:
            print(f"\nunexpected exit of {name}:\n{output[-2000:]}", file=sys.stderr)
            raise SystemExit(1)


if __name__ == "__main__":
    main()
