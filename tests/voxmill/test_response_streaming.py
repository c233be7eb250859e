"""TTS responses stream into a file beside their output: a long clip in flight costs buffers, not its size."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LocalServer, free_port
from test_client_server import settings_for, tts

from voxmill.audio.formats import read_wav
from voxmill.errors import BadResponse
from voxmill.http import VoxmillClient
from voxmill.server import FaultConfig, ServerConfig, serve_in_thread

#: seconds of audio in each null-engine answer: 5.76 MB of 24 kHz 16-bit WAV
SECONDS = 120.0
#: what receiving may hold at once: httpcore's reads and h11's buffer (~0.7 MB measured, whatever the body's size)
RECEIVE_BUDGET = 2_000_000
BODY_BYTES = 44 + int(SECONDS * 24_000) * 2


@pytest.fixture
def long_server() -> Iterator[LocalServer]:
    """A null-engine server answering every TTS request with ``SECONDS`` of audio."""
    config = ServerConfig(token=secrets.token_urlsafe(12), engine="null", null_audio_s=SECONDS)
    with serve_in_thread(config) as running:
        yield LocalServer(running)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[LocalServer]:
    """The same server in its own process: what this process allocates is then the client's alone."""
    token, port = secrets.token_urlsafe(12), free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "voxmill.cli", "serve", "--engine", "null", "--null-audio-s", str(SECONDS),
         "--port", str(port), "--token", token], stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        server = _RemoteServer(f"http://127.0.0.1:{port}", token)
        deadline = time.monotonic() + 60
        while True:
            try:
                server.stats()
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.1)
        yield server  # type: ignore[misc]
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@dataclass
class _RemoteServer:
    """The :class:`LocalServer` calls these tests make, on a server in another process."""

    base_url: str
    token: str

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/admin/stats", headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        return response.json()



@pytest.mark.e2e
async def test_a_long_body_streams_into_the_named_file_without_being_held(server_process, tmp_path: Path) -> None:
    into = tmp_path / ".out.wav.part"
    async with VoxmillClient(settings_for(server_process, tmp_path)) as client:
        await client.synthesize(tts("Warm up."), into=into)  # lazy imports and the connection, not traced
        tracemalloc.start()
        try:
            result = await client.synthesize(tts(), into=into, item="row-1")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.path == into and result.size == into.stat().st_size == BODY_BYTES
    samples, rate, channels = read_wav(into.read_bytes())
    assert (len(samples) / rate, channels) == (SECONDS, 1)
    # read whole, the body alone would be 5.76 MB (and twice that while httpx joins its pieces); streamed, the
    # client holds its socket reads and the first 64 KiB (the header check)
    assert peak < RECEIVE_BUDGET < BODY_BYTES / 2, f"traced peak {peak / 1e6:.2f} MB, body {BODY_BYTES / 1e6:.2f} MB"
    assert server_process.stats()["generations_total"] == 2


async def test_a_truncated_body_is_retried_into_the_same_file_and_a_failure_leaves_none(
    long_server, tmp_path: Path
) -> None:
    into = tmp_path / ".out.wav.part"
    settings = settings_for(long_server, tmp_path)
    long_server.set_faults(truncate_rate=1.0)
    async with VoxmillClient(settings) as client:
        with pytest.raises(BadResponse, match="row-2.*truncated"):
            await client.synthesize(tts(), into=into, item="row-2")
    assert not into.exists() and list(tmp_path.glob("*.part")) == []  # nothing that could pass for audio
    assert long_server.stats()["by_status"] == {"200": 4}  # every try was billed and read

    long_server.set_faults(truncate_rate=0.5, seed=3)
    long_server.reset_stats()
    async with VoxmillClient(settings) as client:
        results = [await client.synthesize(tts(f"Line {n}."), into=into) for n in range(6)]
    assert any(r.attempts > 1 for r in results)  # some tries were cut: each retry rewrote the file from the start
    assert into.stat().st_size == BODY_BYTES
    assert len(read_wav(into.read_bytes())[0]) == SECONDS * 24_000


def test_serve_rejects_a_null_audio_length_out_of_range() -> None:
    from voxmill.errors import ConfigError

    with pytest.raises(ConfigError, match="null_audio_s"):
        ServerConfig(token="t", engine="null", null_audio_s=0, faults=FaultConfig())
