"""A Prefect API server owned by one CLI run: it dies with the run, even on ``kill -9``.

Prefect's own ephemeral server outlives a killed parent (re-parented to PID 1, ~200 MB, forever). The CLI
starts the same server itself (uvicorn over Prefect's app factory, SQLite in ``PREFECT_HOME``) with the
kernel told to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``), and points Prefect at it through
Prefect's own settings context. A rerun after ``kill -9`` starts a fresh one on a free port; SQLite's journal
makes the database whole again. Linux only (elsewhere the server is only stopped on a normal exit).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx

from voxmill.errors import ConfigError

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
def owned_prefect_server(timeout: float = 120.0) -> Iterator[str]:
    """Start Prefect's API on a free loopback port for this ``with`` block; yields its API URL."""
    port = _free_port()
    parent = os.getpid()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
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


__all__ = ["owned_prefect_server"]
