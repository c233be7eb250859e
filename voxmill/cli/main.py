"""The ``voxmill`` command tree: synthesize, transcribe, status, retry-failed, estimate, demo, models here; serve,
audiobook, dataset and deploy in their own modules of this package.

Exit codes: 0 every item done; 1 some items failed (see ``voxmill status OUT``); 2 a usage, manifest or
configuration problem (nothing was sent); 3 the API refused the key (the run stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from voxmill.catalog import ASR_MODELS, MODELS, TTS_MODELS, TTS_SAMPLE_RATE
from voxmill.cli.common import (
    EXIT_FAILED_ITEMS,
    EXIT_OK,
    EXIT_USAGE,
    add_param_option,
    add_run_options,
    exit_code_for_error,
    exit_code_for_run,
    parse_params,
    price_table,
    progress_bar,
    run_options,
)
from voxmill.cli.deploy import PROJECT_ROOT
from voxmill.errors import VoxmillError
from voxmill.estimate import estimate_manifest
from voxmill.jobs import JobFailed
from voxmill.progress import ProgressBoard, watching
from voxmill.report import describe_out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``voxmill`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args) or 0)
    except VoxmillError as exc:
        print(f"voxmill: {exc.message}", file=sys.stderr)
        return exit_code_for_error(exc)
    except KeyboardInterrupt:
        print("voxmill: interrupted; rerun the same command to pick up where it stopped", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (model names and parameters come from the catalogue)."""
    parser = argparse.ArgumentParser(prog="voxmill", description="Batch speech pipelines on Prefect.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tts = sub.add_parser("synthesize", help="text manifest → audio files + results.parquet")
    tts.add_argument("manifest", help="CSV, Parquet or JSONL with a 'text' column (path or fsspec URL)")
    tts.add_argument("-o", "--out", required=True, type=Path, help="output directory (rerun it to resume)")
    tts.add_argument("--model", choices=TTS_MODELS, help="default model for rows without one (higgs2p5)")
    tts.add_argument("--voice", help="default voice for rows without one")
    tts.add_argument("--format", default="wav", dest="output_format",
                     help="output audio: wav, mp3, opus, flac, m4a (default wav)")
    tts.add_argument("--sample-rate", type=int, help=f"output sample rate (default: as generated, {TTS_SAMPLE_RATE})")
    tts.add_argument("--channels", type=int, choices=(1, 2), help="output channels (default 1)")
    tts.add_argument("--bitrate", help="lossy bitrate, e.g. 128k")
    tts.add_argument("--loudness", type=float, dest="loudness_lufs",
                     help="normalise to this integrated loudness (LUFS, e.g. -16), true peak ≤ -1.5 dBTP")
    tts.add_argument("--text-limit", type=int, dest="text_hard_limit",
                     help="fail texts longer than this many characters (default: the model's limit)")
    add_param_option(tts)
    _add_job_options(tts)
    tts.set_defaults(handler=_cmd_synthesize)

    asr = sub.add_parser("transcribe", help="audio manifest → transcripts (.txt/.srt/.vtt/.json) + results.parquet")
    asr.add_argument("manifest", help="CSV, Parquet or JSONL with an 'audio' column, or a folder or quoted glob "
                                      "of audio files ('corpus/**/*.flac': ids are the relative paths)")
    asr.add_argument("-o", "--out", required=True, type=Path, help="output directory (rerun it to resume)")
    asr.add_argument("--model", choices=ASR_MODELS, help=f"ASR model (default {ASR_MODELS[0]})")
    asr.add_argument("--language", help="language code for rows without one (default en)")
    asr.add_argument("--max-seconds", type=float,
                     help="split longer files at silences (default VOXMILL_ASR_MAX_SECONDS or 600)")
    add_param_option(asr)
    _add_job_options(asr)
    asr.set_defaults(handler=_cmd_transcribe)

    status = sub.add_parser("status", help="counts, failures by kind and audio hours of an output directory")
    status.add_argument("out", type=Path)
    status.add_argument("--failures", type=int, default=10, help="show this many failed rows (default 10)")
    status.set_defaults(handler=_cmd_status)

    retry = sub.add_parser("retry-failed", help="rerun only the failed items of an output directory")
    retry.add_argument("out", type=Path)
    _add_job_options(retry)
    retry.set_defaults(handler=_cmd_retry_failed)

    est = sub.add_parser("estimate", help="items, characters or audio minutes, expected duration and cost")
    est.add_argument("manifest")
    est.add_argument("--kind", choices=("tts", "asr"), help="default: from the columns (text → tts, audio → asr)")
    est.add_argument("--model", help="model for rows without one")
    est.add_argument("--prices", type=Path,
                     help="JSON price table, e.g. {\"higgs2p5\": {\"per_1k_chars\": 0.015}, "
                          "\"whisper_v3_turbo\": {\"per_minute\": 0.006}} (default: VOXMILL_PRICES)")
    est.set_defaults(handler=_cmd_estimate)

    demo = sub.add_parser("demo", help="the main job offline: synthesise manifests/demo_tts.csv, transcribe it back")
    demo.add_argument("--manifest", default=str(PROJECT_ROOT / "manifests" / "demo_tts.csv"))
    demo.add_argument("-o", "--out", type=Path, default=Path("demo-out"))
    demo.add_argument("--format", default="mp3", dest="output_format")
    demo.add_argument("--local-engine", choices=("real", "null"), default="real")
    demo.add_argument("--verbose", action="store_true")
    demo.set_defaults(handler=_cmd_demo, local=True, base_url=None)

    models = sub.add_parser("models", help="the model catalogue: every model and parameter")
    models.set_defaults(handler=_cmd_models)

    from voxmill.cli.serve import add_serve_parser

    add_serve_parser(sub)
    from voxmill.cli.audiobook import add_audiobook_parser

    add_audiobook_parser(sub)

    from voxmill.cli.dataset import add_dataset_parser

    add_dataset_parser(sub)

    from voxmill.cli.deploy import add_deploy_parser

    add_deploy_parser(sub)
    return parser


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    group = add_run_options(parser)
    group.add_argument("--batch-size", type=int, help="items per Prefect task (default: automatic, ≤ 200)")
    group.add_argument("--no-retry-failed", action="store_true", help="skip items that failed in earlier runs")
    group.add_argument("--shards", type=int, default=1,
                       help="split the job into N child runs on the Prefect work pool (needs `make deploy` and an "
                            "absolute --out on storage every worker sees)")


# --- running flows -----------------------------------------------------------------------------------


def _prepare_prefect(verbose: bool) -> None:
    """Settings Prefect must see before it is imported: a patient ephemeral start, quiet logs, no telemetry."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_LEVEL", "WARNING")
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_drop_voxmill_tracebacks)
    if not os.environ.get("PREFECT_API_URL"):
        print("voxmill: starting Prefect's local API for this run (the first start takes ~20 s)…", file=sys.stderr)


def _drop_voxmill_tracebacks(record: logging.LogRecord) -> bool:
    """Prefect logs a flow stopped by a voxmill error with its traceback; ``main`` prints the message alone."""
    return not (record.exc_info and isinstance(record.exc_info[1], VoxmillError))


@contextlib.contextmanager
def _prefect_api() -> Iterator[None]:
    """The Prefect API configured (PREFECT_API_URL, a profile); else one owned by this run, which dies with it
    (even on kill -9)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    from voxmill.cli.prefect_server import owned_prefect_server

    with owned_prefect_server(timeout=PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()) as api_url:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            try:
                yield
            finally:  # deliver what is queued while the server is still up
                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all(timeout=10)


def _run_flow(args: argparse.Namespace, flow_fn, kwargs: dict[str, Any]) -> int:
    """Run a job flow in this process, its progress on a live bar; the exit code from its summary."""
    kwargs.update(
        batch_size=args.batch_size,
        retry_failed=not args.no_retry_failed,
        shards=args.shards,
        options=run_options(args),
    )
    with progress_bar(ProgressBoard(), enabled=not args.no_progress) as board, watching(board), _prefect_api():
        summary = flow_fn(**kwargs, return_state=True).result(raise_on_failure=False)
    if isinstance(summary, JobFailed):
        summary = summary.summary
    elif isinstance(summary, BaseException):
        raise summary
    print(summary.headline())
    print(f"results: {Path(summary.out_dir) / 'results.parquet'}")
    code = exit_code_for_run(summary.ok, summary.stop_kind)
    if code == EXIT_FAILED_ITEMS:
        print(f"failures: {Path(summary.out_dir) / 'failures.parquet'} — `voxmill status {summary.out_dir}`; "
              f"`voxmill retry-failed {summary.out_dir}` reruns them", file=sys.stderr)
    return code


def _cmd_synthesize(args: argparse.Namespace) -> int:
    _prepare_prefect(args.verbose)
    from flows.synthesize import synthesize

    params = parse_params(args.param)
    if args.voice:
        params["voice"] = args.voice
    return _run_flow(args, synthesize, dict(
        manifest=args.manifest, out_dir=str(args.out), model=args.model, params=params,
        output_format=args.output_format, sample_rate=args.sample_rate, channels=args.channels,
        bitrate=args.bitrate, loudness_lufs=args.loudness_lufs, text_hard_limit=args.text_hard_limit,
    ))


def _cmd_transcribe(args: argparse.Namespace) -> int:
    _prepare_prefect(args.verbose)
    from flows.transcribe import transcribe

    return _run_flow(args, transcribe, dict(
        manifest=args.manifest, out_dir=str(args.out), model=args.model, language=args.language,
        params=parse_params(args.param), max_seconds=args.max_seconds,
    ))


def _cmd_retry_failed(args: argparse.Namespace) -> int:
    _prepare_prefect(args.verbose)
    from voxmill.jobs import load_job_record

    request = load_job_record(args.out)
    common = dict(manifest=request.manifest, out_dir=str(args.out), model=request.defaults.model,
                  params=dict(request.defaults.params), only_failed=True)
    args.no_retry_failed = False
    if request.kind == "tts":
        from flows.synthesize import synthesize

        out = request.output
        return _run_flow(args, synthesize, dict(
            common, output_format=out.format, sample_rate=out.sample_rate, channels=out.channels,
            bitrate=out.bitrate, loudness_lufs=out.loudness_lufs, text_hard_limit=request.defaults.text_hard_limit,
        ))
    from flows.transcribe import transcribe

    return _run_flow(args, transcribe, dict(common, max_seconds=request.asr_max_seconds))


def _cmd_status(args: argparse.Namespace) -> int:
    report = describe_out_dir(args.out, failures=args.failures)
    print(report.text)
    return EXIT_OK if report.failed == 0 else EXIT_FAILED_ITEMS


def _cmd_estimate(args: argparse.Namespace) -> int:
    print(estimate_manifest(args.manifest, kind=args.kind, model=args.model, prices=price_table(args.prices)).text())
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    _prepare_prefect(args.verbose)
    from flows.roundtrip import RoundTripFailed, roundtrip

    with _prefect_api():
        state = roundtrip(manifest=args.manifest, out_dir=str(args.out), output_format=args.output_format,
                          options=run_options(args), return_state=True)
        result = state.result(raise_on_failure=False)
    if isinstance(result, RoundTripFailed):
        result = result.summary
    elif isinstance(result, BaseException):
        raise result
    tts, asr, wer = result.tts, result.asr, result.wer
    print(f"speech ({args.output_format}): {args.out / 'tts' / 'audio'}")
    print(f"  {tts.headline()}")
    print(f"  table: {args.out / 'tts' / 'results.parquet'}")
    print(f"transcripts (.txt .srt .vtt .json): {args.out / 'asr' / 'transcripts'}")
    print(f"  {asr.headline()}")
    print(f"  table: {args.out / 'asr' / 'results.parquet'}")
    print(f"round-trip WER over {wer.items} items: mean {wer.mean_wer:.3f}; worst "
          + ", ".join(f"{i} {w:.3f}" for i, w in wer.worst))
    return EXIT_OK if tts.ok and asr.ok else EXIT_FAILED_ITEMS


def _cmd_models(args: argparse.Namespace) -> int:
    for spec in MODELS.values():
        print(f"{spec.name} ({spec.kind}) — {spec.description}")
        for param in spec.params:
            print(f"  {param.name:<22} {param.summary()}")
            print(f"  {'':<22} {param.description}")
        print()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
