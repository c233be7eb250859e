"""The client against the local server over loopback: every fault kind, proved by server-side counters.

The respx tests (``test_client.py``) pin the protocol; these check that what the client believes happened
(``attempts``, the error it raises) matches what the server saw (``GET /admin/stats``). Null-engine
servers keep them fast; the real server is used only where real audio matters (voice upload, streaming).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import LocalServer

from voxmill.audio.formats import check_audio_body, wav_bytes
from voxmill.catalog import MODELS, ValidatedRequest, validate
from voxmill.errors import AuthError, BadResponse, InvalidItem, RateLimited, TransientError, VoxmillError
from voxmill.http import SpeechResult, VoxmillClient
from voxmill.limiter import AsyncRateLimiter
from voxmill.server import ServerConfig, request_content_hash, serve_in_thread
from voxmill.settings import ApiKey, RateLimit, RetryPolicy, Settings, Timeouts

SECRET = "sk-VOXMILL-SECRET-987"
LONG_SECRET = "sk-VOXMILL-LONG-" + "0123456789abcdef" * 5
#: bytes per second of the stream's PCM (16-bit, 24 kHz, mono)
PCM_BYTES_PER_SECOND = 48_000


def settings_for(
    server: LocalServer,
    tmp_path: Path,
    *,
    key: str | None = None,
    read_timeout: float = 30.0,
    **retry: Any,
) -> Settings:
    """Settings for ``server``: its own token unless ``key`` is given, fast backoff, no own rate limit."""
    policy: dict[str, Any] = dict(max_attempts=4, initial_backoff=0.01, max_backoff=0.05, jitter=0.1)
    policy.update(retry)
    return Settings(
        api_key=ApiKey(key or server.token),
        base_url=server.base_url,
        rate_limit=RateLimit(max_concurrent=4),
        retry=RetryPolicy(**policy),
        timeouts=Timeouts(connect=5.0, read=read_timeout, write=10.0, pool=10.0),
        cache_dir=tmp_path / "cache",
    )


def tts(text: str = "Hello there.", **params: Any) -> ValidatedRequest:
    return validate("higgs2p5", {"text": text, **params})


def speak_each(client: VoxmillClient, requests, folder: Path) -> list:
    """One synthesize() coroutine per request, each into its own file in ``folder``."""
    return [client.synthesize(request, into=folder / f"{n}.wav") for n, request in enumerate(requests)]


def content_hash(request: ValidatedRequest) -> str:
    """The server's id of a request without files: its form fields as the client sends them."""
    assert not request.files()
    return request_content_hash(request.form_fields(), {})


def reference_wav(path: Path, seconds: float = 1.0, rate: int = 24_000) -> Path:
    """A short tone: decodable audio for a voice reference."""
    t = np.arange(int(seconds * rate)) / rate
    path.write_bytes(wav_bytes((np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16), rate))
    return path


# --- 5xx and resets: retried, counted server-side ---------------------------------------------------


async def test_503s_then_success_is_one_generation(make_server, tmp_path):
    server = make_server(fail_first_n=2)
    request = tts()
    async with VoxmillClient(settings_for(server, tmp_path)) as client:
        result = await client.synthesize(request, into=tmp_path / "out.wav")
    check_audio_body(result.path.read_bytes(), "wav")
    assert result.attempts == 3
    stats = server.stats()
    assert stats["requests"] == 3
    assert stats["by_status"] == {"503": 2, "200": 1}
    assert stats["generations"] == {content_hash(request): 1}


async def test_500_and_503_exhaustion_is_transient_with_every_attempt_seen(make_server, tmp_path):
    server = make_server(error_rate=1.0)
    async with VoxmillClient(settings_for(server, tmp_path, max_attempts=3)) as client:
        with pytest.raises(TransientError) as info:
            await client.synthesize(tts(), item="row-7", into=tmp_path / "out.wav")
    assert info.value.attempts == 3
    assert info.value.status in (500, 503)
    assert "row-7" in str(info.value)
    stats = server.stats()
    # error_rate alternates 500 and 503
    assert stats["by_status"] == {"500": 2, "503": 1}
    assert stats["requests"] == 3 and stats["generations_total"] == 0


