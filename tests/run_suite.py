"""``make test``: the whole suite in two stages, then one tally line.

1. Every test not marked ``rate``, on several pytest-xdist workers (``PYTEST_WORKERS``, default 4: most tests
   wait on sockets, subprocesses and Prefect, not on the CPU).
2. The ``rate`` tests (they measure rates and timings), serially, with the CPU to themselves.

``--fast`` runs only stage 1's unit and in-process-server tests (``make test-fast``): no real engines, no
Prefect, no end-to-end subprocess runs, no rate measurements. Both stages always run; the exit code is
non-zero when either failed. Extra arguments go to pytest (e.g. ``-k name``).
"""

from __future__ import annotations

import os
import subprocess
import sys
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


def main(argv: list[str]) -> int:
    fast = "--fast" in argv
    extra = [a for a in argv if a != "--fast"]
    workers = os.environ.get("PYTEST_WORKERS", "4")
    reports = ROOT / ".pytest-reports"
    reports.mkdir(exist_ok=True)
    stages = [("parallel", ["-n", workers, "-m", FAST if fast else "not rate", *extra], reports / "parallel.xml")]
    if not fast:
        stages.append(("serial", ["-p", "no:xdist", "-m", "rate", *extra], reports / "serial.xml"))
    started = time.monotonic()
    codes, total = [], {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
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
