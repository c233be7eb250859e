"""The voxmill command: exit codes, status, estimate, retry-failed, models, serve's parser."""

from __future__ import annotations

import json

import pytest
from manifest_files import write_manifest

from voxmill.catalog import MODELS
from voxmill.cli import main
from voxmill.cli.common import EXIT_FAILED_ITEMS, EXIT_OK, EXIT_USAGE


@pytest.fixture
def cli_env(monkeypatch, prefect_api, tmp_path):
    def point_at(server):
        monkeypatch.setenv("VOXMILL_API_KEY", server.token)
        monkeypatch.setenv("VOXMILL_BASE_URL", server.base_url)
        monkeypatch.setenv("VOXMILL_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv("VOXMILL_MAX_ATTEMPTS", "2")  # failures fail fast: not 6 tries with default backoff

    return point_at


def test_synthesize_status_retry_failed(make_server, cli_env, tmp_path, capsys):
    server = make_server()
    cli_env(server)
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "a", "text": "First sentence."},
        {"id": "b", "text": "Second sentence."},
        {"id": "c", "text": "Third sentence."},
    ])
    out = tmp_path / "out"
    server.set_faults(error_rate=1.0)  # everything fails: 503/500 until attempts run out
    code = main(["synthesize", str(manifest), "-o", str(out), "--format", "flac", "--no-progress"])
    assert code == EXIT_FAILED_ITEMS
    err = capsys.readouterr().err
    assert "retry-failed" in err
    assert main(["status", str(out)]) == EXIT_FAILED_ITEMS
    status = capsys.readouterr().out
    assert "0 done, 3 failed" in status and "transient ×3" in status

    server.clear_faults()
    server.reset_stats()
    assert main(["retry-failed", str(out), "--no-progress"]) == EXIT_OK
    assert server.stats()["generations_total"] == 3
    assert main(["status", str(out)]) == EXIT_OK
    assert "3 done, 0 failed" in capsys.readouterr().out
    assert sorted(p.suffix for p in (out / "audio").iterdir()) == [".flac"] * 3


def test_retry_failed_reports_true_counts(make_server, cli_env, tmp_path, capsys):
    server = make_server()
    cli_env(server)
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "a", "text": "First sentence."},
        {"id": "b", "text": "..."},
        {"id": "c", "text": "Third sentence."},
    ])
    out = tmp_path / "out"
    assert main(["synthesize", str(manifest), "-o", str(out), "--no-progress"]) == EXIT_FAILED_ITEMS
    assert "2 done, 0 reused, 1 failed, 0 already done, of 3 rows" in capsys.readouterr().out
    assert main(["retry-failed", str(out), "--no-progress"]) == EXIT_FAILED_ITEMS
    assert "0 done, 0 reused, 1 failed, 2 already done, of 3 rows" in capsys.readouterr().out
    assert server.stats()["generations_total"] == 2  # the unspeakable row was never sent


@pytest.mark.parametrize(("data", "needle"), [
    (b"id,text\nr1,fine\nr2,Hello, world\n", "line 3: 3 cells where the header has 2"),
    (b'id,text\nr1,"never closed\nr2,next\n', "line 2: a quoted value opened on this line is never closed"),
])
def test_bad_csv_exits_2_with_line_and_no_traceback(make_server, cli_env, tmp_path, capsys, data, needle):
    server = make_server()
    cli_env(server)
    manifest = tmp_path / "bad.csv"
    manifest.write_bytes(data)
    assert main(["synthesize", str(manifest), "-o", str(tmp_path / "out"), "--no-progress"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert needle in err and str(manifest) in err and "Traceback" not in err
    assert server.stats()["requests"] == 0


def test_usage_errors_exit_2_and_name_the_problem(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "words": "no text column"}])
    assert main(["estimate", str(manifest), "--kind", "tts"]) == EXIT_USAGE
    assert "no 'text' column" in capsys.readouterr().err
    assert main(["status", str(tmp_path / "nowhere")]) == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
    assert main(["retry-failed", str(tmp_path)]) == EXIT_USAGE
    assert "job.json" in capsys.readouterr().err


def test_estimate_counts_and_prices(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "a", "model": "higgs2p5", "text": "one two three four five"},
        {"id": "b", "model": "higgs2p5", "text": "six seven eight nine ten"},
        {"id": "c", "model": "chatterbox", "text": "eleven twelve"},
        {"id": "d", "model": "chatterbox", "text": ""},
    ])
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"higgs2p5": {"per_1k_chars": 10.0}}))
    assert main(["estimate", str(manifest), "--prices", str(prices)]) == EXIT_OK
    out = capsys.readouterr().out
    chars = len("one two three four five") + len("six seven eight nine ten")
    assert f"higgs2p5: 2 items, {chars} chars, 10 words" in out
    assert f"cost {chars * 10.0 / 1000:.2f}" in out
    assert "chatterbox: 1 items" in out and "unknown (give --prices)" in out
    assert "1 rows are invalid" in out


