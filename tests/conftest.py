"""Shared fixtures: local servers on real loopback sockets.

- ``real_server`` (session): piper + faster-whisper, models preloaded, faults off. A test that changes its
  faults restores them (``with real_server.faults(...)``) and must not rely on absolute counters without
  ``reset_stats()`` first.
- ``prefect_api`` (session): a Prefect test harness; subprocesses given its URL skip Prefect's start.
- ``make_server`` (function): a factory ``make_server(engine="null", **fault_fields)`` of fresh servers,
  stopped after the test; ``null_server`` is one such server with no faults.

Each server is a :class:`LocalServer` with ``base_url``, ``token``, ``headers``, ``stats()``,
``set_faults(**fields)``, ``clear_faults()``, ``reset_stats()``, the ``faults(**fields)`` context manager and
``wait_for(predicate)``, which polls ``/admin/stats`` (e.g. the ``in_flight`` gauge) instead of sleeping.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from voxmill.server import FaultConfig, RunningServer, ServerConfig, serve_in_thread


@dataclass
class LocalServer:
    """A running local server and the admin calls a test needs."""

    running: RunningServer

    @property
    def base_url(self) -> str:
        return self.running.base_url

    @property
    def token(self) -> str:
        return self.running.token

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header for this server."""
        return {"Authorization": f"Bearer {self.token}"}

    def stats(self) -> dict[str, Any]:
        """``GET /admin/stats``."""
        response = httpx.get(f"{self.base_url}/admin/stats", headers=self.headers)
        response.raise_for_status()
        return response.json()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """Poll ``/admin/stats`` until ``predicate(stats)`` holds (the stats then); AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"server stats never matched within {timeout:g} s: {stats}")
            time.sleep(0.02)

    def wait_settled(self, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until every request that has arrived so far is answered (and billed): after killing one client
        among several, what the dead one had sent is then counted, while the others' newer requests go on."""
        arrived = self.stats()["arrived"]
        return self.wait_for(lambda stats: stats["settled_through"] >= arrived, timeout)

    def reset_stats(self) -> None:
        """``POST /admin/reset``: counters, credits and fault memory back to zero."""
        httpx.post(f"{self.base_url}/admin/reset", headers=self.headers).raise_for_status()

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        """``PUT /admin/faults`` with these fields (the others keep their values); the new config."""
        response = httpx.put(f"{self.base_url}/admin/faults", json=fields, headers=self.headers)
        response.raise_for_status()
        return response.json()

    def clear_faults(self) -> None:
        """Every fault back to off."""
        self.set_faults(**FaultConfig().to_dict())

    @contextmanager
    def faults(self, **fields: Any) -> Iterator[LocalServer]:
        """Faults set for the ``with`` block, cleared after it (stats reset before it)."""
        self.reset_stats()
        self.set_faults(**fields)
        try:
            yield self
        finally:
            self.clear_faults()
            self.reset_stats()


#: a test that uses one of these fixtures (directly or through another fixture) needs that tier's resource
TIER_BY_FIXTURE = {"real_server": "engines", "prefect_api": "prefect"}


#: ``make test`` runs the ``rate`` tests in lanes side by side (tests/run_suite.py, ``VOXMILL_RATE_LANE=i/n``):
#: these files make lane 1, every other file the last lane (about 220 s each)...
RATE_LANE_1 = ("tests/voxmill/test_throughput_latency.py", "tests/voxmill/test_rate_adaptive.py")
#: ...except these, which time CPU-bound work (a CLI's start: 2.25 s against 2 s beside the parallel stage): lane
#: 0, run alone once everything else has ended
RATE_SOLO = ("tests/voxmill/test_limits.py", "tests/voxmill/test_server_abuse.py", "tests/voxmill/test_limiter.py")


def free_port() -> int:
    """A loopback port free right now (for a server a test starts in another process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rate_lane(item: pytest.Item, lanes: int) -> int:
    path = item.nodeid.split("::")[0]
    return 0 if path in RATE_SOLO else 1 if path in RATE_LANE_1 else lanes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with the tiers its fixtures imply (``make test-fast`` leaves those tiers out); with
    ``VOXMILL_RATE_LANE=i/n``, keep only lane i's tests."""
    for item in items:
        for fixture, tier in TIER_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(tier)
    lane = os.environ.get("VOXMILL_RATE_LANE")
    if lane:
        mine, lanes = map(int, lane.split("/"))
        config.hook.pytest_deselected(items=[item for item in items if _rate_lane(item, lanes) != mine])
        items[:] = [item for item in items if _rate_lane(item, lanes) == mine]


#: ``tests/run_suite.py --cpu-log FILE``: each test's CPU seconds appended to FILE (its own process, and the
#: processes it started and reaped: a module fixture's servers count at the module's last test)
CPU_LOG = "VOXMILL_TEST_CPU_LOG"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    log = os.environ.get(CPU_LOG)
    before, started = os.times(), time.monotonic()
    yield
    if log:
        after = os.times()
        own = after.user - before.user + after.system - before.system
        reaped = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        with open(log, "a") as handle:  # one short line per write: lines of parallel workers do not interleave
            handle.write(f"{item.nodeid}\t{own:.2f}\t{reaped:.2f}\t{time.monotonic() - started:.2f}\n")


@pytest.fixture(scope="session")
def real_server() -> Iterator[LocalServer]:
    """One real-engine server for the whole session (models load once, ~2 s)."""
    config = ServerConfig(token=secrets.token_urlsafe(12), engine="real", preload=True)
    with serve_in_thread(config) as running:
        yield LocalServer(running)


@pytest.fixture
def make_server() -> Iterator[Callable[..., LocalServer]]:
    """Factory of fresh servers: ``make_server(engine="null", **fault_fields)``; all stop after the test."""
    started: list[RunningServer] = []

    def make(engine: str = "null", **fault_fields: Any) -> LocalServer:
        config = ServerConfig(
            token=secrets.token_urlsafe(12), engine=engine, faults=FaultConfig(**fault_fields)  # type: ignore[arg-type]
        )
        running = serve_in_thread(config)
        started.append(running)
        return LocalServer(running)

    yield make
    for running in started:
        running.stop()


@pytest.fixture
def null_server(make_server: Callable[..., LocalServer]) -> LocalServer:
    """A fresh null-engine server, no faults."""
    return make_server()


def _wait_healthy(api_url: str, timeout: float) -> None:
    """Wait for the Prefect API at ``api_url`` (started by tests/run_suite.py beside the workers) to answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the suite's shared Prefect API {api_url} did not answer in {timeout} s"
        time.sleep(0.2)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A Prefect API for the session; yields its URL. ``make test`` starts one for all its xdist workers and
    names it in ``VOXMILL_TEST_PREFECT_API_URL`` (every test filters what it reads by its own run id or key);
    otherwise a Prefect test harness (temporary database and API) for this process.

    Subprocesses given ``PREFECT_API_URL`` use it too, so they skip Prefect's ~10–20 s ephemeral start.
    """
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    shared = os.environ.get("VOXMILL_TEST_PREFECT_API_URL")
    if shared:
        _wait_healthy(shared, timeout=120.0)
        with temporary_settings(updates={PREFECT_API_URL: shared}):
            yield shared
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
