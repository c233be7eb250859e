"""Prefect for the commands that run flows: :func:`prepare_prefect` (settings and quiet logs before Prefect is
imported) and :func:`prefect_api` (the configured API, else one this run owns).

A Prefect API server owned by one CLI run dies with the run, even on ``kill -9``.

Prefect's own ephemeral server outlives a killed parent (re-parented to PID 1, ~200 MB, forever). The CLI
starts the same server itself (uvicorn over Prefect's app factory, SQLite in ``PREFECT_HOME``) with the
kernel told to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``), and points Prefect at it through
Prefect's own settings context. A rerun after ``kill -9`` starts a fresh one on a free port; SQLite's journal
makes the database whole again. Linux only (elsewhere the server is only stopped on a normal exit).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx

from voxmill.errors import ConfigError, VoxmillError

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """In the child, before exec: ask for SIGKILL when the parent goes (and go now if it already has)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: a normal exit still stops it
        return
    if os.getppid() != parent_pid:  # the parent died between fork and prctl
        os._exit(1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def owned_prefect_server(
    timeout: float = 120.0, home: str | None = None, port: int | None = None
) -> Iterator[str]:
    """Start Prefect's API on a loopback port (default: a free one) for this ``with`` block; yields its API URL.
    ``home``: its ``PREFECT_HOME`` (where its SQLite database lives; default: this process's)."""
    port = port or _free_port()
    parent = os.getpid()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    if home is not None:
        env["PREFECT_HOME"] = home
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--host",
           "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   preexec_fn=lambda: _die_with_parent(parent))
        api_url = f"http://127.0.0.1:{port}/api"
        try:
            _wait_healthy(api_url, process, log, timeout)
            yield api_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(api_url: str, process: subprocess.Popen, log, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log.seek(0)
                tail = log.read()[-1500:].decode(errors="replace")
                raise ConfigError(f"Prefect's API server exited with code {process.returncode} at start: {tail}")
            try:
                if client.get(f"{api_url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise ConfigError(f"Prefect's API server did not answer within {timeout:.0f} s; raise "
                      "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or run `make deploy` and set PREFECT_API_URL")


def prepare_prefect(verbose: bool) -> None:
    """Settings Prefect must see before it is imported: a patient ephemeral start, quiet logs, no telemetry."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if not verbose:
        # quiet on the terminal, but every run log line still reaches the Prefect server (the UI's logs tab):
        # a WARNING logger level would drop INFO records before the API handler saw them
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_drop_voxmill_tracebacks)
        logging.getLogger("prefect.flow_runs").addFilter(_drop_termination_crash)
        # Prefect's own machinery (event and log delivery) logs to loggers outside "prefect": "EventsWorker - Still
        # processing items…" ends many runs, and a restarting Prefect server dumps whole events and "Unable to
        # connect to …/events/in" warnings. Not the user's story: the job goes on either way.
        os.environ.setdefault("PREFECT_LOGGING_INTERNAL_LEVEL", "CRITICAL")
        # run logs go to the Prefect server too; while it is away Prefect's log shipper writes "--- Error logging
        # to API ---" straight to stderr unless logging errors are silenced (the stdlib's switch for production)
        logging.raiseExceptions = False
        for name in ("EventsWorker", "APILogWorker", "prefect.events.clients"):
            # a filter, not a level: Prefect's logging setup resets the levels of loggers under "prefect"
            logging.getLogger(name).addFilter(_drop_below_critical)
    if not os.environ.get("PREFECT_API_URL"):
        print("voxmill: starting Prefect's local API for this run (the first start takes ~20 s)…", file=sys.stderr)


def _drop_voxmill_tracebacks(record: logging.LogRecord) -> bool:
    """Prefect logs a flow stopped by a voxmill error with its traceback; ``main`` prints the message alone."""
    return not (record.exc_info and isinstance(record.exc_info[1], VoxmillError))


def _drop_below_critical(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL


def _drop_termination_crash(record: logging.LogRecord) -> bool:
    """After SIGTERM the CLI says what stopped and what is recorded; Prefect's "Crash detected!" would repeat it."""
    return "aborted by a termination signal" not in record.getMessage()


@contextlib.contextmanager
def prefect_api() -> Iterator[None]:
    """The Prefect API configured (PREFECT_API_URL, a profile); else one owned by this run, which dies with it
    (even on kill -9)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with owned_prefect_server(timeout=PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()) as api_url:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            try:
                yield
            finally:  # deliver what is queued while the server is still up
                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all(timeout=10)


__all__ = ["owned_prefect_server", "prefect_api", "prepare_prefect"]