async def test_resets_are_retried_and_each_one_is_an_attempt(make_server, tmp_path):
    server = make_server(reset_rate=1.0)

    def heal_after_two(item: str | None, error: VoxmillError, attempt: int) -> None:
        assert isinstance(error, TransientError)
        if attempt == 2:
            server.set_faults(reset_rate=0.0)

    request = tts()
    async with VoxmillClient(settings_for(server, tmp_path), on_retry=heal_after_two) as client:
        result = await client.synthesize(request, into=tmp_path / "out.wav")
    check_audio_body(result.path.read_bytes(), "wav")
    assert result.attempts == 3
    stats = server.stats()
    assert stats["resets"] == result.attempts - 1 == 2
    assert stats["requests"] == 3
    assert stats["by_status"] == {"200": 1}
    assert stats["generations"] == {content_hash(request): 1}


async def test_random_resets_match_the_clients_extra_attempts(make_server, tmp_path):
    server = make_server(reset_rate=0.5, seed=11)
    requests = [tts(f"Sentence number {i}.") for i in range(12)]
    async with VoxmillClient(settings_for(server, tmp_path, max_attempts=10)) as client:
        results = [await client.synthesize(request, into=tmp_path / f"{n}.wav") for n, request in enumerate(requests)]
    extra = sum(r.attempts - 1 for r in results)
    stats = server.stats()
    assert extra > 0  # the seed does reset some
    assert stats["resets"] == extra
    assert stats["requests"] == sum(r.attempts for r in results)
    assert stats["generations"] == {content_hash(r): 1 for r in requests}


async def test_reset_exhaustion_is_transient(make_server, tmp_path):
    server = make_server(reset_rate=1.0)
    async with VoxmillClient(settings_for(server, tmp_path, max_attempts=3)) as client:
        with pytest.raises(TransientError) as info:
            await client.synthesize(tts(), into=tmp_path / "out.wav")
    assert info.value.attempts == 3
    stats = server.stats()
    assert (stats["requests"], stats["resets"], stats["generations_total"]) == (3, 3, 0)


# --- bodies: truncated, slow ------------------------------------------------------------------------


async def test_truncated_body_is_bad_response_and_each_try_is_billed(make_server, tmp_path):
    server = make_server(truncate_rate=1.0)
    request = tts()
    async with VoxmillClient(settings_for(server, tmp_path, max_attempts=3)) as client:
        with pytest.raises(BadResponse, match="truncated") as info:
            await client.synthesize(request, item="row-3", into=tmp_path / "out.wav")
    assert info.value.attempts == 3
    assert "row-3" in str(info.value)
    stats = server.stats()
    # the server did the work three times: a cut-off body costs a generation each time
    assert stats["by_status"] == {"200": 3}
    assert stats["generations"] == {content_hash(request): 3}


async def test_some_truncated_bodies_end_in_success_billed_per_attempt(make_server, tmp_path):
    server = make_server(truncate_rate=0.5, seed=5)
    requests = [tts(f"Line {i} of the script.") for i in range(10)]
    async with VoxmillClient(settings_for(server, tmp_path, max_attempts=10)) as client:
        results = [await client.synthesize(request, into=tmp_path / f"{n}.wav") for n, request in enumerate(requests)]
    for result in results:
        check_audio_body(result.path.read_bytes(), "wav")
    assert any(r.attempts > 1 for r in results)
    stats = server.stats()
    assert stats["generations"] == {content_hash(q): r.attempts for q, r in zip(requests, results)}
    assert stats["by_status"] == {"200": sum(r.attempts for r in results)}


async def test_slow_body_within_the_read_timeout_succeeds(make_server, tmp_path):
    server = make_server(slow_body_rate=1.0, slow_body_seconds=0.3)
    async with VoxmillClient(settings_for(server, tmp_path, read_timeout=5.0)) as client:
        result = await client.synthesize(tts(), into=tmp_path / "out.wav")
    check_audio_body(result.path.read_bytes(), "wav")
    assert result.attempts == 1
    assert result.latency_s >= 0.3
    assert server.stats()["requests"] == 1


