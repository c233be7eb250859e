"""``voxmill deploy`` / ``voxmill undeploy`` (``make deploy`` / ``make undeploy``): voxmill on a real Prefect server.

``deploy`` starts ``prefect server start`` on 127.0.0.1:``PREFECT_PORT`` with its state in the project's
``.prefect/`` (unless ``PREFECT_API_URL`` already names a server), creates the ``voxmill`` process work pool,
applies every deployment in ``deployments/prefect.yaml`` from the project root (so runs load this clone's
code and resolve relative paths against it), and starts a worker in the background. ``undeploy`` stops, by
the pids it recorded, what ``deploy`` started. ``secret`` stores the API key in a Prefect Secret block.
Prefect is driven through its command (and imported only by ``secret``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from voxmill.errors import ConfigError
from voxmill.processes import process_running

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORK_POOL = "voxmill"
DEFAULT_PORT = 4200
PREFECT_FILE = "deployments/prefect.yaml"
DEPLOYMENTS = ("voxmill-synthesize/synthesize", "voxmill-transcribe/transcribe", "voxmill-roundtrip/roundtrip",
               "voxmill-audiobook/audiobook", "voxmill-dataset-build/dataset-build")


@dataclass(frozen=True)
class Stack:
    """What ``deploy`` brought up: the API it used, and the state folder holding logs and pid files."""

    api_url: str
    ui_url: str
    state_dir: Path
    started_server: bool

    def env(self) -> dict[str, str]:
        """Environment for a process that talks to this stack (the CLI, a reader of results)."""
        return prefect_env(self.api_url, self.state_dir)


def prefect_env(api_url: str, state_dir: Path) -> dict[str, str]:
    """This process's environment pointed at ``api_url``, results and Prefect's home in ``state_dir``."""
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(state_dir),
        "PREFECT_LOCAL_STORAGE_PATH": str(state_dir / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }


def _prefect(python: str) -> list[str]:
    return [python, "-m", "prefect"]


def _run(cmd: list[str], env: dict[str, str], cwd: Path, what: str, timeout: float = 300) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise ConfigError(f"{what} failed (exit {done.returncode}): {(done.stdout + done.stderr)[-1500:]}")
    return done.stdout


def _spawn(cmd: list[str], env: dict[str, str], cwd: Path, state_dir: Path, name: str) -> int:
    """Start ``cmd`` in the background in its own session; log to STATE/<name>.log, pid to STATE/<name>.pid."""
    log = open(state_dir / f"{name}.log", "ab")
    process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    log.close()
    (state_dir / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def _wait_healthy(api_url: str, timeout: float, server_pid: int | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server_pid is not None and not process_running(server_pid):
            raise ConfigError(f"the Prefect server exited during its start: see its log ({api_url})")
        time.sleep(0.5)
    raise ConfigError(f"the Prefect server at {api_url} did not answer /health within {timeout:.0f} s")


def deploy(
    *,
    root: Path = PROJECT_ROOT,
    port: int = DEFAULT_PORT,
    api_url: str | None = None,
    python: str = sys.executable,
    start_timeout: float = 180.0,
    redis_port: int | None = None,
) -> Stack:
    """Server (unless ``api_url``), work pool, every deployment, a background worker; returns the stack.

    ``redis_port``: also start ``redis-server`` there (loopback, no persistence) and give the worker
    ``VOXMILL_RATE_SCOPE=redis`` with ``VOXMILL_REDIS_URL``: the rate budget that holds across machines
    (workers elsewhere point VOXMILL_REDIS_URL at this host)."""
    state_dir = root / ".prefect"
    state_dir.mkdir(parents=True, exist_ok=True)
    started_server = api_url is None
    if api_url is None:
        api_url = f"http://127.0.0.1:{port}/api"
        env = prefect_env(api_url, state_dir)
        # without PREFECT_UI_API_URL a server on another port serves a UI that calls port 4200
        env["PREFECT_UI_API_URL"] = api_url
        cmd = [*_prefect(python), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        pid = _spawn(cmd, env, root, state_dir, "server")
        _wait_healthy(api_url, start_timeout, pid)
    else:
        _wait_healthy(api_url, 30, None)
    env = prefect_env(api_url, state_dir)
    pools = _run([*_prefect(python), "work-pool", "ls"], env, root, "listing work pools")
    if f" {WORK_POOL} " not in pools:
        _run([*_prefect(python), "work-pool", "create", WORK_POOL, "--type", "process"], env, root,
             f"creating work pool {WORK_POOL!r}")
    _run([*_prefect(python), "--no-prompt", "deploy", "--all", "--prefect-file", PREFECT_FILE], env, root,
         f"applying {PREFECT_FILE}", timeout=600)
    # flow runs import this clone's code first, whatever else the interpreter has installed
    worker_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))}
    if redis_port is not None:
        _spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
               env, root, state_dir, "redis")
        worker_env.update(VOXMILL_RATE_SCOPE="redis", VOXMILL_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
    _spawn([*_prefect(python), "worker", "start", "--pool", WORK_POOL, "--type", "process"], worker_env, root,
           state_dir, "worker")
    return Stack(api_url, api_url.removesuffix("/api"), state_dir, started_server)


def undeploy(root: Path = PROJECT_ROOT, timeout: float = 20.0) -> list[str]:
    """Stop the worker and the server ``deploy`` started (by their recorded pids); what was stopped."""
    stopped = []
    for name in ("worker", "redis", "server"):
        pid_file = root / ".prefect" / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        if process_running(pid):
            os.killpg(pid, signal.SIGTERM)  # its own session: the flow runs and uvicorn it started go too
            deadline = time.monotonic() + timeout
            while process_running(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
                _reap(pid)
            if process_running(pid):
                os.killpg(pid, signal.SIGKILL)
            _reap(pid)  # ended (a zombie no longer counts as running): collected if it is this process's child
            stopped.append(f"{name} (pid {pid})")
        pid_file.unlink()
    return stopped


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _cmd_deploy(args: argparse.Namespace) -> int:
    existing = os.environ.get("PREFECT_API_URL") or None
    print(f"voxmill: {'using ' + existing if existing else 'starting a Prefect server on 127.0.0.1:' + str(args.port)}"
          " …", file=sys.stderr)
    stack = deploy(port=args.port, api_url=existing, redis_port=args.redis_port if args.redis else None)
    print(f"Prefect UI: {stack.ui_url}")
    if args.redis:
        print(f"rate budget: Redis on 127.0.0.1:{args.redis_port} (the worker runs with VOXMILL_RATE_SCOPE=redis)")
    print(f"worker log: {stack.state_dir / 'worker.log'}   (stop everything with `make undeploy`)")
    print("try:")
    for name in DEPLOYMENTS:
        print(f"  PREFECT_API_URL={stack.api_url} prefect deployment run {name} --watch")
    print(f"  PREFECT_API_URL={stack.api_url} prefect deployment run voxmill-synthesize/synthesize "
          f"-p shards=2 -p out_dir={PROJECT_ROOT / 'out' / 'tts-sharded'} --watch")
    return 0


def _cmd_undeploy(args: argparse.Namespace) -> int:
    stopped = undeploy()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing (no pid files in .prefect/)"))
    return 0


def _cmd_secret(args: argparse.Namespace) -> int:
    import getpass

    from prefect.blocks.system import Secret

    value = os.environ.get("VOXMILL_API_KEY") or getpass.getpass("API key (not echoed): ")
    if not value.strip():
        raise ConfigError("no key given: set VOXMILL_API_KEY or type it at the prompt")
    Secret(value=value.strip()).save(args.name, overwrite=True)
    print(f"saved the key in Secret block {args.name!r}; flows read it with options.api_key_block={args.name!r} "
          "(the deployments' default)")
    return 0


def add_deploy_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``deploy``, ``undeploy`` and ``secret``."""
    up = sub.add_parser("deploy", help="a local Prefect server, the voxmill work pool, every deployment, a worker")
    up.add_argument("--port", type=int, default=int(os.environ.get("PREFECT_PORT", DEFAULT_PORT)),
                    help="port of the local Prefect server (default PREFECT_PORT or 4200)")
    up.add_argument("--redis", action="store_true",
                    help="also start redis-server and share the rate budget through it (rate_scope=redis)")
    up.add_argument("--redis-port", type=int, default=6379, help="port of that redis-server (default 6379)")
    up.set_defaults(handler=_cmd_deploy)
    down = sub.add_parser("undeploy", help="stop the worker and server that `voxmill deploy` started")
    down.set_defaults(handler=_cmd_undeploy)
    secret = sub.add_parser("secret", help="store the API key (VOXMILL_API_KEY, or typed) in a Prefect Secret block")
    secret.add_argument("--name", default="voxmill-api-key", help="block name (default voxmill-api-key)")
    secret.set_defaults(handler=_cmd_secret)


__all__ = ["DEPLOYMENTS", "Stack", "add_deploy_parser", "deploy", "prefect_env", "undeploy"]
