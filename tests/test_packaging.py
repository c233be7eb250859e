"""A plain install (no extras) runs a hosted-style job to the end: declared dependencies match imports.

The project is installed into a fresh venv with uv, offline from uv's cache (``make setup`` warms it),
then its own ``voxmill`` synthesizes against a null-engine server started here from the dev venv, with
``--base-url`` and ``VOXMILL_API_KEY`` as a hosted job would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from manifest_files import write_manifest

from voxmill.audio.measure import measure_file

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("pyproject.toml", "README.md", "voxmill", "flows", "tasks")


def _uv() -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is not installed: it is in the dev extra (`pip install -e '.[local,dev]'`)"
    return uv


def _plain_install(venv: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name in PROJECT_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    base_python = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [_uv(), "venv", "-q", "--python", base_python, str(venv)],
        [_uv(), "pip", "install", "-q", "--offline", "--python", str(venv / "bin" / "python"), str(source)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, (
            f"{' '.join(step[:3])} failed (a package missing from uv's cache? `make setup` warms it):\n"
            f"{done.stderr[-3000:]}"
        )


@pytest.mark.slow
@pytest.mark.e2e
def test_install_without_extras_runs_a_hosted_job(null_server, prefect_api, tmp_path):
    venv = tmp_path / "venv"
    _plain_install(venv, tmp_path)
    python = venv / "bin" / "python"
    # the plain venv's own code only: no PYTHONPATH to this checkout, and run from elsewhere
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VOXMILL_", "VIRTUAL_ENV"))}
    env.update(VOXMILL_API_KEY=null_server.token, PREFECT_API_URL=prefect_api,
               VOXMILL_CACHE_DIR=str(tmp_path / "cache"), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    for extra in ("piper", "faster_whisper", "pytest", "respx"):  # (prefect brings starlette, uvicorn)
        missing = subprocess.run([python, "-c", f"import {extra}"], capture_output=True, timeout=60, env=env,
                                 cwd=tmp_path, check=False)
        assert missing.returncode != 0, f"{extra} is installed without extras"
    texts = ["The first sentence is long enough to be measured for loudness.",
             "A second sentence, also a little longer than half a second."]
    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"s{i}", "text": t} for i, t in enumerate(texts)])
    out = tmp_path / "out"
    run = subprocess.run(
        [venv / "bin" / "voxmill", "synthesize", str(manifest), "-o", str(out), "--base-url", null_server.base_url,
         "--format", "mp3", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 done" in run.stdout
    assert null_server.stats()["generations_total"] == 2
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["done", "done"]
    for row in rows:
        info = measure_file(out / row["output_path"])
        # the null engine answers 0.1 s of silence; mp3 adds its encoder padding
        assert info.format == "mp3" and info.sample_rate == 24000 and 0.09 < info.duration_s < 0.3
        assert row["duration_s"] == pytest.approx(info.duration_s, abs=0.01)
    installed = subprocess.run([python, "-c", "import voxmill; print(voxmill.__file__)"], capture_output=True,
                               text=True, timeout=60, env=env, cwd=tmp_path, check=True)
    assert str(venv) in installed.stdout  # the plain install ran, not this checkout
    # lazy imports too (pyloudnorm measures every output of 0.4 s or more; the null engine's are shorter)
    lazy = subprocess.run([python, "-c", IMPORTS_RESOLVE], capture_output=True, text=True, timeout=60, env=env,
                          cwd=tmp_path, check=False)
    assert lazy.returncode == 0 and lazy.stdout.strip() == "ok", lazy.stdout + lazy.stderr[-2000:]


#: imports that are optional by design (imported only when asked for, with an install hint): module → extra
OPTIONAL_IMPORTS = {"prefect_dask": "dask"}


def test_optional_imports_are_declared_in_their_extra():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, extra in OPTIONAL_IMPORTS.items():
        assert any(req.replace("-", "_").startswith(module) for req in extras[extra]), (module, extra)


#: run in the plain venv: every module outside voxmill.server can import what it imports, even inside functions
#: (the optional imports above excepted)
IMPORTS_RESOLVE = """
import ast, importlib.util, pathlib, sys
import voxmill, flows, tasks
missing = set()
optional = set(OPTIONAL)
for package in (voxmill, flows, tasks):
    root = pathlib.Path(package.__file__).parent
    for path in root.rglob("*.py"):
        if "server" in path.relative_to(root).parts:
            continue  # the local server: the `local` extra
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("voxmill", "flows", "tasks") or top in optional:
                    continue
                if importlib.util.find_spec(top) is None:
                    missing.add(f"{top} (imported by {path.name})")
print("missing: " + ", ".join(sorted(missing)) if missing else "ok")
""".replace("OPTIONAL", repr(sorted(OPTIONAL_IMPORTS)))