def test_models_lists_the_catalogue(capsys):
    assert main(["models"]) == EXIT_OK
    out = capsys.readouterr().out
    for spec in MODELS.values():
        assert spec.name in out
        for param in spec.params:
            assert param.name in out


def test_help_names_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("synthesize", "transcribe", "status", "retry-failed", "estimate", "serve", "demo"):
        assert command in out


def test_serve_starts_on_loopback_with_a_generated_token(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in __import__("os").environ.items() if k != "VOXMILL_LOCAL_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-m", "voxmill.cli", "serve", "--engine", "null", "--port", str(port), "--no-preload"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        banner = process.stdout.readline()
        assert f"http://127.0.0.1:{port}" in banner and "engine: null" in banner
        token = banner.rsplit("token: ", 1)[1].rstrip(")\n")
        assert len(token) >= 16
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.post(f"http://127.0.0.1:{port}/api/v1/generate",
                                      headers={"Authorization": f"Bearer {token}"},
                                      files={"model": (None, "higgs2p5"), "text": (None, "hi")})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert response.status_code == 200 and response.content[:4] == b"RIFF"
        assert response.headers["x-voxmill-engine"] == "null"
        unauthorised = httpx.post(f"http://127.0.0.1:{port}/api/v1/generate", files={"model": (None, "higgs2p5")})
        assert unauthorised.status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_transcribe_takes_a_folder_or_a_glob(make_server, cli_env, tmp_path, capsys):
    import subprocess

    from voxmill.ledger import read_results

    server = make_server()
    cli_env(server)
    corpus = tmp_path / "corpus"
    (corpus / "day1").mkdir(parents=True)
    for hz, name in ((300, "day1/b.flac"), (400, "day1/a.flac"), (500, "c.wav")):  # distinct content: no reuse
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"sine=frequency={hz}:duration=1",
                        str(corpus / name)], check=True)
    out = tmp_path / "out"
    assert main(["transcribe", f"{corpus}/**/*.flac", "-o", str(out), "--no-progress"]) == EXIT_OK
    assert "2 done" in capsys.readouterr().out
    assert main(["transcribe", str(corpus), "-o", str(out), "--no-progress"]) == EXIT_OK
    assert "1 done, 0 reused, 0 failed, 2 already done, of 3 rows" in capsys.readouterr().out
    assert sorted(read_results(out)["id"].to_pylist()) == ["c.wav", "day1/a.flac", "day1/b.flac"]
    assert server.stats()["generations_total"] == 3


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    try:
        with open(path) as handle:
            return [int(p) for p in handle.read().split()]
    except FileNotFoundError:
        return []


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


@pytest.mark.slow
def test_killed_cli_run_leaves_no_prefect_server_and_reruns_cleanly(make_server, tmp_path):
    """No PREFECT_API_URL: the CLI's own Prefect server dies with it on kill -9; the rerun finishes the job."""
    import os
    import signal
    import subprocess
    import sys
    import time

    server = make_server(latency_ms=100)
    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"i{i}", "text": f"Line {i}."} for i in range(80)])
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(VOXMILL_API_KEY=server.token, VOXMILL_BASE_URL=server.base_url, VOXMILL_CONCURRENCY="2",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", DO_NOT_TRACK="1")
    command = [sys.executable, "-m", "voxmill.cli", "synthesize", str(manifest), "-o", str(out), "--no-progress"]
    cli = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    servers: list[int] = []
    while time.monotonic() < deadline and cli.poll() is None:
        servers = [p for p in _children(cli.pid) if "prefect.server.api.server" in _cmdline(p)]
        if servers and any(p.stat().st_size for p in (out / "ledger").glob("journal-*")):
            break
        time.sleep(0.2)
    assert servers and cli.poll() is None, "the run should be sending when it is killed"
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    gone_by = time.monotonic() + 10
    while time.monotonic() < gone_by and _cmdline(servers[0]):
        time.sleep(0.1)
    assert not _cmdline(servers[0]), "the Prefect server outlived the killed CLI"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == EXIT_OK, rerun.stderr[-2000:]
    assert "80 rows" in rerun.stdout and "already done" in rerun.stdout


def test_shards_without_a_deployed_stack_exit_2_and_say_how(cli_env, null_server, tmp_path, capsys):
    cli_env(null_server)
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "text": "Hello."}])
    code = main(["synthesize", str(manifest), "-o", str(tmp_path / "out"), "--shards", "2", "--no-progress"])
    assert code == EXIT_USAGE
    assert "make deploy" in capsys.readouterr().err
    assert null_server.stats()["requests"] == 0
