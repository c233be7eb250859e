"""``make test``: the whole suite in two stages, then one tally line.

1. Every test not marked ``rate``, on several pytest-xdist workers (``PYTEST_WORKERS``, default 4: most tests
   wait on sockets, subprocesses and Prefect, not on the CPU). Tests sharing a costly module fixture (a whole
   ``make deploy`` stack) carry an ``xdist_group`` and run on one worker (``--dist loadgroup``).
2. The ``rate`` tests (they measure rates and timings), serially, with the CPU to themselves.

``--fast`` runs only stage 1's unit and in-process-server tests (``make test-fast``): no real engines, no
Prefect, no end-to-end subprocess runs, no rate measurements. Both stages always run; the exit code is
non-zero when either failed. Extra arguments go to pytest (e.g. ``-k name``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = "not (engines or prefect or e2e or rate or slow)"
NO_TESTS_COLLECTED = 5


def _stage(name: str, args: list[str], report: Path) -> tuple[int, dict[str, int]]:
    report.unlink(missing_ok=True)
    started = time.monotonic()
    print(f"== {name}: pytest {' '.join(args)}", flush=True)
    code = subprocess.call([sys.executable, "-m", "pytest", *args, f"--junitxml={report}"], cwd=ROOT)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if report.exists():
        for suite in ET.parse(report).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    print(f"== {name}: {counts['tests']} tests in {time.monotonic() - started:.0f} s (exit {code})", flush=True)
    return (0 if code == NO_TESTS_COLLECTED else code), counts


#: the Prefect API every xdist worker's ``prefect_api`` fixture uses (tests/conftest.py), instead of one each
SHARED_PREFECT = "VOXMILL_TEST_PREFECT_API_URL"


@contextlib.contextmanager
def _shared_prefect_api(held: contextlib.ExitStack):  # type: ignore[no-untyped-def]
    """One Prefect API (a fresh SQLite database) for every worker of the suite: one server start, not four. Its
    URL is known before it answers, so it starts while the workers collect (the fixture waits for it). It dies
    with this process, even on kill -9."""
    sys.path.insert(0, str(ROOT))
    from voxmill.cli.prefect_server import _free_port, owned_prefect_server

    home = held.enter_context(tempfile.TemporaryDirectory(prefix="voxmill-suite-prefect-"))
    port, stop = _free_port(), threading.Event()

    def serve() -> None:
        try:
            with owned_prefect_server(home=home, port=port):
                stop.wait()
        except Exception as exc:  # the fixture times out naming the URL; say why here
            print(f"run_suite: the shared Prefect API did not start: {exc}", file=sys.stderr, flush=True)

    server = threading.Thread(target=serve, name="shared-prefect-api", daemon=True)
    server.start()
    os.environ[SHARED_PREFECT] = f"http://127.0.0.1:{port}/api"
    try:
        yield
    finally:
        os.environ.pop(SHARED_PREFECT, None)
        stop.set()
        server.join(timeout=20)


def main(argv: list[str]) -> int:
    fast = "--fast" in argv
    extra = [a for a in argv if a != "--fast"]
    workers = os.environ.get("PYTEST_WORKERS", "4")
    reports = ROOT / ".pytest-reports"
    reports.mkdir(exist_ok=True)
    # loadgroup: a group (xdist_group) goes whole to one worker, largest first; every other test is dealt one by
    # one to whichever worker is free (plain `load` deals contiguous chunks: all of tests/flows landed on one worker)
    parallel = ["-n", workers, "--dist", "loadgroup", "-m", FAST if fast else "not rate", *extra]
    stages = [("parallel", parallel, reports / "parallel.xml")]
    if not fast:
        stages.append(("serial", ["-p", "no:xdist", "-m", "rate", *extra], reports / "serial.xml"))
    started = time.monotonic()
    codes, total = [], {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    with contextlib.ExitStack() as held:
        if not fast and not os.environ.get(SHARED_PREFECT):
            held.enter_context(_shared_prefect_api(held))
        for name, args, report in stages:
            code, counts = _stage(name, args, report)
            codes.append(code)
            for key in total:
                total[key] += counts[key]
    failed = total["failures"] + total["errors"]
    passed = total["tests"] - failed - total["skipped"]
    print(f"suite ({time.monotonic() - started:.0f} s):")
    print(f"{passed} passed, {failed} failed, {total['skipped']} skipped")
    return max(codes) if any(codes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
