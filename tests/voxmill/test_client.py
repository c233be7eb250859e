"""Protocol edge cases of the HTTP client, against respx-mocked responses (no network)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import respx

from voxmill.audio.formats import wav_bytes
from voxmill.catalog import validate
from voxmill.errors import (
    AuthError,
    BadResponse,
    ConfigError,
    EmptyAudio,
    InvalidItem,
    RateLimited,
    TransientError,
    ValidationError,
    VoxmillError,
)
from voxmill.http import SpeechResult, TranscriptResult, VoxmillClient, parse_retry_after
from voxmill.limiter import AsyncRateLimiter
from voxmill.settings import ApiKey, RateLimit, RetryPolicy, Settings

SECRET = "sk-VOXMILL-SECRET-123"
BASE = "https://api.test"
GENERATE = f"{BASE}/api/v1/generate"
UPLOAD = f"{BASE}/api/v1/generate/upload"
WAV = wav_bytes(np.zeros(2400, dtype=np.int16), 24000)


def make_settings(tmp_path: Path, **retry: float) -> Settings:
    policy = dict(max_attempts=3, initial_backoff=0.01, max_backoff=0.05, jitter=0.1, max_retry_after=10.0)
    policy.update(retry)
    return Settings(
        api_key=ApiKey(SECRET),
        base_url=BASE,
        rate_limit=RateLimit(max_concurrent=4),
        retry=RetryPolicy(**policy),  # type: ignore[arg-type]
        cache_dir=tmp_path / "cache",
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def api():
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client(settings: Settings):
    async with VoxmillClient(settings) as c:
        yield c


def tts(**params):
    return validate("higgs2p5", {"text": "Hello there.", **params})


def asr(tmp_path: Path, **params):
    audio = tmp_path / "clip.wav"
    audio.write_bytes(WAV)
    return validate("whisper_v3_turbo", {"file": audio, **params})


# --- request shape ---------------------------------------------------------------------------------


async def test_tts_without_file_is_still_multipart(api, client, tmp_path):
    route = api.post(GENERATE).respond(200, content=WAV)
    result = await client.synthesize(tts(voice="Linda", voice_settings={"speed": 1.2}), into=tmp_path / "out.wav")
    assert isinstance(result, SpeechResult)
    request = route.calls.last.request
    content_type = request.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    body = request.content
    assert b'name="model"\r\n\r\nhiggs2p5' in body
    assert b'name="text"\r\n\r\nHello there.' in body
    assert b'name="voice"\r\n\r\nLinda' in body
    # JSON objects travel as JSON strings, text fields carry no filename
    assert b'name="voice_settings"\r\n\r\n{"speed":1.2}' in body
    assert b"filename=" not in body


async def test_bearer_header_sent(api, client, tmp_path):
    route = api.post(GENERATE).respond(200, content=WAV)
    await client.synthesize(tts(), into=tmp_path / "out.wav")
    assert route.calls.last.request.headers["authorization"] == f"Bearer {SECRET}"


async def test_asr_sends_file_with_filename_and_language(api, client, tmp_path):
    route = api.post(GENERATE).respond(200, json={"text": "hi"})
    await client.transcribe(asr(tmp_path))
    body = route.calls.last.request.content
    assert b'name="file"; filename="clip.wav"' in body
    assert WAV in body
    assert b'name="language"\r\n\r\nen' in body
    assert b'name="response_format"\r\n\r\njson' in body


async def test_bytes_file_gets_generic_name_with_right_extension(api, client):
    route = api.post(GENERATE).respond(200, json={"text": "hi"})
    await client.transcribe(validate("whisper_v3_turbo", {"file": WAV}))
    assert b'name="file"; filename="file.wav"' in route.calls.last.request.content


async def test_result_metadata(api, client, tmp_path):
    api.post(GENERATE).respond(
        200,
        content=WAV,
        headers={"x-request-id": "req-1", "x-credits-remaining": "42", "x-voxmill-engine": "piper"},
    )
    result = await client.synthesize(tts(), into=tmp_path / "out.wav")
    assert (result.request_id, result.credits_remaining, result.engine) == ("req-1", "42", "piper")
    assert (result.status, result.attempts, result.format) == (200, 1, "wav")
    assert result.path.read_bytes() == WAV and result.size == len(WAV) and result.latency_s >= 0


async def test_engine_defaults_to_hosted_model(api, client, tmp_path):
    api.post(GENERATE).respond(200, content=WAV, headers={"request-id": "r2"})
    result = await client.synthesize(tts(), into=tmp_path / "out.wav")
    assert result.engine == "hosted:higgs2p5" and result.request_id == "r2"


async def test_stream_true_refused(api, client):
    with pytest.raises(InvalidItem, match="stream_speech"):
        await client.generate(tts(stream=True), item="row-7")


async def test_kind_mismatch(client, tmp_path):
    with pytest.raises(ValidationError):
        await client.synthesize(asr(tmp_path), into=tmp_path / "out.wav")
    with pytest.raises(ValidationError):
        await client.transcribe(tts())


def test_no_key_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="VOXMILL_API_KEY"):
        VoxmillClient(Settings(api_key=None, cache_dir=tmp_path))


# --- status mapping and retries --------------------------------------------------------------------


async def test_401_is_auth_error_without_retry(api, client, tmp_path):
    route = api.post(GENERATE).respond(401, text="nope")
    with pytest.raises(AuthError, match="VOXMILL_API_KEY") as info:
        await client.synthesize(tts(), item="row-1", into=tmp_path / "out.wav")
    assert route.call_count == 1
    assert (info.value.status, info.value.attempts) == (401, 1)
    assert "row-1" in str(info.value)


async def test_422_is_invalid_item_without_retry(api, client, tmp_path):
    route = api.post(GENERATE).respond(422, text='{"detail": "voice Bob unknown"}' + "x" * 2000)
    with pytest.raises(InvalidItem, match="voice Bob unknown") as info:
        await client.synthesize(tts(), into=tmp_path / "out.wav")
    assert route.call_count == 1
    assert info.value.status == 422
    assert "x" * 501 not in str(info.value)  # only the body's first 500 bytes


async def test_503_twice_then_success(api, settings, tmp_path):
    route = api.post(GENERATE)
    route.side_effect = [httpx.Response(503), httpx.Response(503), httpx.Response(200, content=WAV)]
    seen: list[tuple[str | None, str, int]] = []
    async with VoxmillClient(settings, on_retry=lambda i, e, n: seen.append((i, e.kind, n))) as client:
        result = await client.synthesize(tts(), item="row-3", into=tmp_path / "out.wav")
        assert client.retries_pending == 0
    assert result.attempts == 3 and route.call_count == 3
    assert seen == [("row-3", "transient", 1), ("row-3", "transient", 2)]


async def test_500_exhaustion_carries_attempts_and_status(api, client, tmp_path):
    route = api.post(GENERATE).respond(500, text="boom")
    with pytest.raises(TransientError) as info:
        await client.synthesize(tts(), into=tmp_path / "out.wav")
    assert route.call_count == 3
    assert (info.value.attempts, info.value.status) == (3, 500)
    assert client.retries_pending == 0


async def test_timeout_is_transient(api, client, tmp_path):
    api.post(GENERATE).side_effect = httpx.ReadTimeout("slow")
    with pytest.raises(TransientError, match="timed out") as info:
        await client.synthesize(tts(), into=tmp_path / "out.wav")
    assert info.value.attempts == 3


async def test_reset_then_success(api, client, tmp_path):
    api.post(GENERATE).side_effect = [httpx.RemoteProtocolError("peer closed"), httpx.Response(200, content=WAV)]
    assert (await client.synthesize(tts(), into=tmp_path / "out.wav")).attempts == 2


async def test_429_retry_after_is_honoured(api, settings, tmp_path):
    route = api.post(GENERATE)
    route.side_effect = [httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(200, content=WAV)]
    limiter = AsyncRateLimiter(RateLimit(requests_per_second=50, max_concurrent=4))
    async with VoxmillClient(settings, limiter=limiter) as client:
        started = time.monotonic()
        result = await client.synthesize(tts(), into=tmp_path / "out.wav")
        waited = time.monotonic() - started
    assert result.attempts == 2
    assert 1.0 <= waited < 1.5
    assert limiter.slowdowns == 1 and limiter.current_rate < 50


async def test_retry_after_too_large_gives_up(api, client, tmp_path):
    route = api.post(GENERATE).respond(429, headers={"Retry-After": "3600"})
    with pytest.raises(RateLimited) as info:
        await client.synthesize(tts(), into=tmp_path / "out.wav")
    assert route.call_count == 1
    assert info.value.retry_after == 3600 and info.value.status == 429 and info.value.attempts == 1


async def test_non_audio_200_is_bad_response_after_retries(api, client, tmp_path):
    route = api.post(GENERATE).respond(200, json={"error": "oops"})
    with pytest.raises(BadResponse, match="not audio") as info:
        await client.synthesize(tts(), item="row-9", into=tmp_path / "out.wav")
    assert route.call_count == 3 and info.value.attempts == 3
    assert "row-9" in str(info.value)


@pytest.mark.parametrize("body", [b"", wav_bytes(np.zeros(0, dtype=np.int16), 24000)], ids=["no-body", "no-samples"])
async def test_empty_audio_200_is_tried_twice_then_fails_as_empty_audio(api, tmp_path, body):
    route = api.post(GENERATE).respond(200, content=body)
    async with VoxmillClient(make_settings(tmp_path, max_attempts=6)) as client:
        with pytest.raises(EmptyAudio) as info:
            await client.synthesize(tts(), item="row 4 (id 'a')", into=tmp_path / "out.wav")
    assert route.call_count == 2 and info.value.attempts == 2 and info.value.kind == "empty_audio"
    assert str(info.value).count("row 4 (id 'a')") == 1
    route.side_effect = [httpx.Response(200, content=body), httpx.Response(200, content=WAV)]
    async with VoxmillClient(make_settings(tmp_path, max_attempts=6)) as client:
        assert (await client.synthesize(tts(), into=tmp_path / "out.wav")).attempts == 2


async def test_truncated_wav_is_bad_response(api, client, tmp_path):
    route = api.post(GENERATE).respond(200, content=WAV[: len(WAV) // 2])
    with pytest.raises(BadResponse, match="truncated"):
        await client.synthesize(tts(), into=tmp_path / "out.wav")
    route.side_effect = [httpx.Response(200, content=WAV[:100]), httpx.Response(200, content=WAV)]
    assert (await client.synthesize(tts(), into=tmp_path / "out.wav")).attempts == 2


async def test_qwen_format_checked(api, client, tmp_path):
    api.post(GENERATE).respond(200, content=WAV)
    request = validate("qwen3-tts", {"text": "hi", "response_format": "mp3"})
    with pytest.raises(BadResponse, match="mp3"):
        await client.synthesize(request, into=tmp_path / "out.wav")


def test_parse_retry_after():
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 28 <= parse_retry_after(later) <= 31


# --- ASR bodies ------------------------------------------------------------------------------------


async def test_asr_json_text(api, client, tmp_path):
    api.post(GENERATE).respond(
        200,
        json={
            "text": " hello world ",
            "language": "en",
            "duration": 1.5,
            "segments": [{"start": 0, "end": 1.5, "text": " hello world"}, {"bogus": 1}],
        },
    )
    result = await client.transcribe(asr(tmp_path))
    assert isinstance(result, TranscriptResult)
    assert (result.text, result.language, result.duration) == ("hello world", "en", 1.5)
    assert [(s.start, s.end, s.text) for s in result.segments] == [(0.0, 1.5, "hello world")]
    assert result.raw["language"] == "en"


async def test_asr_json_transcription(api, client, tmp_path):
    api.post(GENERATE).respond(200, json={"transcription": "bonjour"})
    result = await client.transcribe(asr(tmp_path))
    assert result.text == "bonjour" and result.segments == () and result.language is None


async def test_asr_text_format(api, client, tmp_path):
    route = api.post(GENERATE).respond(200, text="plain words\n")
    result = await client.transcribe(asr(tmp_path, response_format="text"))
    assert result.text == "plain words" and result.raw == "plain words\n"
    assert b'name="response_format"\r\n\r\ntext' in route.calls.last.request.content


@pytest.mark.parametrize("body", [b"not json", b'{"words": []}', b"[1, 2]"])
async def test_asr_bad_json_is_bad_response(api, client, tmp_path, body):
    api.post(GENERATE).respond(200, content=body)
    with pytest.raises(BadResponse):
        await client.transcribe(asr(tmp_path))


# --- voice upload ----------------------------------------------------------------------------------


async def test_upload_is_cached(api, client, settings, tmp_path):
    reference = tmp_path / "me.wav"
    reference.write_bytes(WAV)
    route = api.post(UPLOAD).respond(200, json={"voice_id": "v-1"})
    assert await client.upload_voice("higgs2p5", reference) == "v-1"
    assert await client.upload_voice("higgs2p5", reference) == "v-1"
    assert route.call_count == 1
    body = route.calls.last.request.content
    assert b'name="model"\r\n\r\nhiggs2p5' in body
    assert b'name="voice_reference_file"; filename="me.wav"' in body
    route.respond(200, json={"voice_id": "v-2"})
    assert await client.upload_voice("chatterbox", reference) == "v-2"
    assert route.call_count == 2
    # the cache is on disk: a new client (another run) does not upload again
    async with VoxmillClient(settings) as other:
        assert await other.upload_voice("higgs2p5", reference) == "v-1"
    assert route.call_count == 2
    assert json.loads((settings.cache_dir / "voice_ids.json").read_text())["version"] == 1


async def test_concurrent_uploads_coalesce(api, client, tmp_path):
    reference = tmp_path / "me.mp3"
    reference.write_bytes(b"ID3" + b"\0" * 100)

    async def slow(request):
        await asyncio.sleep(0.05)
        return httpx.Response(200, json={"voice_id": "v-9"})

    route = api.post(UPLOAD).mock(side_effect=slow)
    ids = await asyncio.gather(*(client.upload_voice("qwen3-tts", reference) for _ in range(5)))
    assert ids == ["v-9"] * 5 and route.call_count == 1


async def test_upload_rejects_bad_model_and_type(api, client, tmp_path):
    reference = tmp_path / "me.flac"
    reference.write_bytes(b"fLaC")
    with pytest.raises(ValidationError, match="voice_reference_file|flac"):
        await client.upload_voice("higgs2p5", reference)
    with pytest.raises(ValidationError, match="whisper_v3_turbo"):
        await client.upload_voice("whisper_v3_turbo", tmp_path / "x.wav")


async def test_upload_without_voice_id_is_bad_response(api, client, tmp_path):
    reference = tmp_path / "me.wav"
    reference.write_bytes(WAV)
    api.post(UPLOAD).respond(200, json={"id": "nope"})
    with pytest.raises(BadResponse, match="voice_id"):
        await client.upload_voice("higgs2p5", reference)


# --- the key never leaks ---------------------------------------------------------------------------


def _all_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error) + str(error) + repr(error.args)


async def test_key_never_leaks(api, settings, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    route = api.post(GENERATE)
    errors: list[VoxmillError] = []
    async with VoxmillClient(settings) as client:
        assert SECRET not in repr(client)
        for side_effect in (
            httpx.Response(401, text=f"bad key {SECRET}"),
            httpx.Response(500, text=f"echo Authorization: Bearer {SECRET}"),
            httpx.ConnectError(f"connection failed with Bearer {SECRET}"),
            httpx.ReadTimeout(f"timeout {SECRET}"),
        ):
            route.side_effect = side_effect if isinstance(side_effect, Exception) else None
            if not isinstance(side_effect, Exception):
                route.return_value = side_effect
            with pytest.raises(VoxmillError) as info:
                await client.synthesize(tts(), item="row-1", into=tmp_path / "out.wav")
            errors.append(info.value)
    assert [type(e) for e in errors] == [AuthError, TransientError, TransientError, TransientError]
    for error in errors:
        assert SECRET not in _all_text(error)
    assert SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in record.getMessage()


# --- WebSocket streaming (a tiny in-process server) ------------------------------------------------


async def test_stream_speech_yields_pcm_until_complete(tmp_path):
    from websockets.asyncio.server import serve

    received: list[dict] = []

    async def handler(socket):
        received.append(json.loads(await socket.recv()))
        received.append(json.loads(await socket.recv()))
        await socket.send(b"\x00\x01" * 10)
        await socket.send(json.dumps({"type": "progress", "pct": 50}))
        await socket.send(b"\x02\x03" * 10)
        await socket.send(json.dumps({"type": "complete"}))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        settings = make_settings(tmp_path).with_(base_url=f"http://127.0.0.1:{port}")
        async with VoxmillClient(settings) as client:
            request = validate("qwen3-tts", {"text": "hi", "voice": "Vivian", "voice_settings": {"speed": 1.1}})
            frames = [frame async for frame in client.stream_speech(request)]
    assert frames == [b"\x00\x01" * 10, b"\x02\x03" * 10]
    assert received[0] == {"token": SECRET, "model": "qwen3-tts"}
    assert received[1]["text"] == "hi" and received[1]["voice_settings"] == {"speed": 1.1}


async def test_stream_closed_before_complete_is_transient(tmp_path):
    from websockets.asyncio.server import serve

    async def handler(socket):
        await socket.recv()
        await socket.recv()
        await socket.send(b"\x00\x00")
        await socket.close()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        settings = make_settings(tmp_path).with_(base_url=f"http://127.0.0.1:{port}")
        async with VoxmillClient(settings) as client:
            with pytest.raises(TransientError, match="before 'complete'"):
                async for _ in client.stream_speech(validate("chatterbox", {"text": "hi"})):
                    pass


async def test_stream_refuses_files(client):
    request = validate("chatterbox", {"text": "hi", "audio_prompt_file": WAV})
    with pytest.raises(InvalidItem, match="voice_id"):
        async for _ in client.stream_speech(request):
            pass


async def test_transport_error_keeps_no_httpx_context(api, client, tmp_path):
    api.post(GENERATE).side_effect = httpx.ConnectError(f"refused {SECRET}")
    with pytest.raises(TransientError) as info:
        await client.synthesize(tts(), into=tmp_path / "out.wav")
    assert info.value.__cause__ is None and info.value.__context__ is None
