"""The local server under abuse, over real sockets: forbidden text, oversized and slow bodies, memory.

Raw sockets where httpx would not misbehave on purpose (a Content-Length larger than the body, a chunked
body with no length). Memory is the RSS of a ``voxmill serve`` process, read from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import LocalServer
from websockets.sync.client import connect

from voxmill.server import RunningServer, ServerConfig, serve_in_thread
from voxmill.server.limits import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_UPLOAD_BYTES
from voxmill.server.service import Service as _Service

MiB = 1024 * 1024
BOUNDARY = "voxmillabuse"


@pytest.fixture
def capped_server() -> Iterator[LocalServer]:
    """A null-engine server with a 50 MiB cap and a 1 s body deadline."""
    config = ServerConfig(token=secrets.token_urlsafe(12), engine="null", max_upload_bytes=50 * MiB,
                          body_timeout_s=1.0)
    with serve_in_thread(config) as running:
        yield LocalServer(running)


def generate(server: LocalServer, text: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/api/v1/generate", files={"model": (None, "higgs2p5"), "text": (None, text)},
                      headers=server.headers, timeout=60)


def open_raw(server: LocalServer, head: dict[str, str]) -> socket.socket:
    """A socket that has sent a POST /api/v1/generate request line and these headers (no body yet)."""
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = {"Host": "voxmill", "Authorization": f"Bearer {server.token}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **head}
    lines = ["POST /api/v1/generate HTTP/1.1", *(f"{k}: {v}" for k, v in head.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def file_part_head(model: str = "whisper_v3_turbo", name: str = "clip.wav") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# --- text the engines cannot take -------------------------------------------------------------------------


def test_nul_and_control_characters_are_a_counted_400_naming_the_character(null_server):
    for text, code in (("before\x00after", "U+0000"), ("bell\x07", "U+0007"), ("c1\x85", "U+0085")):
        response = generate(null_server, text)
        assert response.status_code == 400, text
        assert response.json()["param"] == "text" and code in response.json()["error"]
    assert generate(null_server, "tab\tand\nnewlines are fine").status_code == 200
    url = null_server.base_url.replace("http", "ws") + "/api/v1/generate/ws"
    with connect(url) as ws:
        ws.send(json.dumps({"token": null_server.token, "model": "higgs2p5"}))
        ws.send(json.dumps({"text": "nul\x00"}))
        message = json.loads(ws.recv(timeout=5))
    assert message["type"] == "error" and message["status"] == 400
    stats = null_server.stats()
    assert stats["by_status"] == {"400": 4, "200": 1} and stats["generations_total"] == 1


def test_an_unexpected_engine_error_is_a_counted_json_500(null_server, monkeypatch):
    async def broken(self, text, speed):
        raise ValueError("embedded null character")

    monkeypatch.setattr(_Service, "speak", broken)
    response = generate(null_server, "hello")
    assert response.status_code == 500 and "internal error" in response.json()["error"]
    assert null_server.stats()["by_status"] == {"500": 1}


@pytest.mark.slow
def test_unspeakable_text_is_an_empty_200_that_the_stats_count(real_server):
    real_server.reset_stats()
    for text in ("...", "\u200b"):
        response = generate(real_server, text)
        assert response.status_code == 200 and len(response.content) == 44  # a WAV header and no samples
    assert generate(real_server, "Speech.").status_code == 200
    stats = real_server.stats()
    assert stats["empty_audio"] == 2 and stats["generations_total"] == 3


# --- upload cap --------------------------------------------------------------------------------------------


def test_the_default_cap_refuses_a_declared_60_mib_body(null_server):
    assert ServerConfig(token="t").body_timeout_s == DEFAULT_BODY_TIMEOUT_S > 0
    sock = open_raw(null_server, {"Content-Length": str(DEFAULT_MAX_UPLOAD_BYTES + 10 * MiB)})
    reply = read_response(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413") and b"the cap is 52,428,800 bytes" in reply, reply[:300]


@pytest.mark.rate  # a timing bound: measured in a rate lane, ahead of the niced parallel stage
def test_declared_oversize_is_413_at_once_without_reading_the_body(capped_server):
    sock = open_raw(capped_server, {"Content-Length": str(10**9)})  # no body byte is ever sent
    started = time.monotonic()
    reply = read_response(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    assert time.monotonic() - started < 0.9  # before the 1 s body deadline could have fired
    assert b"1,000,000,000 bytes" in reply and b"--max-upload-mb" in reply
    assert capped_server.stats()["by_status"] == {"413": 1}


@pytest.fixture(scope="module")
def server_process() -> Iterator[tuple[LocalServer, int]]:
    """``voxmill serve --engine null`` in its own process (its RSS is the server's alone), 50 MiB cap; and its pid."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = secrets.token_urlsafe(12)
    process = subprocess.Popen([sys.executable, "-c", "from voxmill.cli import main; raise SystemExit(main())",
                                "serve", "--engine", "null", "--no-preload", "--port", str(port), f"--token={token}",
                                "--max-upload-mb", "50", "--body-timeout", "5"], stdout=subprocess.DEVNULL)
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base_url}/health").raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None, "voxmill serve did not start"
                time.sleep(0.1)
        config = ServerConfig(token=token, engine="null")
        yield LocalServer(RunningServer(base_url, token, config, None, threading.Thread())), process.pid
    finally:
        process.terminate()
        process.wait(10)


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


