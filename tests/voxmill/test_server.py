"""The local server over real loopback sockets, with raw httpx: contract, engines, faults, counters."""

from __future__ import annotations

import json
import re
import struct
import time
from typing import Any

import httpx
import jiwer
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from voxmill.audio.formats import check_audio_body, detect_format, read_wav, wav_bytes
from voxmill.catalog import TTS_MODELS
from voxmill.errors import BadResponse
from voxmill.server import NULL_TRANSCRIPT, request_content_hash

SENTENCE = "Seven bright kites drifted over the harbour while Maria counted the fishing boats."


def generate(server: Any, fields: dict[str, str], files: dict[str, tuple[str, bytes]] | None = None,
             headers: dict[str, str] | None = None, timeout: float = 60.0) -> httpx.Response:
    """POST /api/v1/generate as multipart (text fields as parts without a filename)."""
    parts: dict[str, Any] = {name: (None, value) for name, value in fields.items()}
    parts.update(files or {})
    return httpx.post(f"{server.base_url}/api/v1/generate", files=parts,
                      headers=server.headers if headers is None else headers, timeout=timeout)


def upload(server: Any, model: str, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{server.base_url}/api/v1/generate/upload",
                      files={"model": (None, model), "voice_reference_file": (name, data)}, headers=server.headers)


