"""Settings for a run: :func:`voxmill.options.settings_for`, plus what needs Prefect (a Secret block, a budget).

:func:`resolve_settings` is the one function every entry point uses to turn a :class:`RunOptions` and the
environment into :class:`Settings`; :func:`run_settings` adds the local server when there is no key; flows use
:func:`flow_settings`, which logs to the run. Prefect is imported only where a feature needs it, so CLI
commands that run no flow do not pay for its import.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from voxmill.local_api import api_settings
from voxmill.options import RunOptions, settings_for
from voxmill.settings import ApiKey, Settings

log = logging.getLogger("voxmill")


def key_from_block(block_name: str) -> ApiKey | None:
    """The key in Prefect Secret block ``block_name`` (None when there is no such block).

    The key pickles as "load ``block_name`` again", so worker processes read it from the Prefect API.
    """
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(block_name).get()
    except ValueError:  # Prefect's "Unable to find block document named ..."
        log.warning("no Secret block %r: see deployments/README.md (`voxmill secret`)", block_name)
        return None
    return ApiKey(str(value), reload=(_reloaded_block_key, (block_name,)))


def _reloaded_block_key(block_name: str) -> ApiKey:
    key = key_from_block(block_name)
    if key is None:
        raise ValueError(f"Secret block {block_name!r} vanished while the run was going")
    return key


def resolve_settings(options: RunOptions) -> Settings:
    """``settings_for(options)``, with the key from ``options.api_key_block`` when VOXMILL_API_KEY is unset, and
    the rate budget in the Prefect API when the rate scope is ``"prefect"`` (:mod:`tasks.rate`)."""
    settings = settings_for(options)
    if options.api_key_block and settings.api_key is None:
        settings = settings.with_(api_key=key_from_block(options.api_key_block))
    if settings.rate_limit.scope == "prefect" and settings.rate_limit.source_factory is None:
        from dataclasses import replace

        from tasks.rate import prefect_source

        settings = settings.with_(rate_limit=replace(settings.rate_limit, source_factory=prefect_source))
    return settings


@contextlib.contextmanager
def run_settings(options: RunOptions, announce: Callable[[str], None]) -> Iterator[Settings]:
    """:func:`resolve_settings`, pointed at a local server (labelled, for the length of the ``with`` block) when
    ``options.local`` asks for one or there is no key — the same for every command and flow."""
    settings = resolve_settings(options)
    with api_settings(settings, local=options.local, engine=options.local_engine, announce=announce) as settings:
        yield settings


@contextlib.contextmanager
def flow_settings(options: RunOptions) -> Iterator[Settings]:
    """:func:`run_settings` inside a flow run: what it announces goes to the run's log."""
    from prefect import get_run_logger

    with run_settings(options, announce=get_run_logger().warning) as settings:
        yield settings


__all__ = ["flow_settings", "key_from_block", "resolve_settings", "run_settings"]
