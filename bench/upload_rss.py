"""Peak RSS of voxmill's own process with hundreds of large ASR uploads in flight at once.

Writes ``--uploads`` distinct WAV files of ``--mb`` MB each (24 kHz mono, under the 600 s ASR limit so none is
split), starts a null-engine local server in its own process, and runs ``voxmill transcribe`` on them twice in one go:
8 files with one upload in flight and no server latency (the baseline: what a transcription run costs whatever
its concurrency), then every file with the server holding each request ``--latency-ms`` (so they overlap) and
``--uploads`` in flight
(``--concurrency``). Files over 1 MiB stream from disk in 64 KiB pieces, so the second run should cost little
more than the first. The peak is the CLI process's own VmHWM (``bench/cli_rss.py``), not its Prefect API's or
the server's; the server's in-flight high-water mark (``/admin/stats``) shows how many uploads overlapped.

    .venv/bin/python bench/upload_rss.py [--uploads 256] [--mb 20] [--latency-ms 90000]
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
    args = parser.parse_args(argv)
    if args.mb * 1e6 / 2 / SAMPLE_RATE >= 600:
        raise SystemExit(f"--mb {args.mb} makes files over the 600 s ASR limit (they would be split)")

    python = sys.executable
    upload_mb = str(int(args.mb) + 5)
    with null_server("--max-upload-mb", upload_mb) as (port, token), \
            tempfile.TemporaryDirectory(prefix="voxmill-upload-rss-") as work_dir:
        work = Path(work_dir)
        files = write_uploads(work, args.uploads, args.mb)
        manifest = work / "m.csv"
        with open(manifest, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "audio"])
            writer.writerows((path.stem, str(path)) for path in files)
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        # a fixed in-flight limit (the --concurrency given), not the learned one: the row holds exactly that many
        env.update(VOXMILL_API_KEY=token, VOXMILL_BASE_URL=f"http://127.0.0.1:{port}", PYTHONPATH=str(ROOT),
                   VOXMILL_CACHE_DIR=str(work / "cache"), VOXMILL_ADAPTIVE_RATE="0")
        admin = {"Authorization": f"Bearer {token}"}
        rows = []
        for in_flight in (1, args.uploads):
            out = work / f"out-{in_flight}"
            httpx.post(f"http://127.0.0.1:{port}/admin/reset", headers=admin).raise_for_status()
            # the baseline answers at once (one at a time, held 90 s each, would take minutes); the big row holds
            # every request so that all of them overlap
            latency = args.latency_ms if in_flight > 1 else 0
            httpx.put(f"http://127.0.0.1:{port}/admin/faults", json={"latency_ms": latency},
                      headers=admin).raise_for_status()
            count = args.uploads if in_flight > 1 else min(args.uploads, 8)  # one at a time: 8 are enough
            subset = manifest if count == args.uploads else _first_rows(manifest, count, work)
            cmd = [python, "-m", "voxmill.cli", "transcribe", str(subset), "-o", str(out), "--no-progress",
                   "--concurrency", str(in_flight)]
            code, wall, peak, output = run_with_own_peak(cmd, env)
            if code != 0:
                print(output[-3000:], file=sys.stderr)
                raise SystemExit(f"voxmill transcribe with {in_flight} in flight exited {code}")
            stats = httpx.get(f"http://127.0.0.1:{port}/admin/stats", headers=admin).json()
            rows.append((in_flight, count, latency, wall, peak, stats["in_flight_high"], stats["generations_total"]))
            shutil.rmtree(out)
    load = os.getloadavg()[0]
    print(f"\nASR uploads of {args.mb:g} MB; voxmill's own peak RSS (VmHWM); load average {load:.1f}, "
          f"{os.cpu_count()} cores\n")
    print("| concurrency | files | server latency ms | wall s | server in flight (high) | transcribed | peak RSS MB "
          "| vs 1 in flight |")
    print("|---|---|---|---|---|---|---|---|")
    base = rows[0][4]
    for in_flight, count, latency, wall, peak, high, done in rows:
        print(f"| {in_flight} | {count} | {latency} | {wall:.1f} | {high} | {done} | {peak:.0f} | {peak / base:.2f}× |")


def _first_rows(manifest: Path, count: int, work: Path) -> Path:
    lines = manifest.read_text().splitlines()[: count + 1]
    subset = work / f"m-{count}.csv"
    subset.write_text("\n".join(lines) + "\n")
    return subset


if __name__ == "__main__":
    main()