def tone_wav(seconds: float = 0.5, rate: int = 24000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return wav_bytes((np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16), rate)


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


# --- auth ---------------------------------------------------------------------------------------------


def test_missing_or_wrong_token_is_401(null_server):
    fields = {"model": "higgs2p5", "text": "hello"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": null_server.token}):
        response = generate(null_server, fields, headers=headers)
        assert response.status_code == 401
        assert "token" in response.json()["error"]
    assert httpx.get(f"{null_server.base_url}/admin/stats").status_code == 401
    assert httpx.post(f"{null_server.base_url}/api/v1/generate/upload", files={"model": (None, "higgs2p5")}
                      ).status_code == 401


def test_websocket_bad_token_gets_error_and_1008(null_server):
    url = null_server.base_url.replace("http", "ws") + "/api/v1/generate/ws"
    with connect(url) as ws:
        ws.send(json.dumps({"token": "wrong", "model": "higgs2p5"}))
        message = json.loads(ws.recv(timeout=5))
        assert message["type"] == "error" and message["status"] == 401
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert ws.close_code == 1008


# --- TTS with the real engine -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", TTS_MODELS)
def test_each_tts_model_returns_24k_mono_wav_of_plausible_length(real_server, model):
    text = "The library opens at nine on weekdays."
    response = generate(real_server, {"model": model, "text": text})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["x-voxmill-engine"].startswith("piper:")
    assert response.headers["x-request-id"]
    assert int(response.headers["x-credits-remaining"]) < 1_000_000
    check_audio_body(response.content, "wav")
    samples, rate, channels = read_wav(response.content)
    assert (rate, channels) == (24000, 1)
    seconds = samples.size / rate
    assert 0.03 * len(text) <= seconds <= 0.12 * len(text), seconds
    assert np.abs(samples).max() > 1000  # speech, not silence


@pytest.mark.slow
@pytest.mark.parametrize("fmt, magic", [("mp3", "mp3"), ("flac", "flac"), ("opus", "ogg"), ("aac", "aac")])
def test_qwen3_response_format_comes_back_in_that_format(real_server, fmt, magic):
    response = generate(real_server, {"model": "qwen3-tts", "text": "Good morning.", "response_format": fmt})
    assert response.status_code == 200, response.text
    assert detect_format(response.content) == magic
    check_audio_body(response.content, fmt)


@pytest.mark.slow
def test_qwen3_pcm_is_raw_s16le_matching_the_wav(real_server):
    fields = {"model": "qwen3-tts", "text": "Good morning."}
    pcm = generate(real_server, {**fields, "response_format": "pcm"}).content
    wav = generate(real_server, fields).content
    assert detect_format(pcm) is None and len(pcm) % 2 == 0
    assert pcm == read_wav(wav)[0].astype("<i2").tobytes()


@pytest.mark.slow
def test_speed_and_seed(real_server):
    text = "Counting the boats takes a while."
    normal = generate(real_server, {"model": "higgs2p5", "text": text}).content
    fast = generate(real_server, {"model": "higgs2p5", "text": text, "voice_settings": '{"speed": 2.0}'}).content
    assert len(fast) < 0.75 * len(normal)
    seeded = [generate(real_server, {"model": "chatterbox", "text": text, "seed": "7"}).content for _ in range(2)]
    assert seeded[0] == seeded[1]


@pytest.mark.slow
def test_tts_then_asr_round_trip(real_server):
    speech = generate(real_server, {"model": "higgs2p5", "text": SENTENCE})
    assert speech.status_code == 200
    response = generate(real_server, {"model": "whisper_v3_turbo", "response_format": "json", "language": "en"},
                        files={"file": ("speech.wav", speech.content)})
    assert response.status_code == 200, response.text
    assert response.headers["x-voxmill-engine"].startswith("faster-whisper:")
    body = response.json()
    assert set(body) == {"text", "language", "duration", "segments"}
    assert body["language"] == "en"
    assert body["duration"] == pytest.approx(read_wav(speech.content)[0].size / 24000, abs=0.01)
    assert body["segments"] and {"start", "end", "text"} <= set(body["segments"][0])
    assert jiwer.wer(normalise(SENTENCE), normalise(body["text"])) <= 0.15, body["text"]
    as_text = generate(real_server, {"model": "whisper_v3_turbo", "response_format": "text"},
                       files={"file": ("speech.wav", speech.content)})
    assert as_text.headers["content-type"].startswith("text/plain")
    assert as_text.text == body["text"]


@pytest.mark.slow
@pytest.mark.parametrize("data", [b"", b"this is not audio at all" * 20], ids=["empty", "garbage"])
def test_asr_rejects_undecodable_audio_with_400(real_server, data):
    response = generate(real_server, {"model": "whisper_v3_turbo"}, files={"file": ("clip.wav", data)})
    assert response.status_code == 400
    assert response.json()["param"] == "file"


@pytest.mark.slow
def test_websocket_streams_pcm_then_complete(real_server):
    url = real_server.base_url.replace("http", "ws") + "/api/v1/generate/ws"
    text = "Streaming speech arrives in small pieces."
    audio = bytearray()
    frames: list[dict[str, Any]] = []
    with connect(url) as ws:
        ws.send(json.dumps({"token": real_server.token, "model": "higgs2p5"}))
        ws.send(json.dumps({"text": text, "voice_settings": {"speed": 1.0}}))
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                assert len(message) <= 24000
                audio += message
                continue
            frames.append(json.loads(message))
            if frames[-1]["type"] in ("complete", "error"):
                break
    assert frames[-1]["type"] == "complete", frames
    assert frames[-1]["bytes"] == len(audio)
    assert len(audio) % 2 == 0
    seconds = len(audio) / 48000
    assert 0.03 * len(text) <= seconds <= 0.12 * len(text)
    wav = generate(real_server, {"model": "higgs2p5", "text": text}).content
    assert bytes(audio) == read_wav(wav)[0].astype("<i2").tobytes()


# --- validation (one case per model; the full matrix is tested client-side) ----------------------------


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"model": "higgs2p5", "text": "hi", "voice_settings": '{"speed": 9}'}, "voice_settings.speed"),
        ({"model": "chatterbox", "text": "hi", "language_id": "xx"}, "language_id"),
        ({"model": "qwen3-tts", "text": "hi", "voice": "Vivian", "voice_id": "qwen3-tts-abc"}, "voice"),
        ({"model": "whisper_v3_turbo", "response_format": "srt"}, "response_format"),
        ({"model": "higgs2p5"}, "text"),
        ({"model": "higgs2p5", "text": "hi", "colour": "blue"}, "colour"),
    ],
)
def test_invalid_params_are_422_naming_the_param(null_server, fields, param):
    files = {"file": ("a.wav", tone_wav())} if fields["model"] == "whisper_v3_turbo" else None
    response = generate(null_server, fields, files=files)
    assert response.status_code == 422, response.text
    assert response.json()["param"] == param
    assert param in response.json()["error"]


def test_bad_requests_are_400(null_server):
    assert generate(null_server, {"model": "nope", "text": "hi"}).status_code == 400
    assert generate(null_server, {"text": "hi"}).status_code == 400
    streamed = generate(null_server, {"model": "higgs2p5", "text": "hi", "stream": "true"})
    assert streamed.status_code == 400 and "WebSocket" in streamed.json()["error"]
    wrong_type = generate(null_server, {"model": "whisper_v3_turbo"}, files={"file": ("notes.txt", b"x")})
    assert wrong_type.status_code == 422 and wrong_type.json()["param"] == "file"
    as_json = httpx.post(f"{null_server.base_url}/api/v1/generate", json={"model": "higgs2p5", "text": "hi"},
                         headers=null_server.headers)
    assert as_json.status_code == 415


