"""``make test``: the whole suite in three waves, then one tally line.

1. Every test not marked ``rate``, on several pytest-xdist workers (``PYTEST_WORKERS``, default 4: most tests
   wait on sockets, subprocesses and Prefect, not on the CPU). Tests sharing a costly module fixture (a whole
   ``make deploy`` stack) carry an ``xdist_group`` and run on one worker (``--dist loadgroup``).
2. The ``rate`` tests (they measure rates and timings, mostly waiting on slow servers), one at a time in each of
   ``RATE_LANES`` lanes (default 2; the lane of a file is set in tests/conftest.py), the lanes beside each other
   once stage 1 has ended. Their output goes to ``.pytest-reports/<lane>.log`` and is printed as each ends.
3. The solo lane: the rate tests that time CPU-bound work (a CLI's start, a request's handling; listed in
   tests/conftest.py), once the others have ended, with the machine to themselves.

``--overlap`` runs the rate lanes beside stage 1 instead, with stage 1 and everything it starts at the lowest
CPU priority (nice 19, and so do the scheduler autogroups of the sessions its processes start): faster on an
idle machine, but on this 2-core one two clean-clone runs each failed a test that times CPU-bound work, so it
is not the default. ``--cpu-log FILE`` appends each test's CPU seconds to FILE and prints the files that cost
the most (tests/conftest.py: a test's own process and the processes it reaped). ``--fast`` runs only stage
1's unit and in-process-server tests (``make test-fast``): no real engines, no Prefect, no end-to-end
subprocess runs, no rate measurements. Every stage always runs; the exit code is non-zero when any failed.
Extra arguments go to pytest (e.g. ``-k name``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = "not (engines or prefect or e2e or rate or slow)"
NO_TESTS_COLLECTED = 5
RECAP_LINES = 25  # of each failure, repeated after the tally: a CI log's tail then names what failed and why


LOWEST = 19
RATE_LANE = "VOXMILL_RATE_LANE"  # "i/n": tests/conftest.py keeps only the rate tests of lane i of n


@dataclass
class Stage:
    """One pytest run of the suite: its arguments, where its JUnit report (and, in the background, its output)
    goes, and whether it yields the CPU."""

    name: str
    args: list[str]
    low_priority: bool = False
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None  # output to this file (printed at the end) instead of the terminal

    def report(self, reports: Path) -> Path:
        return reports / f"{self.name}.xml"


def _lowest_priority() -> None:
    """In the child before exec: nice 19, in a session (scheduler autogroup) of its own that is niced too; with
    autogroups on, a nice value counts only against processes of the same session."""
    os.setsid()
    os.nice(LOWEST)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(LOWEST))


def _keep_low(root: int, stop: threading.Event) -> None:
    """Every 0.5 s, nice the autogroup of each descendant of ``root`` that started a session of its own (a
    ``make deploy`` stack's server and worker, their flow runs): nice 19 alone would not hold them back. Only new
    pids' parents are read, and only the descendants' autogroups (about 1 ms a pass)."""
    parent_of: dict[int, int] = {}
    below = {root}
    while not stop.wait(0.5):
        alive = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
        for pid in parent_of.keys() - set(alive):  # ended: a later process may reuse the pid
            del parent_of[pid]
        for pid in alive:
            if pid not in parent_of:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    parent_of[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent_of.get(pid) in below:
                    below.add(pid)
        for pid in list(below - {root}):
            group = Path(f"/proc/{pid}/autogroup")
            try:
                shown = group.read_text().rstrip()  # empty: the kernel left the session in the root group
                if shown and not shown.endswith(f"nice {LOWEST}"):
                    group.write_text(str(LOWEST))
            except OSError:  # it ended
                below.discard(pid)


@dataclass
class Running:
    """A stage's pytest process, started."""

    stage: Stage
    process: subprocess.Popen
    started: float
    report: Path
    stop: threading.Event = field(default_factory=threading.Event)
    summary: str = ""
    ended: threading.Event = field(default_factory=threading.Event)
    wall_s: float = 0.0

    def watch(self) -> None:
        """Note when the process ends (a lane may end long before the stage finish() waits on first)."""
        def wait() -> None:
            self.process.wait()
            self.wall_s = time.monotonic() - self.started
            self.ended.set()

        threading.Thread(target=wait, name=f"wait-{self.stage.name}", daemon=True).start()

    def finish(self) -> tuple[int, dict[str, int]]:
        code = self.process.wait()
        self.stop.set()
        self.ended.wait()
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if self.report.exists():
            for suite in ET.parse(self.report).getroot().iter("testsuite"):
                for key in counts:
                    counts[key] += int(suite.get(key, 0))
        self.summary = (f"== {self.stage.name}: {counts['tests']} tests in {self.wall_s:.0f} s "
                        f"(exit {code})")
        return (0 if code == NO_TESTS_COLLECTED else code), counts

    def failures(self) -> list[str]:
        """Each failed or erroring test of the stage's report: its id, then the end of what pytest said of it."""
        if not self.report.exists():
            return []
        found = []
        for case in ET.parse(self.report).getroot().iter("testcase"):
            for outcome in [*case.iter("failure"), *case.iter("error")]:
                text = "\n".join((outcome.text or outcome.get("message", "")).rstrip().splitlines()[-RECAP_LINES:])
                found.append(f"{self.stage.name}: {case.get('classname')}::{case.get('name')} "
                             f"({outcome.tag})\n{text}")
        return found


def _start(stage: Stage, reports: Path) -> Running:
    report = stage.report(reports)
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", *stage.args, f"--junitxml={report}"]
    print(f"== {stage.name}: pytest {' '.join(stage.args)}" + (f" (output: {stage.log})" if stage.log else "")
          + (" at nice 19" if stage.low_priority else ""), flush=True)
    output = open(stage.log, "w") if stage.log else None  # noqa: SIM115 (closed by the child's exit)
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **stage.env}, stdout=output,
                               stderr=subprocess.STDOUT if output else None,
                               preexec_fn=_lowest_priority if stage.low_priority else None)
    if output:
        output.close()
    running = Running(stage, process, time.monotonic(), report)
    running.watch()
    if stage.low_priority:
        threading.Thread(target=_keep_low, args=(process.pid, running.stop), name="keep-low", daemon=True).start()
    return running


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


