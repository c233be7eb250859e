"""``make test``'s runner (tests/run_suite.py): the parallel stage runs at the lowest CPU priority, and so do the
sessions its processes start (with autogroups on, a new session would otherwise compete at full weight with the
rate tests); each rate test lands in exactly one rate lane."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import run_suite  # noqa: E402

AUTOGROUPS = Path("/proc/self/autogroup").exists()


def _autogroup(pid: int) -> str:
    return Path(f"/proc/{pid}/autogroup").read_text().strip()


@pytest.mark.skipif(not AUTOGROUPS, reason="no scheduler autogroups on this kernel")
def test_a_session_started_below_the_parallel_stage_is_niced_too():
    mine = _autogroup(os.getpid())
    # the stage's process starts a child in a session of its own, as `make deploy`'s stack does
    stage = subprocess.Popen([sys.executable, "-c", "import subprocess, time\n"
                              "child = subprocess.Popen(['sleep', '30'], start_new_session=True)\n"
                              "print(child.pid, flush=True)\n"
                              "time.sleep(30)\n"], stdout=subprocess.PIPE, text=True,
                             preexec_fn=run_suite._lowest_priority)
    stop = threading.Event()
    watcher = threading.Thread(target=run_suite._keep_low, args=(stage.pid, stop), daemon=True)
    watcher.start()
    child = int(stage.stdout.readline())
    try:
        # a kernel that fails to create a session's autogroup (out of task groups or memory) leaves the session in
        # the root group, whose file reads empty: nothing to nice there, only the processes' own nice values. On CI
        # even this test's own session read empty
        own_groups = all(_autogroup(pid) for pid in (os.getpid(), stage.pid, child))
        if own_groups:
            assert _autogroup(stage.pid).split()[0] != mine.split()[0], "the stage has an autogroup of its own"
            assert _autogroup(child).split()[0] != _autogroup(stage.pid).split()[0], "the child's session: new"
            deadline = time.monotonic() + 10
            while not _autogroup(child).endswith("nice 19"):  # the watcher's pass, every 0.5 s
                assert time.monotonic() < deadline, _autogroup(child)
                time.sleep(0.05)
            assert _autogroup(stage.pid).endswith("nice 19")
        else:
            time.sleep(1.2)  # two of the watcher's passes: writing to a root group must not end it
            assert watcher.is_alive(), "the watcher survives a session without an autogroup"
        assert os.getpriority(os.PRIO_PROCESS, stage.pid) == 19 and os.getpriority(os.PRIO_PROCESS, child) == 19
        assert _autogroup(os.getpid()) == mine, "the runner's own session (the rate lanes') is left alone"
    finally:
        stop.set()
        os.kill(child, signal.SIGKILL)
        os.killpg(stage.pid, signal.SIGKILL)
        stage.wait()
        watcher.join(timeout=5)


def test_every_rate_test_is_in_exactly_one_lane():
    import conftest

    class Item:
        def __init__(self, nodeid: str) -> None:
            self.nodeid = nodeid

    items = [Item(f"{path}::test_x") for path in (*conftest.RATE_LANE_1, *conftest.RATE_SOLO,
                                                  "tests/flows/test_deploy.py", "tests/tasks/test_rate_redis.py")]
    for lanes in (1, 2, 3):
        placed = [conftest._rate_lane(item, lanes) for item in items]
        assert all(0 <= lane <= lanes for lane in placed), (lanes, placed)
    assert {conftest._rate_lane(item, 2) for item in items} == {0, 1, 2}, "two lanes and the solo one: all used"
