"""A local server running in a background thread: :func:`serve_in_thread`, for tests, benchmarks and the local
server a run starts when it has no key (``voxmill.local_api``)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from voxmill.errors import ConfigError
from voxmill.server.app import create_app
from voxmill.server.service import ServerConfig

DEFAULT_HOST = "127.0.0.1"


@dataclass
class RunningServer:
    """A local server running in a background thread; a context manager that stops it on exit."""

    base_url: str
    token: str
    config: ServerConfig
    _server: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to finish and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def uvicorn_config(config: ServerConfig, host: str, port: int, lifespan: str = "auto") -> Any:
    """The ``uvicorn.Config`` of a local server: its app, and the HTTP protocol guarding its connections (whose
    refusals the app's counters count)."""
    import uvicorn

    from voxmill.server.connections import guarded_http_protocol

    app = create_app(config)
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan=lifespan, ws="websockets-sansio",
        http=guarded_http_protocol(config.header_timeout_s, config.max_connections_per_client,
                                   on_refused=app.state.service.stats.record_refused_connection),
    )


def serve_in_thread(
    config: ServerConfig, host: str = DEFAULT_HOST, port: int = 0, *, start_timeout: float = 120.0
) -> RunningServer:
    """Start the server on a real socket in a daemon thread and return once it accepts connections.

    ``port=0`` picks a free port. With ``config.preload`` the models are loaded before this returns.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn_config(config, host, port, lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"voxmill-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive():
            raise ConfigError(f"the local server did not start on {host}:{port} (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise ConfigError(f"the local server did not start within {start_timeout:.0f} s")
        time.sleep(0.01)
    bound_host, bound_port = server.servers[0].sockets[0].getsockname()[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningServer(f"http://{url_host}:{bound_port}", config.token, config, server, thread)


__all__ = ["DEFAULT_HOST", "RunningServer", "serve_in_thread", "uvicorn_config"]