def _waves(fast: bool, overlap: bool, extra: list[str]) -> list[list[Stage]]:
    """The stages, in waves: the stages of a wave run at the same time, a wave after the last."""
    workers = os.environ.get("PYTEST_WORKERS", "4")
    # loadgroup: a group (xdist_group) goes whole to one worker, largest first; every other test is dealt one by
    # one to whichever worker is free (plain `load` deals contiguous chunks: all of tests/flows landed on one worker)
    parallel = ["-n", workers, "--dist", "loadgroup", "-m", FAST if fast else "not rate", *extra]
    if fast:
        return [[Stage("parallel", parallel)]]
    lanes = int(os.environ.get("RATE_LANES", "2"))
    reports = ROOT / ".pytest-reports"
    rate = ["-p", "no:xdist", "-m", "rate", "-rP", *extra]  # -rP: the figures each rate test printed, passed or not
    lanes_ = [Stage(f"rate-{n}", rate, env={RATE_LANE: f"{n}/{lanes}"}, log=reports / f"rate-{n}.log")
              for n in range(1, lanes + 1)]
    # the solo lane: rate tests that time CPU-bound work (a CLI's start), once nothing else runs
    solo = [Stage("rate-solo", rate, env={RATE_LANE: f"0/{lanes}"})]
    if overlap:
        return [[Stage("parallel", parallel, low_priority=True), *lanes_], solo]
    return [[Stage("parallel", parallel)], lanes_, solo]


def _cpu_report(log: Path, most: int = 15) -> str:
    """CPU seconds per test file from a ``--cpu-log`` file, the costliest first."""
    by_file: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        nodeid, own, reaped, wall = line.split("\t")
        cost = by_file.setdefault(nodeid.split("::")[0], [0.0, 0.0, 0.0, 0])
        cost[0] += float(own)
        cost[1] += float(reaped)
        cost[2] += float(wall)
        cost[3] += 1
    total = sum(c[0] + c[1] for c in by_file.values())
    lines = [f"CPU s by test file (own + reaped children; {total:.0f} CPU s in all, {log}):"]
    for path, (own, reaped, wall, tests) in sorted(by_file.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:most]:
        lines.append(f"{own + reaped:8.1f}  own {own:6.1f}  reaped {reaped:6.1f}  wall {wall:6.1f}  "
                     f"{int(tests):3d} tests  {path}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    fast = "--fast" in argv
    overlap = "--overlap" in argv
    cpu_log = None
    if "--cpu-log" in argv:
        at = argv.index("--cpu-log")
        cpu_log = Path(argv[at + 1]).resolve()
        argv = argv[:at] + argv[at + 2:]
        cpu_log.unlink(missing_ok=True)
        os.environ["VOXMILL_TEST_CPU_LOG"] = str(cpu_log)
    extra = [a for a in argv if a not in ("--fast", "--overlap")]
    reports = ROOT / ".pytest-reports"
    reports.mkdir(exist_ok=True)
    waves = _waves(fast, overlap, extra)
    started = time.monotonic()
    codes, total = [], {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failures: list[str] = []
    with contextlib.ExitStack() as held:
        if not fast and not os.environ.get(SHARED_PREFECT):
            held.enter_context(_shared_prefect_api(held))
        running: list[Running] = []
        try:
            # the stages of a wave at the same time, each wave after the last
            for group in waves:
                started_now = [_start(stage, reports) for stage in group]
                running += started_now
                for run, (code, counts) in [(run, run.finish()) for run in started_now]:
                    if run.stage.log:
                        print(f"== {run.stage.name}'s output:\n{run.stage.log.read_text()}", end="")
                    print(run.summary, flush=True)
                    codes.append(code)
                    failures += run.failures()
                    for key in total:
                        total[key] += counts[key]
        except BaseException:  # Ctrl-C: stage 1 has a session of its own, so the terminal's SIGINT missed it
            for run in running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.process.pid, signal.SIGINT) if run.stage.low_priority else run.process.terminate()
            raise
    failed = total["failures"] + total["errors"]
    passed = total["tests"] - failed - total["skipped"]
    if cpu_log is not None and cpu_log.exists():
        print(_cpu_report(cpu_log), flush=True)
    for failure in failures:
        print(f"== FAILED {failure}\n", flush=True)
    print(f"suite ({time.monotonic() - started:.0f} s):")
    print(f"{passed} passed, {failed} failed, {total['skipped']} skipped")
    return max(codes) if any(codes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
