"""What every ``voxmill`` command shares: exit codes from error kinds, the run flags and the
:class:`~voxmill.options.RunOptions` they make, ``--param`` parsing, price tables and the live progress bar.

Commands import these; nothing here imports a command, so the command modules never import each other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxmill.errors import AuthError, ConfigError, VoxmillError
from voxmill.estimate import PriceTable
from voxmill.progress import ProgressBoard
from voxmill.settings import LOCAL_ENGINES, RATE_SCOPES, RUNNERS

if TYPE_CHECKING:
    from voxmill.options import RunOptions

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_AUTH = 0, 1, 2, 3

#: the exit code of a run stopped by an error of this kind (any other stop: some items are not done)
EXIT_FOR_STOP_KIND: dict[str, int] = {AuthError.kind: EXIT_AUTH}


def exit_code_for_error(exc: VoxmillError) -> int:
    """The exit code of a command that raised ``exc``: a usage problem, a refused key, or failed items."""
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    return EXIT_FOR_STOP_KIND.get(exc.kind, EXIT_FAILED_ITEMS)


def exit_code_for_run(ok: bool, stop_kind: str | None) -> int:
    """The exit code of a finished run: 0 when every item is done, else by why it stopped."""
    if stop_kind is not None and stop_kind in EXIT_FOR_STOP_KIND:
        return EXIT_FOR_STOP_KIND[stop_kind]
    return EXIT_OK if ok else EXIT_FAILED_ITEMS


def add_param_option(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """``--param NAME=VALUE`` (repeatable)."""
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help=help_text or "default parameter for rows without it (repeatable; JSON values allowed)")


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``--param`` values as a dict: ``NAME=VALUE``, the value JSON when it starts with ``{`` or ``[``."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param {pair!r}: write it as NAME=VALUE")
        try:
            params[name] = json.loads(value) if value[:1] in "{[" else value
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--param {name}: value is not valid JSON ({exc.msg})") from None
    return params


def add_run_options(parser: argparse.ArgumentParser, *, runner: bool = True) -> argparse._ArgumentGroup:
    """The flags of :class:`RunOptions` (the same on every command that sends requests), plus the display flags.

    ``runner=False`` leaves out ``--runner``/``--workers`` for commands that run in this process only.
    """
    group = parser.add_argument_group("run")
    group.add_argument("--rps", type=float,
                       help="at most this many requests per second (default VOXMILL_RPS: none, the limit is learned)")
    group.add_argument("--rpm", type=float,
                       help="at most this many requests per minute (default VOXMILL_RPM: none, the limit is learned)")
    group.add_argument("--concurrency", type=int,
                       help="most requests in flight (a ceiling: the limit is learned under it; "
                            "default VOXMILL_CONCURRENCY or 1024)")
    group.add_argument("--base-url", help="API base URL (default VOXMILL_BASE_URL or the hosted API)")
    group.add_argument("--rate-scope", choices=RATE_SCOPES,
                       help="who shares the rate budget: every process on this machine (machine), every worker "
                            "through Redis (redis, VOXMILL_REDIS_URL) or through the Prefect API (prefect); default "
                            "VOXMILL_RATE_SCOPE or machine")
    group.add_argument("--local", action="store_true",
                       help="use a local server started for this run (the default when no VOXMILL_API_KEY is set)")
    group.add_argument("--local-engine", choices=LOCAL_ENGINES, default="real",
                       help="local server engines: real (piper/whisper) or null (instant, for plumbing tests)")
    if runner:
        group.add_argument("--runner", choices=RUNNERS, default="thread",
                           help="where batches run: threads of this process (default), a process pool, or Dask "
                                "workers")
        group.add_argument("--workers", type=int, default=4,
                           help="processes or Dask workers; with threads, 4 × this many batches at once in the engine")
        group.add_argument("--dask-address", metavar="tcp://HOST:8786",
                           help="with --runner dask: the scheduler of a cluster started separately (default: a "
                                "LocalCluster of --workers processes)")
    group.add_argument("--no-progress", action="store_true", help="no live progress bar")
    group.add_argument("--verbose", action="store_true", help="show Prefect's logs and tracebacks")
    return group


def run_options(args: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` of parsed run flags (a bad value is a ConfigError naming the flag)."""
    from pydantic import ValidationError

    from voxmill.options import RunOptions  # pydantic: imported when a command runs, not to parse its flags

    try:
        return RunOptions(
            base_url=getattr(args, "base_url", None),
            requests_per_second=getattr(args, "rps", None),
            requests_per_minute=getattr(args, "rpm", None),
            max_concurrent=getattr(args, "concurrency", None),
            rate_scope=getattr(args, "rate_scope", None),
            local=bool(getattr(args, "local", False)),
            local_engine=getattr(args, "local_engine", "real"),
            runner=getattr(args, "runner", "thread"),
            workers=getattr(args, "workers", 4),
            dask_address=getattr(args, "dask_address", None),
        )
    except ValidationError as exc:
        flags = {"requests_per_second": "--rps", "requests_per_minute": "--rpm", "max_concurrent": "--concurrency",
                 "workers": "--workers"}
        problems = "; ".join(f"{flags.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(problems) from None


def price_table(path: Path | None) -> PriceTable:
    """``--prices`` when given, else VOXMILL_PRICES, else an empty table (costs unknown)."""
    return PriceTable.resolve(path)


def announce(line: str) -> None:
    """A line for the user on stderr, prefixed ``voxmill:``."""
    print(f"voxmill: {line}", file=sys.stderr)


@contextlib.contextmanager
def progress_bar(board: ProgressBoard, *, enabled: bool) -> Iterator[ProgressBoard]:
    """A live bar of ``board`` on stderr for the ``with`` block (only when ``enabled`` and stderr is a terminal)."""
    if not enabled or not sys.stderr.isatty():
        yield board
        return
    stop = threading.Event()
    bar = threading.Thread(target=_show_progress, args=(board, stop), name="voxmill-bar", daemon=True)
    bar.start()
    try:
        yield board
    finally:
        stop.set()
        bar.join()


def _show_progress(board: ProgressBoard, stop: threading.Event) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task("voxmill", total=None, detail="starting…")
        while not stop.wait(0.25):
            snap = board.snapshot()
            if not snap.total:
                continue  # Prefect and the manifest checks are still starting
            detail = (f"done {snap.done} · failed {snap.failed} · retrying {snap.retrying} · "
                      f"skipped {snap.skipped} · {snap.rate_per_s:.1f}/s")
            if snap.in_flight_limit is not None:
                detail += f" · in flight {snap.requests_in_flight}/{snap.in_flight_limit}"
            if snap.api_rate is not None:
                detail += f" · API rate {snap.api_rate:.1f}/s"
            progress.update(task, total=snap.total or None, completed=snap.finished, detail=detail)
        snap = board.snapshot()
        progress.update(task, total=snap.total or None, completed=snap.finished)


__all__ = [
    "EXIT_AUTH", "EXIT_FAILED_ITEMS", "EXIT_FOR_STOP_KIND", "EXIT_OK", "EXIT_USAGE", "add_param_option",
    "add_run_options", "announce", "exit_code_for_error", "exit_code_for_run", "parse_params", "price_table",
    "progress_bar", "run_options",
]