class PeakRss:
    """Samples a process's RSS every 10 ms in a thread while the ``with`` block runs; ``peak`` after it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_of(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_of(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_chunked_body_over_the_cap_is_refused_while_streaming_without_buffering(server_process):
    """200 MiB sent chunked (no length) against a 50 MiB cap: refused; the server never holds 200 MiB."""
    server, pid = server_process
    server.reset_stats()
    sock = open_raw(server, {"Transfer-Encoding": "chunked"})
    block = b"\0" * MiB
    chunk = b"%x\r\n%s\r\n" % (len(block), block)
    sent = 0
    before = rss_of(pid)
    with PeakRss(pid) as rss:
        try:
            head = file_part_head()
            sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            for _ in range(200):
                sock.sendall(chunk)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = read_response(sock)
        except ConnectionResetError:
            reply = b""  # the kernel may reset before the 413 is read: the server's count below still proves it
        sock.close()
    assert sent < 200 * MiB, "the server read the whole 200 MiB"
    assert not reply or reply.startswith(b"HTTP/1.1 413"), reply[:100]
    assert server.stats()["by_status"] == {"413": 1}
    assert rss.peak - before < 40 * MiB, f"RSS grew {(rss.peak - before) / MiB:.0f} MiB"


def test_memory_returns_to_baseline_after_large_uploads(server_process):
    """Three 40 MiB uploads at once (under the cap) are answered, then the server's memory is given back."""
    server, pid = server_process
    server.reset_stats()
    files = {"model": (None, "whisper_v3_turbo"), "file": ("long.wav", _silent_wav(40 * MiB))}

    def post() -> None:
        response = httpx.post(f"{server.base_url}/api/v1/generate", files=files, headers=server.headers, timeout=60)
        assert response.status_code == 200, response.text

    post()  # warm up: first-use allocations are not a leak
    baseline = rss_of(pid)
    with PeakRss(pid) as rss:
        threads = [threading.Thread(target=post) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert server.stats()["by_status"] == {"200": 4}
    after = rss_of(pid)
    assert rss.peak - baseline < 3 * 60 * MiB, f"peak {rss.peak / MiB:.0f} MiB from {baseline / MiB:.0f}"
    assert after - baseline < 10 * MiB, f"RSS {baseline / MiB:.0f} → {after / MiB:.0f} MiB after the uploads"


def _silent_wav(size: int) -> bytes:
    import struct

    frames = size // 2
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + frames * 2, b"WAVE", b"fmt ", 16, 1, 1, 16000,
                         32000, 2, 16, b"data", frames * 2)
    return header + bytes(frames * 2)


# --- slow and short bodies ---------------------------------------------------------------------------------


def test_short_bodies_time_out_with_408_and_their_connections_close(capped_server):
    """50 connections that promise 1,000 bytes and send 10: each answered 408 and closed after ~1 s."""
    socks = [open_raw(capped_server, {"Content-Length": "1000"}) for _ in range(50)]
    for sock in socks:
        sock.sendall(f"--{BOUNDARY}\r\n".encode())
    started = time.monotonic()
    replies = [read_response(sock) for sock in socks]  # returns only once the server closes each connection
    elapsed = time.monotonic() - started
    for sock in socks:
        sock.close()
    assert all(reply.startswith(b"HTTP/1.1 408") for reply in replies), replies[0][:100]
    assert b"within 1 s" in replies[0]
    assert 0.8 < elapsed < 5
    assert capped_server.stats()["by_status"] == {"408": 50}


