"""Settings for a flow run: the environment, overridden by flow parameters, the key from a Secret block."""

from __future__ import annotations

from dataclasses import replace

from voxmill.settings import ApiKey, Settings


def resolve_settings(
    *,
    base_url: str | None = None,
    requests_per_second: float | None = None,
    requests_per_minute: float | None = None,
    max_concurrent: int | None = None,
    api_key_block: str | None = None,
) -> Settings:
    """``Settings.from_env()`` with the flow's overrides; ``api_key_block`` names a Prefect Secret block."""
    settings = Settings.from_env()
    if api_key_block:
        from prefect.blocks.system import Secret

        settings = settings.with_(api_key=ApiKey(Secret.load(api_key_block).get()))
    limit = settings.rate_limit
    settings = settings.with_(
        rate_limit=replace(
            limit,
            requests_per_second=requests_per_second or limit.requests_per_second,
            requests_per_minute=requests_per_minute or limit.requests_per_minute,
            max_concurrent=max_concurrent or limit.max_concurrent,
        )
    )
    if base_url:
        settings = settings.with_(base_url=base_url)
    return settings
