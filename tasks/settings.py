"""Settings for a flow run: the environment, overridden by flow parameters, the key from a Secret block."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace

from prefect import get_run_logger
from prefect.logging import get_logger

from tasks.rate import RATE_SCOPES, RateScope, prefect_source
from voxmill.errors import ConfigError
from voxmill.local_api import LocalEngine, api_settings
from voxmill.rate.redis_source import redis_source
from voxmill.settings import ApiKey, Settings

log = get_logger("voxmill")


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


#: where each shared scope's budget comes from (machine: the default file source, no factory)
_SCOPE_SOURCES = {"prefect": prefect_source, "redis": redis_source}


def resolve_settings(
    *,
    base_url: str | None = None,
    requests_per_second: float | None = None,
    requests_per_minute: float | None = None,
    max_concurrent: int | None = None,
    api_key_block: str | None = None,
    rate_scope: RateScope | None = None,
) -> Settings:
    """``Settings.from_env()`` with the flow's overrides; ``api_key_block`` names a Prefect Secret block.

    VOXMILL_API_KEY wins over the block; with neither the settings have no key (a local server, then).
    ``rate_scope`` (default: VOXMILL_RATE_SCOPE, else ``"machine"``): ``"prefect"`` shares the rate budget
    through a global concurrency limit of the Prefect API, with workers on any machine (:mod:`tasks.rate`);
    ``"redis"`` through a key in Redis at VOXMILL_REDIS_URL (:mod:`voxmill.rate.redis_source`).
    """
    scope = rate_scope or os.environ.get("VOXMILL_RATE_SCOPE", "").strip() or "machine"
    if scope not in RATE_SCOPES:
        raise ConfigError(f"rate scope must be one of {', '.join(RATE_SCOPES)}, got {scope!r} (VOXMILL_RATE_SCOPE)")
    settings = Settings.from_env()
    if api_key_block and settings.api_key is None:
        settings = settings.with_(api_key=key_from_block(api_key_block))
    limit = settings.rate_limit
    settings = settings.with_(
        rate_limit=replace(
            limit,
            requests_per_second=requests_per_second or limit.requests_per_second,
            requests_per_minute=requests_per_minute or limit.requests_per_minute,
            max_concurrent=max_concurrent or limit.max_concurrent,
            source_factory=_SCOPE_SOURCES.get(scope, limit.source_factory),
        )
    )
    if base_url:
        settings = settings.with_(base_url=base_url)
    return settings


@contextlib.contextmanager
def flow_settings(
    *,
    base_url: str | None = None,
    requests_per_second: float | None = None,
    requests_per_minute: float | None = None,
    max_concurrent: int | None = None,
    api_key_block: str | None = None,
    rate_scope: RateScope | None = None,
    local: bool = False,
    local_engine: LocalEngine = "real",
) -> Iterator[Settings]:
    """What every flow runs with: :func:`resolve_settings`, pointed at a local server (labelled, for the
    length of the ``with`` block) when asked for or when there is no key — as the CLI does."""
    settings = resolve_settings(
        base_url=base_url,
        requests_per_second=requests_per_second,
        requests_per_minute=requests_per_minute,
        max_concurrent=max_concurrent,
        api_key_block=api_key_block,
        rate_scope=rate_scope,
    )
    with api_settings(settings, local=local, engine=local_engine, announce=get_run_logger().warning) as settings:
        yield settings