# --- uploads and voices ------------------------------------------------------------------------------


def test_upload_gives_a_voice_id_usable_with_that_model_only(null_server):
    reference = tone_wav()
    response = upload(null_server, "higgs2p5", "me.wav", reference)
    assert response.status_code == 200, response.text
    voice_id = response.json()["voice_id"]
    assert re.fullmatch(r"higgs2p5-[0-9a-f]{16}", voice_id)
    assert upload(null_server, "higgs2p5", "me.wav", reference).json()["voice_id"] == voice_id
    for _ in range(2):
        used = generate(null_server, {"model": "higgs2p5", "text": "hi", "voice_id": voice_id})
        assert used.status_code == 200
        assert voice_id in used.headers["x-voxmill-voice-note"]
    other_model = generate(null_server, {"model": "chatterbox", "text": "hi", "voice_id": voice_id})
    assert other_model.status_code == 400 and "unknown voice_id" in other_model.json()["error"]
    unknown = generate(null_server, {"model": "higgs2p5", "text": "hi", "voice_id": "higgs2p5-0000"})
    assert unknown.status_code == 400
    assert null_server.stats()["uploads"] == 2


def test_upload_rejects_bad_references(null_server):
    assert upload(null_server, "whisper_v3_turbo", "me.wav", tone_wav()).status_code == 400
    assert upload(null_server, "higgs2p5", "me.ogg", tone_wav()).status_code == 422
    assert upload(null_server, "higgs2p5", "me.wav", b"").status_code == 400
    assert upload(null_server, "higgs2p5", "me.mp3", b"not an mp3 at all" * 10).status_code == 400


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/v.wav", "http://localhost:8000/v.wav", "https://10.1.2.3/v.wav", "http://[::1]/v.wav",
     "http://169.254.169.254/latest", "http://127.1/v.wav", "http://2130706433/v.wav", "http://192.168.0.9/x",
     "file:///etc/passwd"],
)
def test_reference_urls_to_non_public_hosts_are_refused(null_server, url):
    response = generate(null_server, {"model": "higgs2p5", "text": "hi", "voice_url": url})
    # a non-http scheme is a catalogue rule (422); a non-public host is the server's own check (400)
    assert response.status_code == (422 if url.startswith("file:") else 400), url
    assert response.json()["param"] == "voice_url"


def test_public_reference_urls_and_files_are_accepted_and_ignored(null_server):
    response = generate(null_server, {"model": "chatterbox", "text": "hi", "preset_url": "https://example.com/v.wav"},
                        files={"audio_prompt_file": ("me.wav", tone_wav())})
    assert response.status_code == 200
    assert response.headers["x-voxmill-ignored"] == "preset_url,audio_prompt_file"
    preset = generate(null_server, {"model": "qwen3-tts", "text": "hi", "voice": "Serena"})
    assert "Serena" in preset.headers["x-voxmill-voice-note"]


# --- null engine ---------------------------------------------------------------------------------------


def test_null_engine_answers_valid_audio_and_a_fixed_transcript(null_server):
    response = generate(null_server, {"model": "higgs2p5", "text": "anything at all"})
    assert response.headers["x-voxmill-engine"] == "null"
    samples, rate, channels = read_wav(response.content)
    assert (rate, channels, samples.size) == (24000, 1, 2400)
    flac = generate(null_server, {"model": "qwen3-tts", "text": "hi", "response_format": "flac"})
    assert detect_format(flac.content) == "flac"
    asr = generate(null_server, {"model": "whisper_v3_turbo"}, files={"file": ("a.wav", tone_wav(1.5))})
    assert asr.json()["text"] == NULL_TRANSCRIPT
    assert asr.json()["duration"] == pytest.approx(1.5)
    # a truncated WAV: the duration of what arrived (as the real engine decodes it), not its header's claim
    cut = generate(null_server, {"model": "whisper_v3_turbo"}, files={"file": ("a.wav", tone_wav(1.5)[:24045])})
    assert cut.json()["duration"] == pytest.approx(0.5)
    started = time.perf_counter()
    with httpx.Client(headers=null_server.headers) as client:
        for _ in range(50):
            client.post(f"{null_server.base_url}/api/v1/generate",
                        files={"model": (None, "higgs2p5"), "text": (None, "hi")}).raise_for_status()
    assert time.perf_counter() - started < 5.0  # generous: ~0.1 s on a 2-core box


