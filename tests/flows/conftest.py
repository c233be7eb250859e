"""Prefect for flow tests: one temporary API server for the session, shared with subprocesses."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A Prefect test harness (temporary database and API) for the session; yields its API URL.

    Subprocesses given ``PREFECT_API_URL`` use it too, so they skip Prefect's ~10–20 s ephemeral start.
    """
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
