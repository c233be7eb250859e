"""Which API a run talks to: the hosted one when there is a key, else a local server started for the run.

The CLI and the flows decide the same way, here: ``local=True``, or no key and no base URL, means a
local server (the ``local`` extra's engines) on a loopback port for the length of the run. Its outputs are
labelled: every results row names the engine that made it.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator

from voxmill.errors import ConfigError
from voxmill.options import LocalEngine
from voxmill.settings import DEFAULT_BASE_URL, ApiKey, Settings


def wants_local_server(settings: Settings, *, local: bool) -> bool:
    """True when asked for, or when there is no key and no base URL other than the hosted API's."""
    return local or (settings.api_key is None and settings.base_url == DEFAULT_BASE_URL)


@contextlib.contextmanager
def api_settings(
    settings: Settings,
    *,
    local: bool = False,
    engine: LocalEngine = "real",
    announce: Callable[[str], None] = print,
) -> Iterator[Settings]:
    """``settings`` as they are, or pointed at a local server that lives as long as the ``with`` block."""
    if not wants_local_server(settings, local=local):
        yield settings
        return
    try:
        from voxmill.server import ServerConfig, serve_in_thread
    except ImportError as exc:
        raise ConfigError(
            f"no API key and no local server ({exc.name} is not installed): set VOXMILL_API_KEY, "
            "or install the local engines with `pip install 'voxmill[local]'`"
        ) from None
    reason = "local server asked for" if local else "no API key (VOXMILL_API_KEY or a Secret block)"
    announce(f"{reason}: using a local server ({engine} engines); outputs are labelled as local in results.parquet")
    token = secrets.token_urlsafe(12)
    with serve_in_thread(ServerConfig(token=token, engine=engine)) as server:
        yield settings.with_(api_key=ApiKey.for_local_server(token), base_url=server.base_url)


__all__ = ["LocalEngine", "api_settings", "wants_local_server"]
