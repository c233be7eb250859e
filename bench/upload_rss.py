"""Peak RSS of voxmill's own process with hundreds of large ASR uploads, or large TTS answers, in flight at once.

Writes ``--uploads`` distinct WAV files of ``--mb`` MB each (24 kHz mono, under the 600 s ASR limit so none is
split), starts a null-engine local server in its own process, and runs ``voxmill transcribe`` on them twice in one go:
8 files with one upload in flight and no server latency (the baseline: what a transcription run costs whatever
its concurrency), then every file with the server holding each request ``--latency-ms`` (so they overlap) and
``--uploads`` in flight
(``--concurrency``). Files over 1 MiB stream from disk in 64 KiB pieces, so the second run should cost little
more than the first. The peak is the CLI process's own VmHWM (``bench/cli_rss.py``), not its Prefect API's or
the server's; the server's in-flight high-water mark (``/admin/stats``) shows how many uploads overlapped.

The TTS rows do the same the other way round: the null engine answers every request with ``--tts-seconds`` of
audio (``voxmill serve --null-audio-s``: 90 s is a 4.3 MB WAV), and ``voxmill synthesize`` runs 8 rows one at a
time (the baseline), then ``--tts-requests`` rows all in flight, the server holding each ``--tts-latency-ms``.
Each body streams into a temp file beside its output, so the second run should cost little more than the first.

    .venv/bin/python bench/upload_rss.py [--uploads 256] [--mb 20] [--latency-ms 90000] [--kinds asr,tts]
                                         [--tts-requests 256] [--tts-seconds 90] [--tts-latency-ms 30000]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.cli_rss import null_server, run_with_own_peak  # noqa: E402
from voxmill.audio.formats import wav_bytes  # noqa: E402

SAMPLE_RATE = 24_000
#: kind, MB per item, in flight, items, server latency ms, wall s, peak RSS MB, server in-flight high, generations
Row = tuple[str, float, int, int, int, float, float, int, int]


def write_uploads(folder: Path, count: int, megabytes: float) -> list[Path]:
    """``count`` distinct WAV files of ``megabytes`` MB: one tone, each file's first samples made unique."""
    samples = int(megabytes * 1e6 / 2)
    tone = (3000 * np.sin(2 * np.pi * 220 * np.arange(samples) / SAMPLE_RATE)).astype(np.int16)
    paths = []
    for n in range(count):
        tone[:4] = (n, n >> 8, 7, 7)
        path = folder / f"upload-{n:04d}.wav"
        path.write_bytes(wav_bytes(tone, SAMPLE_RATE))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=256, help="files, and uploads in flight (default 256)")
    parser.add_argument("--mb", type=float, default=20.0, help="size of each file in MB (default 20)")
    parser.add_argument("--latency-ms", type=int, default=90_000,
                        help="how long the server holds each request (default 90 s: longer than preparing "
                             "every file, so all overlap)")
    parser.add_argument("--tts-requests", type=int, default=256,
                        help="TTS rows, and requests in flight (default 256)")
    parser.add_argument("--tts-seconds", type=float, default=90.0,
                        help="seconds of audio in each TTS answer (default 90: a 4.3 MB WAV)")
    parser.add_argument("--tts-latency-ms", type=int, default=30_000,
                        help="how long the server holds each TTS request in the big row (default 30 s, so all overlap)")
    parser.add_argument("--kinds", default="asr,tts", help="which rows: asr, tts or both (default asr,tts)")
    args = parser.parse_args(argv)
    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    if not kinds or set(kinds) - {"asr", "tts"}:
        raise SystemExit(f"--kinds takes asr, tts or both, not {args.kinds!r}")
    if args.mb * 1e6 / 2 / SAMPLE_RATE >= 600:
        raise SystemExit(f"--mb {args.mb} makes files over the 600 s ASR limit (they would be split)")

    upload_mb = str(int(args.mb) + 5)
    rows: list[Row] = []
    with null_server("--max-upload-mb", upload_mb, "--null-audio-s", str(args.tts_seconds)) as (port, token), \
            tempfile.TemporaryDirectory(prefix="voxmill-upload-rss-") as work_dir:
        work = Path(work_dir)
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        # a fixed in-flight limit (the --concurrency given), not the learned one: the row holds exactly that many
        env.update(VOXMILL_API_KEY=token, VOXMILL_BASE_URL=f"http://127.0.0.1:{port}", PYTHONPATH=str(ROOT),
                   VOXMILL_CACHE_DIR=str(work / "cache"), VOXMILL_ADAPTIVE_RATE="0")
        admin = {"Authorization": f"Bearer {token}"}
        if "asr" in kinds:
            rows += _asr_rows(args, port, admin, env, work)
        if "tts" in kinds:
            rows += _tts_rows(args, port, admin, env, work)
    load = os.getloadavg()[0]
    print(f"\nvoxmill's own peak RSS (VmHWM) with large items in flight; load average {load:.1f}, "
          f"{os.cpu_count()} cores\n")
    print("| kind | concurrency | items | MB each | server latency ms | wall s | server in flight (high) | done "
          "| peak RSS MB | vs 1 in flight |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base: dict[str, float] = {}
    for kind, megabytes, in_flight, count, latency, wall, peak, high, done in rows:
        base.setdefault(kind, peak)  # each kind's first row is its one-at-a-time baseline
        print(f"| {kind} | {in_flight} | {count} | {megabytes:.1f} | {latency} | {wall:.1f} | {high} | {done} "
              f"| {peak:.0f} | {peak / base[kind]:.2f}× |")


def _asr_rows(args: argparse.Namespace, port: int, admin: dict[str, str], env: dict[str, str],
              work: Path) -> list[Row]:
    """The ASR rows: uploads of ``--mb`` MB, one at a time, then ``--uploads`` at once."""
    files = write_uploads(work, args.uploads, args.mb)
    manifest = work / "m.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "audio"])
        writer.writerows((path.stem, str(path)) for path in files)
    rows = []
    for in_flight in (1, args.uploads):
        # the baseline answers at once (one at a time, held 90 s each, would take minutes); the big row holds
        # every request so that all of them overlap
        latency = args.latency_ms if in_flight > 1 else 0
        _reset_server(port, admin, latency)
        count = args.uploads if in_flight > 1 else min(args.uploads, 8)  # one at a time: 8 are enough
        subset = manifest if count == args.uploads else _first_rows(manifest, count, work)
        rows.append(("asr", args.mb, in_flight, count, latency,
                     *_measure_cli("transcribe", subset, work / f"out-{in_flight}", in_flight, port, admin, env)))
    return rows


def _reset_server(port: int, admin: dict[str, str], latency_ms: int) -> None:
    """Zero the server's counters and set how long it holds each request."""
    httpx.post(f"http://127.0.0.1:{port}/admin/reset", headers=admin).raise_for_status()
    httpx.put(f"http://127.0.0.1:{port}/admin/faults", json={"latency_ms": latency_ms},
              headers=admin).raise_for_status()


def _tts_rows(args: argparse.Namespace, port: int, admin: dict[str, str], env: dict[str, str],
              work: Path) -> list[Row]:
    """The TTS rows: answers of ``--tts-seconds`` of audio, one at a time, then ``--tts-requests`` at once."""
    body_mb = (44 + round(args.tts_seconds * SAMPLE_RATE) * 2) / 1e6
    rows = []
    for in_flight in (1, args.tts_requests):
        count = args.tts_requests if in_flight > 1 else min(args.tts_requests, 8)
        manifest = work / f"tts-{in_flight}.csv"
        with open(manifest, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "text"])
            writer.writerows((f"line-{n:04d}", f"Long answer number {n}, {in_flight} in flight.") for n in range(count))
        latency = args.tts_latency_ms if in_flight > 1 else 0
        _reset_server(port, admin, latency)
        out = work / f"tts-out-{in_flight}"
        rows.append(("tts", body_mb, in_flight, count, latency,
                     *_measure_cli("synthesize", manifest, out, in_flight, port, admin, env)))
    return rows


def _measure_cli(command: str, manifest: Path, out: Path, in_flight: int, port: int, admin: dict[str, str],
                 env: dict[str, str]) -> tuple[float, float, int, int]:
    """Run ``voxmill <command>`` on ``manifest`` with ``in_flight`` requests at once: (wall s, its own peak RSS
    MB, the server's in-flight high-water mark, generations), its outputs removed after."""
    cmd = [sys.executable, "-m", "voxmill.cli", command, str(manifest), "-o", str(out), "--no-progress",
           "--concurrency", str(in_flight)]
    code, wall, peak, output = run_with_own_peak(cmd, env)
    if code != 0:
        print(output[-3000:], file=sys.stderr)
        raise SystemExit(f"voxmill {command} with {in_flight} in flight exited {code}")
    stats = httpx.get(f"http://127.0.0.1:{port}/admin/stats", headers=admin).json()
    shutil.rmtree(out)
    return wall, peak, stats["in_flight_high"], stats["generations_total"]


def _first_rows(manifest: Path, count: int, work: Path) -> Path:
    lines = manifest.read_text().splitlines()[: count + 1]
    subset = work / f"m-{count}.csv"
    subset.write_text("\n".join(lines) + "\n")
    return subset


if __name__ == "__main__":
    main()
