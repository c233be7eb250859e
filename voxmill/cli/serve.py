"""``voxmill serve``: the local API server in the foreground (the server itself is :mod:`voxmill.server`)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from voxmill.errors import ConfigError
from voxmill.server.faults import OVERLOAD_MODES, FaultConfig
from voxmill.server.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_MAX_UPLOAD_BYTES,
)
from voxmill.server.running import DEFAULT_HOST
from voxmill.server.service import ServerConfig

DEFAULT_PORT = 8765
TOKEN_ENV = "VOXMILL_LOCAL_TOKEN"


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve``: run the local server (same contract as the hosted API, offline engines, faults)."""
    parser = subparsers.add_parser(
        "serve",
        help="run the local API server (offline engines, fault injection)",
        description="Serve the audio API's contract locally with piper (TTS) and faster-whisper (ASR).",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s)")
    parser.add_argument("--token", default=None,
                        help=f"bearer token clients must send (default: ${TOKEN_ENV}, else a random one, printed)")
    parser.add_argument("--engine", choices=("real", "null"), default="real",
                        help="real: piper + faster-whisper; null: instant silence / fixed text (throughput tests)")
    parser.add_argument("--piper-model", type=Path, default=None, help="piper .onnx voice (default: joe)")
    parser.add_argument("--whisper-model", default=None, help="faster-whisper model name or path (default: tiny.en)")
    parser.add_argument("--workers", type=int, default=2, help="engine calls at once (default %(default)s)")
    parser.add_argument("--preload", action=argparse.BooleanOptionalAction, default=True,
                        help="load the models before accepting requests (default: on)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                        help="largest request body in MiB; larger ones get 413 (default %(default)g)")
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                        help="seconds a request body may take to arrive, else 408 (0: no limit; default %(default)g)")
    parser.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT_S,
                        help="seconds a request's headers may take to arrive, else 408 and the connection is closed "
                             "(0: no limit; default %(default)g)")
    parser.add_argument("--max-connections-per-client", type=int, default=DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
                        help="connections one client address may hold; one more gets 503 (0: no cap; default "
                             "%(default)d)")
    parser.add_argument("--null-audio-s", type=float, default=0.1,
                        help="null engine: seconds of silence in each TTS answer (default %(default)s; e.g. 400 "
                             "makes 19 MB WAV bodies, to measure large responses in flight)")
    faults = parser.add_argument_group("fault injection (all off by default; change live with PUT /admin/faults)")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="fixed extra latency per request")
    faults.add_argument("--jitter-ms", type=float, default=0.0, help="uniform random extra latency, up to this")
    faults.add_argument("--rate-limit-rps", type=float, default=None, help="requests/s before answering 429")
    faults.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 500/503")
    faults.add_argument("--reset-rate", type=float, default=0.0, help="fraction whose connection is reset")
    faults.add_argument("--truncate-rate", type=float, default=0.0, help="fraction of 200s with half a body")
    faults.add_argument("--slow-body-rate", type=float, default=0.0, help="fraction of 200s trickled slowly")
    faults.add_argument("--slow-body-seconds", type=float, default=2.0, help="how long a slow body takes")
    faults.add_argument("--fail-first-n", type=int, default=0, help="first N tries of each request answer 503")
    faults.add_argument("--garbage-audio-rate", type=float, default=0.0,
                        help="fraction of TTS 200s whose audio is clipped noise (valid WAV; for QC and publish gates)")
    faults.add_argument("--garble-text", default="", help="TTS texts holding this come back garbled mid-chunk")
    faults.add_argument("--garble-first-n", type=int, default=1, help="how many takes of such a text are garbled")
    faults.add_argument("--garble-mode", choices=("reverse", "voice"), default="reverse",
                        help="garble by playing the middle backwards, or by swapping the voice (an octave up)")
    faults.add_argument("--seed", type=int, default=None, help="seed of the fault RNG")
    faults.add_argument("--max-in-flight", type=int, default=None,
                        help="requests served at once; past it, answer 429 or queue (see --overload)")
    faults.add_argument("--overload", choices=OVERLOAD_MODES, default="429",
                        help="past --max-in-flight: 429 answers at once, queue holds the request (longer latency); "
                             "default %(default)s")
    faults.add_argument("--tts-ms-per-char", type=float, default=0.0,
                        help="latency profile: extra ms per character of TTS text (on top of --latency-ms)")
    faults.add_argument("--asr-ms-per-audio-s", type=float, default=0.0,
                        help="latency profile: extra ms per second of uploaded ASR audio (on top of --latency-ms)")
    parser.set_defaults(handler=run_serve)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig the ``serve`` flags describe (token: flag, env, or a fresh random one)."""
    token = args.token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(16)
    faults = FaultConfig(
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        rate_limit_rps=args.rate_limit_rps,
        error_rate=args.error_rate,
        reset_rate=args.reset_rate,
        truncate_rate=args.truncate_rate,
        slow_body_rate=args.slow_body_rate,
        slow_body_seconds=args.slow_body_seconds,
        fail_first_n=args.fail_first_n,
        garbage_audio_rate=args.garbage_audio_rate,
        garble_text=args.garble_text,
        garble_first_n=args.garble_first_n,
        garble_mode=args.garble_mode,
        seed=args.seed,
        max_in_flight=args.max_in_flight,
        overload=args.overload,
        tts_ms_per_char=args.tts_ms_per_char,
        asr_ms_per_audio_s=args.asr_ms_per_audio_s,
    )
    return ServerConfig(
        token=token,
        engine=args.engine,
        faults=faults,
        piper_model=args.piper_model,
        whisper_model=args.whisper_model,
        engine_workers=args.workers,
        preload=args.preload,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        body_timeout_s=args.body_timeout,
        header_timeout_s=args.header_timeout,
        max_connections_per_client=args.max_connections_per_client,
        null_audio_s=args.null_audio_s,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    """Run the server in the foreground until interrupted; the exit status."""
    import uvicorn

    from voxmill.server.running import uvicorn_config

    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(f"voxmill local server on http://{args.host}:{args.port} (engine: {config.engine}, token: {config.token})",
          flush=True)
    if not _is_loopback(args.host):
        print(f"warning: binding to {args.host}, not loopback: anyone who can reach this host can use the server "
              "with the token above", file=sys.stderr, flush=True)
    if config.preload and config.engine == "real":
        print("loading models…", flush=True)
    uvicorn.Server(uvicorn_config(config, args.host, args.port)).run()
    return 0


__all__ = ["add_serve_parser", "config_from_args", "run_serve"]
