"""A process-wide request to stop: SIGTERM (Prefect cancellation, a Kubernetes eviction) or Ctrl-C.

Once requested, every engine of the process stops sending and retrying at once, lets the requests in
flight finish for a bounded grace (``VOXMILL_STOP_GRACE`` seconds, default 15), records what came back,
and leaves the rest pending for a rerun. A signal is process-wide by nature, so this is the one piece of
run state that is not passed explicitly: engines subscribe with :func:`on_stop`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping

from voxmill.errors import ConfigError

DEFAULT_STOP_GRACE_S = 15.0
STOP_GRACE_ENV = "VOXMILL_STOP_GRACE"

_lock = threading.Lock()
_reason: str | None = None
_listeners: list[Callable[[str], None]] = []


def stop_grace_s(environ: Mapping[str, str] | None = None) -> float:
    """Seconds the requests in flight get once a stop is requested (``VOXMILL_STOP_GRACE``, default 15)."""
    raw = (os.environ if environ is None else environ).get(STOP_GRACE_ENV, "").strip()
    if not raw:
        return DEFAULT_STOP_GRACE_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{STOP_GRACE_ENV}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ConfigError(f"{STOP_GRACE_ENV}={raw!r} must be 0 or more")
    return value


def request_stop(reason: str) -> None:
    """Ask every engine of this process to stop (the first reason wins); safe from any thread or handler."""
    global _reason
    with _lock:
        if _reason is not None:
            return
        _reason = reason
        listeners = list(_listeners)
    for listener in listeners:
        listener(reason)


def stop_requested() -> str | None:
    """Why this process is stopping, or None."""
    return _reason


def on_stop(listener: Callable[[str], None]) -> Callable[[], None]:
    """Call ``listener(reason)`` when a stop is requested (at once if it already was); returns an unsubscribe."""
    with _lock:
        _listeners.append(listener)
        reason = _reason
    if reason is not None:
        listener(reason)

    def unsubscribe() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return unsubscribe


def reset_stop() -> None:
    """Forget a stop request (a process that goes on to run another job, and tests)."""
    global _reason
    with _lock:
        _reason = None


class Terminated(BaseException):
    """SIGTERM reached the main thread (a BaseException: no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def sigterm_stops_the_run() -> Iterator[None]:
    """In the main thread: SIGTERM requests the stop (:func:`request_stop`) and raises :class:`Terminated`.

    Prefect's flow engine installs its own handler while a flow runs and, once it has crashed the run,
    sends the signal again to the handler it replaced — this one — so the caller still gets Terminated.
    """

    def handler(signum: int, frame: object) -> None:
        request_stop(f"stopped by {signal.Signals(signum).name}")
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may install handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = [
    "DEFAULT_STOP_GRACE_S",
    "STOP_GRACE_ENV",
    "Terminated",
    "on_stop",
    "request_stop",
    "reset_stop",
    "sigterm_stops_the_run",
    "stop_grace_s",
    "stop_requested",
]
