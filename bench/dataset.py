"""Incremental dataset build benchmark (not a test): a full build of N rows, then a build after 1% of the
rows changed, then a build with nothing changed, then one with a new output format (FLAC 16 kHz) re-derived
from the kept masters, against ``voxmill serve --engine null`` in its own process.

    .venv/bin/python bench/dataset.py                    # 100,000 rows, 1% edited, 2,000 re-derived
    .venv/bin/python bench/dataset.py --rows 5000        # a smoke run

The baseline is the full build (v1) measured in the same run: the incremental build should cost about
``changed/rows`` of its calls, and carrying the other 99% over (read the previous version's Parquet,
re-judge, write and verify the new version) should take seconds, not minutes. The output change runs on a
second dataset of the first ``--rederive-rows`` rows (one ffmpeg transcode and decode per row): its
baseline is that dataset's own full build, in the same run.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from throughput import ServerProcess  # noqa: E402  (the same server process as the throughput bench)

from voxmill.audio.transcode import OutputSpec  # noqa: E402
from voxmill.dataset import DatasetSpec, QcThresholds, build_dataset  # noqa: E402
from voxmill.settings import ApiKey, RateLimit, Settings  # noqa: E402

#: the null engine's clips are 0.1 s of silence: measure everything, filter nothing
NO_FILTERS = QcThresholds(min_duration_s=None, max_clipped_fraction=None, iqr_k=None)


def write_source(path: Path, rows: int, edited: int = 0) -> None:
    """``rows`` texts, ``edited`` of them (every rows/edited-th) with new words."""
    step = rows // edited if edited else 0
    texts = [f"Sentence number {i} of the dataset benchmark, read in a calm voice." for i in range(rows)]
    if step:
        for i in range(0, rows, step):
            texts[i] = f"Edited sentence {i} of the dataset benchmark, read in a brighter voice."
    pq.write_table(pa.table({"id": [f"row{i:07d}" for i in range(rows)], "text": texts}), path)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of rows edited for v2")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rederive-rows", type=int, default=2000,
                        help="rows of the second dataset whose output format changes (0: skip)")
    args = parser.parse_args()
    edited = max(1, round(args.rows * args.changed))
    server = ServerProcess(rps=1_000_000, latency_ms=0)
    folder = Path(tempfile.mkdtemp(prefix="voxmill-bench-dataset-"))
    try:
        source = folder / "source.parquet"
        spec = DatasetSpec(name="bench", kind="tts", source=str(source), dest=str(folder / "dest"),
                           model="higgs2p5", qc=NO_FILTERS, shard_rows=10_000)
        settings = Settings(api_key=ApiKey(server.token), base_url=server.base_url,
                            rate_limit=RateLimit(max_concurrent=args.concurrency), cache_dir=folder / "cache")
        results = []
        builds = (("v1: full build", 0), (f"v2: {edited} rows edited", edited), ("v3: nothing changed", None))
        def run(label: str, build_spec: DatasetSpec) -> None:
            server.reset()
            started = time.monotonic()
            report = build_dataset(build_spec, settings)
            wall = time.monotonic() - started
            calls = server.stats()["generations_total"]
            results.append((label, report, wall, calls))
            print(f"{label}: {report.headline()} phases={report.phases}", file=sys.stderr)

        for label, edits in builds:
            if edits is not None:
                write_source(source, args.rows, edits)
            run(label, spec)
        derived = []
        if args.rederive_rows:
            small = folder / "small.parquet"
            write_source(small, args.rederive_rows)
            small_spec = DatasetSpec(name="bench-rederive", kind="tts", source=str(small),
                                     dest=str(folder / "dest-small"), model="higgs2p5", qc=NO_FILTERS,
                                     shard_rows=10_000)
            run(f"w1: {args.rederive_rows} rows, full build (wav)", small_spec)
            run("w2: output → FLAC 16 kHz, re-derived from masters",
                replace(small_spec, output=OutputSpec(format="flac", sample_rate=16000)))
            derived, results = results[-2:], results[:-2]
        print(f"\n{args.rows} rows, null engine, concurrency {args.concurrency}; peak RSS {peak_rss_mb():.0f} MB\n")
        print("| build | calls | carried | re-derived | wall s | vs full build | plan s | make s | judge+publish s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for group in (results, derived):
            base_wall = group[0][2] if group else 1.0
            for label, report, wall, calls in group:
                phases = report.phases or {}
                print(f"| {label} | {calls} | {report.carried} | {report.rederived} | {wall:.1f} | "
                      f"{wall / base_wall:.3f}× | {phases.get('plan', 0):.1f} | {phases.get('make', 0):.1f} | "
                      f"{phases.get('publish', 0):.1f} |")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