def test_a_trickled_body_times_out_even_though_bytes_keep_coming(capped_server):
    sock = open_raw(capped_server, {"Content-Length": "100000"})
    sock.sendall(file_part_head())
    started = time.monotonic()
    try:
        for _ in range(40):  # one byte every 0.1 s: never idle, never done
            sock.sendall(b"x")
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = read_response(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5
    assert capped_server.stats()["by_status"] == {"408": 1}


def test_an_early_answer_drains_a_small_body_and_closes_on_a_trickler(capped_server):
    """A 401 or 400 sent before the body ends: a body that arrives is drained (the connection stays usable);
    a trickled one is abandoned at the deadline and the connection closed."""
    for head, first in (({"Authorization": "Bearer wrong"}, b"HTTP/1.1 401"), ({}, b"HTTP/1.1 400")):
        sock = open_raw(capped_server, {"Content-Length": "100000", **head})
        sock.sendall(b"not multipart at all")
        started = time.monotonic()
        reply = read_response(sock)  # returns because the server closes; an endless drain would not
        sock.close()
        assert reply.startswith(first) and b"connection: close" in reply.lower(), reply[:200]
        assert 0.8 < time.monotonic() - started < 5
    with httpx.Client(headers={"Authorization": "Bearer wrong"}) as client:
        for _ in range(3):  # a whole body: answered 401 on one kept-alive connection, never a reset
            response = client.post(f"{capped_server.base_url}/api/v1/generate", files={"file": ("a", b"x" * MiB)})
            assert response.status_code == 401 and "connection" not in response.headers
    assert capped_server.stats()["by_status"] == {"401": 4, "400": 1}


# --- slow headers and too many connections -------------------------------------------------------------------


@pytest.fixture
def guarded_server() -> Iterator[LocalServer]:
    """A null-engine server with a 1 s header deadline and at most 5 connections per client address."""
    config = ServerConfig(token=secrets.token_urlsafe(12), engine="null", header_timeout_s=1.0,
                          max_connections_per_client=5)
    with serve_in_thread(config) as running:
        yield LocalServer(running)


def raw_socket(server: LocalServer) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def test_headers_that_never_finish_time_out_with_408(guarded_server):
    """Slowloris: a silent connection, and one trickling a header byte every 0.1 s, are each answered 408 and
    closed at the header deadline; a normal request on the same server still works."""
    silent = raw_socket(guarded_server)
    trickler = raw_socket(guarded_server)
    trickler.sendall(b"POST /api/v1/generate HTTP/1.1\r\nHost: voxmill\r\n")
    started = time.monotonic()
    try:
        for _ in range(30):  # never idle, never done
            trickler.sendall(b"X")
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        pass
    replies = [read_response(silent), read_response(trickler)]
    elapsed = time.monotonic() - started
    silent.close()
    trickler.close()
    assert all(reply.startswith(b"HTTP/1.1 408") for reply in replies), replies
    assert b"headers not received within 1 s" in replies[0]
    assert elapsed < 2.5, elapsed
    assert generate(guarded_server, "Still answering.").status_code == 200


def test_a_kept_alive_connection_gets_the_deadline_again_for_its_next_request(guarded_server):
    with httpx.Client(base_url=guarded_server.base_url, headers=guarded_server.headers) as client:
        assert client.post("/api/v1/generate", files={"model": (None, "higgs2p5"),
                                                      "text": (None, "One.")}).status_code == 200
    sock = raw_socket(guarded_server)
    body = f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nhiggs2p5\r\n" \
           f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nTwo.\r\n--{BOUNDARY}--\r\n"
    request = (f"POST /api/v1/generate HTTP/1.1\r\nHost: voxmill\r\nAuthorization: Bearer {guarded_server.token}\r\n"
               f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n{body}")
    time.sleep(0.6)
    sock.sendall(request.encode())  # complete within the deadline (from the connection): answered
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200"), first[:100]
    time.sleep(1.5)  # idle past the header deadline: uvicorn's keep-alive (5 s) still holds the connection
    sock.sendall(b"POST /api/v1/generate HTTP/1.1\r\nHost: voxmill\r\n")  # the next request starts, never ends
    started = time.monotonic()
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert b"HTTP/1.1 408" in data and time.monotonic() - started < 2.5


def test_connections_per_client_are_capped_with_503(guarded_server):
    held = [raw_socket(guarded_server) for _ in range(5)]
    time.sleep(0.2)  # the server has accepted all five
    extra = raw_socket(guarded_server)
    reply = read_response(extra)
    extra.close()
    assert reply.startswith(b"HTTP/1.1 503") and b"too many connections from 127.0.0.1 (the cap is 5)" in reply
    assert b"retry-after: 1" in reply.lower()
    for sock in held:
        sock.close()
    time.sleep(0.2)  # closed connections free their places
    assert generate(guarded_server, "A place again.").status_code == 200


def test_a_refused_connection_that_sends_its_request_reads_the_503_not_a_reset(guarded_server):
    """A client writes its request as soon as it connects: the refusal must reach it as an answer (which tells it
    to hold fewer connections), not as a reset (a fault) from closing a socket with its request unread."""
    held = [raw_socket(guarded_server) for _ in range(5)]
    time.sleep(0.2)
    extra = raw_socket(guarded_server)
    body = b"x" * 300_000  # more than the socket buffers hold: the server must read it to avoid a reset
    request = (f"POST /api/v1/generate HTTP/1.1\r\nHost: voxmill\r\nAuthorization: Bearer {guarded_server.token}"
               f"\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    time.sleep(0.2)  # the 503 is written before the request arrives, as for a client slower than the server
    extra.sendall(request + body)
    extra.shutdown(socket.SHUT_WR)
    reply = read_response(extra)
    extra.close()
    assert reply.startswith(b"HTTP/1.1 503") and b"too many connections" in reply, reply[:200]
    for sock in held:
        sock.close()
    stats = guarded_server.stats()
    assert stats["requests"] == 0 and stats["refused_connections"] == 1, "refused, counted, never served"