# --- faults --------------------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(make_server):
    server = make_server(rate_limit_rps=1.0)
    statuses = []
    for _ in range(4):
        response = generate(server, {"model": "higgs2p5", "text": "hi"})
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert "rate limit" in response.json()["error"]
    assert statuses == [200, 429, 429, 429]
    assert server.stats()["by_status"] == {"200": 1, "429": 3}


def test_error_rate_answers_500_and_503(make_server):
    server = make_server(error_rate=0.5, seed=3)
    statuses = [generate(server, {"model": "higgs2p5", "text": f"hi {i}"}).status_code for i in range(40)]
    errors = [s for s in statuses if s != 200]
    assert set(statuses) == {200, 500, 503}
    assert 8 <= len(errors) <= 32
    assert abs(statuses.count(500) - statuses.count(503)) <= 1  # they alternate
    stats = server.stats()
    assert stats["generations_total"] == statuses.count(200)
    # admin is never faulted
    server.set_faults(error_rate=1.0)
    assert server.stats()["requests"] == 40


def test_reset_drops_the_connection_without_a_response(make_server):
    server = make_server(reset_rate=1.0)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        generate(server, {"model": "higgs2p5", "text": "hi"})
    stats = server.stats()
    assert (stats["requests"], stats["resets"], stats["generations_total"], stats["by_status"]) == (1, 1, 0, {})


def test_truncated_body_is_a_valid_response_with_a_short_wav(make_server):
    server = make_server(truncate_rate=1.0)
    fields = {"model": "higgs2p5", "text": "hi"}
    response = generate(server, fields)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content) == 4844 // 2
    declared = struct.unpack("<I", response.content[40:44])[0]
    assert declared > len(response.content) - 44
    with pytest.raises(BadResponse, match="truncated"):
        check_audio_body(response.content, "wav")
    # billed: the server did the work; and counted as a truncation, so a test can split extra generations
    stats = server.stats()
    assert stats["generations"] == stats["truncations"] == {request_content_hash(fields, {}): 1}


def test_slow_body_trickles_over_the_set_time(make_server):
    server = make_server(slow_body_rate=1.0, slow_body_seconds=1.0)
    started = time.perf_counter()
    response = generate(server, {"model": "higgs2p5", "text": "hi"})
    assert time.perf_counter() - started >= 1.0
    check_audio_body(response.content, "wav")


def test_latency_and_jitter_delay_each_request(make_server):
    server = make_server(latency_ms=200, jitter_ms=100, seed=1)
    started = time.perf_counter()
    generate(server, {"model": "higgs2p5", "text": "hi"}).raise_for_status()
    assert 0.2 <= time.perf_counter() - started < 2.0


def test_fail_first_n_fails_each_distinct_request_n_times(make_server):
    server = make_server(fail_first_n=2)
    first = {"model": "higgs2p5", "text": "one"}
    assert [generate(server, first).status_code for _ in range(3)] == [503, 503, 200]
    assert generate(server, {"model": "higgs2p5", "text": "two"}).status_code == 503
    assert server.stats()["generations"] == {request_content_hash(first, {}): 1}


def test_faults_change_at_run_time_and_reject_unknown_keys(null_server):
    new = null_server.set_faults(error_rate=1.0)
    assert new["error_rate"] == 1.0 and new["latency_ms"] == 0.0
    assert generate(null_server, {"model": "higgs2p5", "text": "hi"}).status_code == 500
    null_server.clear_faults()
    assert generate(null_server, {"model": "higgs2p5", "text": "hi"}).status_code == 200
    for body in ({"no_such_fault": 1}, {"error_rate": 2.0}, {"latency_ms": "slow"}):
        response = httpx.put(f"{null_server.base_url}/admin/faults", json=body, headers=null_server.headers)
        assert response.status_code == 400, body


def test_real_server_faults_are_restored(real_server):
    with real_server.faults(error_rate=1.0):
        assert generate(real_server, {"model": "higgs2p5", "text": "hi"}).status_code == 500
    assert httpx.get(f"{real_server.base_url}/admin/faults", headers=real_server.headers).json()["error_rate"] == 0


# --- counters ------------------------------------------------------------------------------------------


