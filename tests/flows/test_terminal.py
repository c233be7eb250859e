"""What a normal CLI run prints: voxmill's own lines and nothing of Prefect's internals (unless --verbose)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest


@pytest.mark.e2e
@pytest.mark.prefect
def test_a_normal_run_prints_only_voxmills_story(make_server, prefect_api, tmp_path):
    server = make_server()
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows((f"row-{n}", f"Terminal check sentence {n}.") for n in range(40))
    env = {**os.environ, "VOXMILL_API_KEY": server.token, "VOXMILL_BASE_URL": server.base_url,
           "PREFECT_API_URL": prefect_api}
    result = subprocess.run([sys.executable, "-m", "voxmill.cli", "synthesize", str(manifest), "-o",
                             str(tmp_path / "out"), "--no-progress"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines[0].startswith("40 done, 0 reused, 0 failed"), lines
    assert lines[1].startswith("results: "), lines
    assert len(lines) == 2, lines  # no EventsWorker "Still processing items", no Prefect log line


_EMIT = """
from voxmill.cli.prefect_server import prepare_prefect
prepare_prefect({verbose})
import logging
from prefect.logging.configuration import setup_logging
setup_logging()
logging.getLogger("EventsWorker").warning("Still processing items: 1 items remaining...")
from prefect._internal.concurrency import logger as internal
internal.error("Service %r failed to process item %r", "EventsWorker", "Event(...)")
logging.getLogger("prefect.events.clients").warning("Unable to connect to 'ws://127.0.0.1:1/api/events/in'.")
"""


@pytest.mark.e2e
@pytest.mark.parametrize("verbose", [False, True])
def test_prefects_internal_warnings_reach_the_terminal_only_with_verbose(verbose, tmp_path):
    """The lines Prefect's event and log workers print (at the end of a run, or while a Prefect server restarts)
    are emitted as they are in a run: hidden without --verbose, shown with it."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path)}
    env.pop("PREFECT_LOGGING_INTERNAL_LEVEL", None)
    result = subprocess.run([sys.executable, "-c", _EMIT.format(verbose=verbose)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    shown = ("Still processing items" in result.stderr, "failed to process item" in result.stderr,
             "Unable to connect" in result.stderr)
    assert shown == (verbose, verbose, verbose), result.stderr