async def test_slow_body_beyond_the_read_timeout_is_transient_after_retries(make_server, tmp_path):
    # ten pieces 0.1 s apart against a 0.05 s read timeout
    server = make_server(slow_body_rate=1.0, slow_body_seconds=1.0)
    request = tts()
    settings = settings_for(server, tmp_path, read_timeout=0.05, max_attempts=2)
    async with VoxmillClient(settings) as client:
        with pytest.raises(TransientError, match="timed out") as info:
            await client.synthesize(request, into=tmp_path / "out.wav")
    assert info.value.attempts == 2
    stats = server.stats()
    assert stats["requests"] == 2
    # billed before sending, so both abandoned bodies count
    assert stats["generations"] == {content_hash(request): 2}


# --- 429 and latency --------------------------------------------------------------------------------


@dataclass
class _Exchange:
    text: str
    sent: float
    answered: float
    status: int
    retry_after: float | None


class RecordingTransport(httpx.AsyncHTTPTransport):
    """A real transport that notes when each request left and its answer came back."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[_Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = (await request.aread()).decode("utf-8", "replace")
        text = body.split('name="text"\r\n\r\n', 1)[1].split("\r\n", 1)[0]
        sent = time.monotonic()
        response = await super().handle_async_request(request)
        retry_after = response.headers.get("retry-after")
        self.exchanges.append(
            _Exchange(text, sent, time.monotonic(), response.status_code, float(retry_after) if retry_after else None)
        )
        return response


async def test_429_waits_retry_after_and_bills_each_item_once(make_server, tmp_path):
    server = make_server(rate_limit_rps=2.0, rate_limit_burst=1.0)
    requests = [tts(f"Rate limited line {i}.") for i in range(3)]
    transport = RecordingTransport()
    settings = settings_for(server, tmp_path, max_attempts=6)
    limiter = AsyncRateLimiter(dataclasses.replace(settings.rate_limit, adaptive=False))
    assert limiter.current_rate is None  # the client does not pace itself: only the server's 429s do
    started = time.monotonic()
    async with VoxmillClient(settings, limiter=limiter, transport=transport) as client:
        results = await asyncio.gather(*speak_each(client, requests, tmp_path))
    elapsed = time.monotonic() - started

    assert all(isinstance(r, SpeechResult) for r in results)
    assert limiter.slowdowns > 0
    stats = server.stats()
    assert stats["by_status"]["200"] == 3
    assert stats["by_status"]["429"] == sum(r.attempts - 1 for r in results) >= 2
    assert stats["generations"] == {content_hash(r): 1 for r in requests}  # no double billing

    # every retry after a 429 left at least Retry-After seconds after that 429 came back
    waits = []
    for request in requests:
        mine = [e for e in transport.exchanges if e.text == request.params["text"]]
        for refused, retry in zip(mine, mine[1:]):
            assert refused.status == 429 and refused.retry_after is not None and refused.retry_after >= 1
            waits.append(retry.sent - refused.answered)
            assert retry.sent - refused.answered >= refused.retry_after - 0.01
    assert waits
    # one admission per Retry-After window (burst 1): the third item lands ≥ 2 s in
    assert elapsed >= 2.0 - 0.01


async def test_429s_do_not_use_up_the_fault_attempts(make_server, tmp_path):
    """A 429 burst outlasting ``max_attempts`` tries fails no item: 429s are retried until their deadline."""
    server = make_server(rate_limit_rps=2.0, rate_limit_burst=1.0)
    requests = [tts(f"Burst line {i}.") for i in range(4)]
    settings = settings_for(server, tmp_path, max_attempts=2)
    limiter = AsyncRateLimiter(dataclasses.replace(settings.rate_limit, adaptive=False))  # only the 429s pace
    async with VoxmillClient(settings, limiter=limiter) as client:
        results = await asyncio.gather(*speak_each(client, requests, tmp_path))

    assert all(isinstance(r, SpeechResult) for r in results)
    assert max(r.attempts for r in results) > 2  # more tries than max_attempts, every extra one a 429
    stats = server.stats()
    assert stats["by_status"]["200"] == 4
    assert stats["by_status"]["429"] == sum(r.attempts - 1 for r in results)


async def test_429s_stop_at_the_rate_limited_deadline(make_server, tmp_path):
    server = make_server(rate_limit_rps=0.5, rate_limit_burst=1.0)  # one admission, then Retry-After 2 s
    settings = settings_for(server, tmp_path, max_attempts=10, rate_limited_deadline=1.5)
    limiter = AsyncRateLimiter(dataclasses.replace(settings.rate_limit, adaptive=False))
    requests = [tts(f"Deadline line {i}.") for i in range(3)]
    async with VoxmillClient(settings, limiter=limiter) as client:
        results = await asyncio.gather(*speak_each(client, requests, tmp_path), return_exceptions=True)

    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(refused) == 1, results  # t≈0: one admitted; t≈2 s: one more, the last is past its 1.5 s deadline
    assert refused[0].attempts == 2 and refused[0].status == 429
    stats = server.stats()
    assert (stats["by_status"]["200"], stats["by_status"]["429"]) == (2, 3)


async def test_latency_fault_shows_in_the_measured_latency(make_server, tmp_path):
    server = make_server(latency_ms=300)
    async with VoxmillClient(settings_for(server, tmp_path)) as client:
        started = time.perf_counter()
        result = await client.synthesize(tts(), into=tmp_path / "out.wav")
        elapsed = time.perf_counter() - started
    assert result.attempts == 1
    assert result.latency_s >= 0.3
    assert elapsed >= result.latency_s


# --- never retried: auth, invalid ------------------------------------------------------------------


async def test_wrong_token_is_auth_error_without_retry(make_server, tmp_path):
    server = make_server()
    async with VoxmillClient(settings_for(server, tmp_path, key="not-the-token")) as client:
        with pytest.raises(AuthError) as info:
            await client.synthesize(tts(), into=tmp_path / "out.wav")
    assert (info.value.status, info.value.attempts) == (401, 1)
    stats = server.stats()
    assert stats["requests"] == 1 and stats["by_status"] == {"401": 1}


async def test_server_side_422_is_invalid_item_without_retry(make_server, tmp_path):
    server = make_server()
    # past the client's validation: speed 10 breaks the catalogue's 0.25–4 range, which the server enforces
    request = ValidatedRequest(MODELS["higgs2p5"], {"text": "Too fast.", "voice_settings": {"speed": 10.0}})
    async with VoxmillClient(settings_for(server, tmp_path)) as client:
        with pytest.raises(InvalidItem) as info:
            await client.synthesize(request, item="row-9", into=tmp_path / "out.wav")
    assert (info.value.status, info.value.attempts) == (422, 1)
    assert "row-9" in str(info.value) and "speed" in str(info.value)
    stats = server.stats()
    assert stats["requests"] == 1 and stats["by_status"] == {"422": 1}
    assert stats["generations_total"] == 0


async def test_unknown_voice_id_is_invalid_item_without_retry(make_server, tmp_path):
    server = make_server()
    async with VoxmillClient(settings_for(server, tmp_path)) as client:
        with pytest.raises(InvalidItem) as info:
            await client.synthesize(tts(voice_id="higgs2p5-never-uploaded"), into=tmp_path / "out.wav")
    assert (info.value.status, info.value.attempts) == (400, 1)
    assert server.stats()["by_status"] == {"400": 1}


# --- voice upload (real engine) ----------------------------------------------------------------------


async def test_upload_voice_id_works_and_a_second_upload_makes_no_request(real_server, tmp_path):
    real_server.reset_stats()
    reference = reference_wav(tmp_path / "narrator.wav")
    settings = settings_for(real_server, tmp_path)
    async with VoxmillClient(settings) as client:
        voice_id = await client.upload_voice("higgs2p5", reference)
        result = await client.synthesize(tts("Cloned voice check.", voice_id=voice_id), into=tmp_path / "out.wav")
    check_audio_body(result.path.read_bytes(), "wav")
    assert result.engine != "null"
    stats = real_server.stats()
    assert stats["uploads"] == 1 and stats["by_status"] == {"200": 2}

    # a fresh client with the same cache dir: the cached voice_id, no request at all
    async with VoxmillClient(settings) as client:
        assert await client.upload_voice("higgs2p5", reference) == voice_id
    assert real_server.stats()["requests"] == stats["requests"]

    # a voice_id belongs to one model: another model uploads again
    async with VoxmillClient(settings) as client:
        other = await client.upload_voice("chatterbox", reference)
    assert other != voice_id
    stats = real_server.stats()
    assert stats["uploads"] == 2 and stats["requests"] == 3


# --- WebSocket streaming (real engine) ----------------------------------------------------------------


async def test_stream_speech_yields_pcm_of_plausible_length(real_server, tmp_path):
    real_server.reset_stats()
    text = "The quick brown fox jumps over the lazy dog."
    async with VoxmillClient(settings_for(real_server, tmp_path)) as client:
        chunks = [chunk async for chunk in client.stream_speech(tts(text))]
    pcm = b"".join(chunks)
    assert chunks and len(pcm) % 2 == 0
    seconds = len(pcm) / PCM_BYTES_PER_SECOND
    assert 1.0 < seconds < 8.0, seconds  # nine words
    assert np.abs(np.frombuffer(pcm, "<i2")).max() > 1000  # speech, not silence
    stats = real_server.stats()
    assert stats["by_status"] == {"101": 1} and stats["generations_total"] == 1


async def test_stream_speech_with_wrong_token_is_auth_error(real_server, tmp_path):
    real_server.reset_stats()
    async with VoxmillClient(settings_for(real_server, tmp_path, key="not-the-token")) as client:
        with pytest.raises(AuthError):
            async for _ in client.stream_speech(tts()):
                pass
    stats = real_server.stats()
    assert stats["by_status"] == {"401": 1} and stats["generations_total"] == 0


# --- the key never leaks --------------------------------------------------------------------------


@pytest.fixture
def secret_server() -> Iterator[LocalServer]:
    """A null-engine server whose token is :data:`SECRET`, so requests get past auth to the faults."""
    with serve_in_thread(ServerConfig(token=SECRET, engine="null")) as running:
        yield LocalServer(running)


def _all_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error) + str(error) + repr(error.args)


async def test_key_never_appears_in_logs_or_errors(secret_server, make_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "voxmill", "websockets"):
        caplog.set_level(logging.DEBUG, logger=name)
    errors: list[VoxmillError] = []

    async def failure(settings: Settings, make: Callable[[VoxmillClient], Any]) -> None:
        async with VoxmillClient(settings) as client:
            assert SECRET not in repr(client)
            with pytest.raises(VoxmillError) as info:
                await make(client)
        errors.append(info.value)

    async def drain(client: VoxmillClient) -> None:
        async for _ in client.stream_speech(tts()):
            pass

    # the key refused, over HTTP and the WebSocket
    other = make_server()
    refused = settings_for(other, tmp_path, key=SECRET)
    await failure(refused, lambda c: c.synthesize(tts(), item="row-1", into=tmp_path / "out.wav"))
    await failure(refused, drain)
    # a key long enough that websockets elides its frame in the log, leaving only a slice of the key
    await failure(settings_for(other, tmp_path, key=LONG_SECRET), drain)
    # the key accepted, then each fault until the attempts run out
    accepted = settings_for(secret_server, tmp_path, max_attempts=2)
    impatient = settings_for(secret_server, tmp_path, max_attempts=2, read_timeout=0.05)
    assert accepted.api_key == ApiKey(SECRET)
    for settings, faults in (
        (accepted, dict(error_rate=1.0)),
        (accepted, dict(reset_rate=1.0)),
        (accepted, dict(truncate_rate=1.0)),
        (impatient, dict(slow_body_rate=1.0, slow_body_seconds=1.0)),
    ):
        with secret_server.faults(**faults):
            await failure(settings, lambda c: c.synthesize(tts(), item="row-2", into=tmp_path / "out.wav"))
    await failure(accepted, lambda c: c.synthesize(tts(voice_id="unknown"), item="row-3", into=tmp_path / "out.wav"))

    assert [type(e) for e in errors] == [
        AuthError, AuthError, AuthError, TransientError, TransientError, BadResponse, TransientError, InvalidItem
    ]
    for error in errors:
        assert SECRET not in _all_text(error) and LONG_SECRET not in _all_text(error)
    # the logs were captured (so their silence about the key means something) and never hold it
    assert "HTTP Request: POST" in caplog.text
    assert SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in record.getMessage()
    assert not [LONG_SECRET[i : i + 8] for i in range(len(LONG_SECRET) - 7) if LONG_SECRET[i : i + 8] in caplog.text]


# --- connections: one lane per request in flight ------------------------------------------------------


async def test_each_request_in_flight_has_its_own_reused_connection(make_server, tmp_path):
    from voxmill.lanes import LaneTransport

    server = make_server(latency_ms=20, fail_first_n=1)  # every item: a 503 first, then a 200
    settings = settings_for(server, tmp_path).with_(rate_limit=RateLimit(max_concurrent=4, adaptive=False))
    async with VoxmillClient(settings) as client:
        results = await asyncio.gather(*speak_each(client, [tts(f"Lane line {i}.") for i in range(40)], tmp_path))
        lanes = client._http._transport
        assert isinstance(lanes, LaneTransport)
        # at most one connection per concurrent request, each kept alive and reused, and every lane back
        assert len(lanes._all) <= 4 and len(lanes._free) == len(lanes._all)
    assert all(r.attempts == 2 for r in results)
    stats = server.stats()
    assert stats["by_status"] == {"503": 40, "200": 40}


async def test_a_lane_whose_connection_the_server_closes_is_taken_last():
    """A refusal says ``Connection: close``: its lane would open a new connection, which a server capping
    connections refuses while the idle ones are open, so the next request takes a lane still connected."""
    from voxmill.lanes import LaneTransport

    made: list[httpx.MockTransport] = []

    class Body(httpx.AsyncByteStream):  # a body still streaming (a whole one is closed at once)
        async def __aiter__(self):
            yield b"x"

    def answer(request: httpx.Request) -> httpx.Response:
        refused = request.url.path == "/refused"
        return httpx.Response(503 if refused else 200, headers={"connection": "close"} if refused else {},
                              stream=Body())

    def make_lane() -> httpx.MockTransport:
        made.append(httpx.MockTransport(answer))
        return made[-1]

    lanes = LaneTransport(4, make_lane)
    kept = await lanes.handle_async_request(httpx.Request("POST", "http://api/ok"))
    refused = await lanes.handle_async_request(httpx.Request("POST", "http://api/refused"))
    assert len(made) == 2  # both in flight at once: a lane each
    await kept.aclose()
    await refused.aclose()  # freed last, yet its connection is closed
    again = await lanes.handle_async_request(httpx.Request("POST", "http://api/ok"))
    await again.aclose()
    assert len(made) == 2 and lanes._free[-1] is made[0] and lanes._free[0] is made[1], "the warm lane was taken"


def test_a_server_capping_connections_per_client_teaches_the_in_flight_limit(tmp_path):
    """Past its cap on connections per client the server answers 503 "too many connections" (readably, not by a
    reset): the client hears it as too many in flight, settles at or under the cap, and loses no item."""
    from voxmill.jobs import JobRequest, run_job
    from voxmill.server.faults import FaultConfig

    cap, items = 12, 240
    config = ServerConfig(token="t0ken-cap", engine="null", max_connections_per_client=cap,
                          faults=FaultConfig(latency_ms=500))
    with serve_in_thread(config) as running:
        server = LocalServer(running)
        manifest = tmp_path / "m.csv"
        manifest.write_text("id,text\n" + "".join(f"r{i},Line {i} of the connection cap.\n" for i in range(items)))
        settings = Settings(api_key=ApiKey(server.token), base_url=server.base_url, cache_dir=tmp_path / "cache")
        summary = run_job(JobRequest("tts", str(manifest), tmp_path / "out"), settings)
        stats = server.stats()
    print(f"\ncap {cap}: {stats['refused_connections']} refused, server in flight ≤ {stats['in_flight_high']}, "
          f"learned limit {summary.in_flight_limit}, {summary.elapsed_s:.1f} s")
    assert summary.done == items and summary.failed == 0, summary
    assert stats["generations_total"] == items and stats["by_status"] == {"200": items}, stats
    # the in-flight limit grew past the cap (in slow start) and was cut by what the refusals said
    assert 1 <= stats["refused_connections"] <= 0.1 * items, stats["refused_connections"]
    assert stats["in_flight_high"] <= cap
    assert summary.in_flight_limit is not None and summary.in_flight_limit <= cap, summary.in_flight_limit