def test_stats_count_requests_statuses_generations_and_uploads(null_server):
    tts = {"model": "higgs2p5", "text": "counted"}
    audio = tone_wav()
    asr = {"model": "whisper_v3_turbo"}
    for _ in range(2):
        generate(null_server, tts).raise_for_status()
    generate(null_server, asr, files={"file": ("a.wav", audio)}).raise_for_status()
    generate(null_server, {"model": "higgs2p5"})  # 422
    upload(null_server, "chatterbox", "me.wav", audio).raise_for_status()
    generate(null_server, tts, headers={})  # 401
    stats = null_server.stats()
    assert stats["requests"] == 6
    assert stats["by_status"] == {"200": 4, "422": 1, "401": 1}
    assert stats["generations"] == {
        request_content_hash(tts, {}): 2,
        request_content_hash(asr, {"file": audio}): 1,
    }
    assert stats["generations_total"] == 3
    assert stats["generations_by_model"] == {"higgs2p5": 2, "whisper_v3_turbo": 1}
    assert stats["uploads"] == 1
    arrived = stats["arrived"]
    null_server.reset_stats()
    assert null_server.stats() == {"requests": 0, "by_status": {}, "resets": 0, "refused_connections": 0,
                                   "generations_total": 0,
                                   "generations": {}, "generations_by_model": {}, "truncations_total": 0,
                                   "truncations": {}, "uploads": 0, "empty_audio": 0, "in_flight": 0,
                                   "in_flight_high": 0, "queued": 0, "queued_high": 0,
                                   "arrived": arrived, "settled_through": arrived}  # arrival numbers go on
    credits = generate(null_server, tts).headers["x-credits-remaining"]
    assert credits == "999999"



def ws_session(server: Any, request: dict[str, Any]) -> tuple[bytes, list[dict[str, Any]], int | None]:
    """One WebSocket request: (audio, JSON frames, close code); a dropped connection ends it too."""
    url = server.base_url.replace("http", "ws") + "/api/v1/generate/ws"
    audio = bytearray()
    frames: list[dict[str, Any]] = []
    with connect(url) as ws:
        ws.send(json.dumps({"token": server.token, "model": "higgs2p5"}))
        ws.send(json.dumps(request))
        try:
            while True:
                message = ws.recv(timeout=30)
                if isinstance(message, bytes):
                    audio += message
                else:
                    frames.append(json.loads(message))
        except ConnectionClosed:
            pass
    return bytes(audio), frames, ws.close_code


def test_websocket_faults_and_validation(make_server):
    server = make_server(error_rate=1.0)
    audio, frames, code = ws_session(server, {"text": "hi"})
    assert (audio, frames[-1]["type"], frames[-1]["status"], code) == (b"", "error", 500, 1011)
    server.set_faults(error_rate=0.0, reset_rate=1.0)
    audio, frames, code = ws_session(server, {"text": "hi"})
    assert audio == b"" and not any(f["type"] == "complete" for f in frames)
    server.set_faults(reset_rate=0.0)
    audio, frames, code = ws_session(server, {"text": "hi", "voice_settings": {"speed": 99}})
    assert frames[-1]["status"] == 422 and frames[-1]["param"] == "voice_settings.speed" and code == 1007
    audio, frames, code = ws_session(server, {"text": "hi"})
    assert frames[-1]["type"] == "complete" and len(audio) == 4800 and code == 1000
    stats = server.stats()
    assert stats["resets"] == 1 and stats["by_status"] == {"500": 1, "422": 1, "101": 1}
    assert stats["generations_total"] == 1


def test_serve_parser_builds_the_config(monkeypatch):
    import argparse

    from voxmill.cli.serve import add_serve_parser, config_from_args

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    monkeypatch.setenv("VOXMILL_LOCAL_TOKEN", "from-env")
    args = parser.parse_args(["serve", "--engine", "null", "--error-rate", "0.25", "--rate-limit-rps", "5",
                              "--fail-first-n", "1", "--seed", "9", "--no-preload"])
    config = config_from_args(args)
    assert (args.host, args.port, config.token, config.engine, config.preload) == (
        "127.0.0.1", 8765, "from-env", "null", False)
    assert (config.faults.error_rate, config.faults.rate_limit_rps, config.faults.burst) == (0.25, 5.0, 1.0)
    assert (config.faults.fail_first_n, config.faults.seed) == (1, 9)
    monkeypatch.delenv("VOXMILL_LOCAL_TOKEN")
    assert len(config_from_args(parser.parse_args(["serve"])).token) >= 16


# --- requests in flight and latency profiles --------------------------------------------------------


def _concurrently(server: Any, count: int, text: str = "hi") -> list[httpx.Response]:
    """``count`` TTS requests at once, each on its own connection; their responses in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: generate(server, {"model": "higgs2p5", "text": f"{text} {i}"}), range(count)))


def test_in_flight_gauge_and_high_water_mark(make_server):
    from concurrent.futures import ThreadPoolExecutor

    server = make_server(latency_ms=1000)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(generate, server, {"model": "higgs2p5", "text": f"hi {i}"}) for i in range(3)]
        stats = server.wait_for(lambda s: s["in_flight"] == 3)  # a gauge, not a sleep
        assert stats["in_flight_high"] == 3 and stats["queued"] == 0
        assert all(f.result().status_code == 200 for f in futures)
    stats = server.stats()
    assert (stats["in_flight"], stats["in_flight_high"]) == (0, 3)
    server.reset_stats()
    assert server.stats()["in_flight_high"] == 0


def test_settled_through_tells_when_every_request_of_a_dead_client_was_served(make_server):
    """A killed client's requests go on being served (and billed) on the server: a test waits for
    ``settled_through`` to pass the ``arrived`` it noted at the kill, while newer requests stay in flight."""
    from concurrent.futures import ThreadPoolExecutor

    server = make_server(latency_ms=600)
    with ThreadPoolExecutor(4) as pool:
        first = [pool.submit(generate, server, {"model": "higgs2p5", "text": f"first {i}"}) for i in range(2)]
        server.wait_for(lambda s: s["in_flight"] == 2)
        arrived = server.stats()["arrived"]
        assert server.stats()["settled_through"] < arrived, "two requests still in flight"
        later = [pool.submit(generate, server, {"model": "higgs2p5", "text": f"later {i}"}) for i in range(2)]
        server.wait_for(lambda s: s["arrived"] == arrived + 2)
        stats = server.wait_for(lambda s: s["settled_through"] >= arrived)
        firsts = {request_content_hash({"model": "higgs2p5", "text": f"first {i}"}, {}) for i in range(2)}
        assert firsts <= set(stats["generations"]), "both of the noted requests were billed"
        assert stats["settled_through"] < stats["arrived"] and stats["in_flight"] >= 1, "the later ones still run"
        assert all(f.result().status_code == 200 for f in first + later)
    stats = server.stats()
    assert stats["settled_through"] == stats["arrived"] == arrived + 2 and stats["generations_total"] == 4


def test_max_in_flight_answers_429_past_the_cap(make_server):
    server = make_server(latency_ms=800, max_in_flight=2)
    responses = _concurrently(server, 5)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and "in flight" in refused.json()["error"]
    stats = server.stats()
    assert stats["in_flight_high"] == 2 and stats["generations_total"] == 2 and stats["in_flight"] == 0


def test_max_in_flight_in_queue_mode_holds_requests_and_stretches_latency(make_server):
    server = make_server(latency_ms=500, max_in_flight=2, overload="queue")
    started = time.perf_counter()
    responses = _concurrently(server, 6)
    elapsed = time.perf_counter() - started
    assert all(r.status_code == 200 for r in responses)
    assert 1.5 <= elapsed < 4.0  # three rounds of two, 0.5 s each
    stats = server.stats()
    assert (stats["in_flight_high"], stats["queued_high"], stats["generations_total"]) == (2, 4, 6)
    assert (stats["in_flight"], stats["queued"]) == (0, 0)


def test_overload_mode_and_cap_change_at_run_time(null_server):
    assert null_server.set_faults(max_in_flight=3, overload="queue")["overload"] == "queue"
    for body in ({"overload": "drop"}, {"max_in_flight": -1}, {"max_in_flight": 1.5}):
        response = httpx.put(f"{null_server.base_url}/admin/faults", json=body, headers=null_server.headers)
        assert response.status_code == 400, body


def test_latency_profile_grows_with_text_and_audio(make_server):
    server = make_server(latency_ms=50, tts_ms_per_char=10)
    timings = {}
    for text in ("hi", "x" * 100):
        started = time.perf_counter()
        generate(server, {"model": "higgs2p5", "text": text}).raise_for_status()
        timings[len(text)] = time.perf_counter() - started
    assert timings[2] < 0.5 and 1.0 <= timings[100] < 2.0  # 50 ms + 10 ms × 100 characters
    server.set_faults(latency_ms=0, tts_ms_per_char=0, asr_ms_per_audio_s=500)
    started = time.perf_counter()
    generate(server, {"model": "whisper_v3_turbo"}, files={"file": ("a.wav", tone_wav(2.0, 16000))}).raise_for_status()
    assert 1.0 <= time.perf_counter() - started < 2.5  # 500 ms × 2 s of audio
