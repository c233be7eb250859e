"""Throughput at real latencies (not a test): voxmill with no flags against a hand-tuned asyncio + httpx script.

    .venv/bin/python bench/latency.py                    # every row (~17 min on 2 cores)
    .venv/bin/python bench/latency.py --items-scale 0.5  # shorter runs (state it when you quote the figures)

The hosted models take seconds per request, so a run's pace is set by how many requests it keeps in flight
(Little's law: in flight = rate × latency). Each row starts ``voxmill serve --engine null`` in its own process
with a latency profile and a rate limit, then runs in fresh interpreters (``--phase``):

- baseline: bench/http_baseline.py's script (asyncio + one httpx.AsyncClient + a token bucket at the limit, the
  one bench/throughput.py measures against too) with its concurrency tuned by hand to the optimum,
  ``ceil(rate × mean latency × 1.1)``, but at most ``BASELINE_MOST`` (250): the server refuses a client's
  connections past 256, and a script holding more waits out a 503 a second at a time (length at 200 req/s,
  12,000 items: 82.8 items/s at 454 in flight, 99.4 at 250);
- voxmill: ``voxmill.jobs.run_job`` with **no rate and no concurrency given** and nothing learned yet (a fresh
  rate budget): it has to learn both the rate and the in-flight limit.

Items: 2,000 per row at 20 req/s (100 s at the limit), 12,000 at 200 req/s (60 s at the limit: at 4,000, 20 s,
half the row was voxmill's cold start, the in-flight limit doubling each 2-s round trip from 8 to ~250, which a
script told the answer never pays).

Profiles: ``2s`` is 2 s + up to 0.5 s of jitter per request; ``length`` is a TTS latency that grows with the
text (300 ms + 8 ms per character, texts of 40–400 characters: 0.6–3.5 s). Limits: 20 and 200 req/s. Every
figure is the server's own count (generations, 429s, in-flight high-water mark) or the phase's wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput as tp  # noqa: E402  (the server process and measuring helpers)
from http_baseline import run_baseline  # noqa: E402  (the script measured against, shared with throughput.py)

#: (name, server flags, mean latency in seconds) of each profile
PROFILES = {
    "2s": (["--latency-ms", "2000", "--jitter-ms", "500"], 2.25),
    "length": (["--latency-ms", "300", "--tts-ms-per-char", "8"], 0.3 + 0.008 * 220),
}
#: items per row at each limit. At 20 req/s, 2,000 (100 s of work at the limit: a job of the size the issue
#: names, an audiobook of ~1,500 chunks), so that the few seconds voxmill spends finding both limits from
#: nothing (~3 round trips of slow start) weigh as they would in a real job, not as a third of a 25 s one.
#: At 200 req/s, 12,000 (60 s at the limit; on 2 cores the row is bound by the CPU, ~100–120 items/s, for the script
#: and voxmill alike): at 4,000 the ~11 s voxmill takes to grow from 8 to ~250 in flight was half the row
ITEMS = {20.0: 2000, 200.0: 12000}
#: the baseline's most requests in flight: just under the local server's 256 connections per client
BASELINE_MOST = 250


def text_for(profile: str, index: int) -> str:
    """The row's text: bench/throughput.py's for ``2s``; 40–400 characters, varying, for ``length``."""
    base = tp.text_of(index)
    if profile != "length":
        return base
    size = 40 + (index * 7919) % 361
    return ((base + " ") * (size // (len(base) + 1) + 1))[:size].strip()


class ProfileServer(tp.ServerProcess):
    """The null-engine server with a latency profile and a rate limit."""

    def __init__(self, rps: float, flags: list[str]) -> None:  # noqa: D107
        import secrets

        self.token = secrets.token_urlsafe(12)
        self.port = tp.free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "voxmill.cli", "serve", "--engine", "null", "--no-preload",
               "--rate-limit-rps", str(rps), *flags, "--port", str(self.port), f"--token={self.token}"]
        self.process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
        self._wait_healthy()


# --- phases (each in a fresh interpreter) ----------------------------------------------------------------


def phase_baseline(args: argparse.Namespace) -> dict[str, Any]:
    import httpx  # noqa: F401  (imported before measuring, like voxmill's imports)

    with tp.Measured() as m:
        counts = asyncio.run(run_baseline(
            args.base_url, args.token, functools.partial(text_for, args.profile), args.items, Path(args.out_dir),
            rps=args.rps, concurrency=args.concurrency))
    return {"wall_s": m.wall, "cpu_s": m.cpu, "done": counts["ok"], "failed": counts["other"],
            "resets": counts["resets"], "peak_rss_mb": tp.peak_rss_mb()}


def phase_voxmill(args: argparse.Namespace) -> dict[str, Any]:
    import csv

    from voxmill.jobs import JobRequest, run_job
    from voxmill.settings import ApiKey, Settings

    manifest = Path(args.out_dir).with_suffix(".csv")
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows((f"item-{i}", text_for(args.profile, i)) for i in range(args.items))
    # no rate, no concurrency: only what a user must give (the key and where the API is)
    settings = Settings(api_key=ApiKey(args.token), base_url=args.base_url,
                        cache_dir=Path(args.out_dir).with_name(Path(args.out_dir).name + "-cache"))
    with tp.Measured() as m:
        summary = run_job(JobRequest("tts", str(manifest), Path(args.out_dir)), settings)
    return {"wall_s": m.wall, "cpu_s": m.cpu, "done": summary.done, "failed": summary.failed,
            "peak_rss_mb": tp.peak_rss_mb(), "api_rate": summary.api_rate,
            "in_flight_limit": summary.in_flight_limit, "in_flight_high": summary.in_flight_high}


PHASES = {"baseline": phase_baseline, "voxmill": phase_voxmill}


# --- orchestration ----------------------------------------------------------------------------------------


def run_phase(name: str, **options: Any) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name]
    cmd += [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"phase {name} failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_row(profile: str, rps: float, items: int, work: Path) -> dict[str, Any]:
    flags, mean_latency = PROFILES[profile]
    concurrency = min(math.ceil(rps * mean_latency * 1.1), BASELINE_MOST)
    row: dict[str, Any] = {"profile": profile, "rps": rps, "items": items, "concurrency": concurrency}
    server = ProfileServer(rps, flags)
    try:
        for name in ("baseline", "voxmill"):
            print(f"  … {profile} at {rps:g} req/s: {name}", file=sys.stderr, flush=True)
            server.reset()
            result = run_phase(name, profile=profile, rps=rps, items=items, concurrency=concurrency,
                               base_url=server.base_url, token=server.token,
                               out_dir=work / f"{profile}-{rps:g}-{name}")
            result["server"] = server.stats()
            row[name] = result
    finally:
        server.stop()
    return row


def print_report(rows: list[dict[str, Any]], load_at: dict[str, str], scale: float) -> None:
    table, checks = [], []
    for row in rows:
        base = row["baseline"]
        base_rate = base["done"] / base["wall_s"]
        for name, label in (("baseline", f"baseline, {row['concurrency']} in flight (hand-tuned)"),
                            ("voxmill", "voxmill run_job, no flags")):
            r = row[name]
            rate = r["done"] / r["wall_s"]
            server = r["server"]
            learned = (f"{r['in_flight_limit']} / {r['api_rate']:g}/s" if name == "voxmill" and r.get("api_rate")
                       else "-")
            table.append([row["profile"], f"{row['rps']:g}", label, f"{r['done']}", f"{r['wall_s']:.1f}",
                          f"{rate:.1f}", f"{100 * rate / row['rps']:.1f}%", f"{rate / base_rate:.3f}×",
                          f"{server['generations_total']}", f"{server['by_status'].get('429', 0)}",
                          f"{server['in_flight_high']}", learned, f"{r['peak_rss_mb']:.0f}"])
        vox = row["voxmill"]
        ratio = (vox["done"] / vox["wall_s"]) / base_rate
        checks.append((f"{row['profile']} at {row['rps']:g} req/s: no flags ≥ 0.9× baseline", ratio >= 0.9,
                       f"{ratio:.3f}×"))
        checks.append((f"{row['profile']} at {row['rps']:g} req/s: every item once, none failed",
                       vox["server"]["generations_total"] == row["items"] and not vox["failed"],
                       f"{vox['server']['generations_total']} of {row['items']}, {vox['failed']} failed"))
    scaled = "" if scale == 1 else f" (items × {scale:g})"
    print(f"## Throughput at real latencies: no flags vs a hand-tuned script{scaled}")
    print(tp.markdown_table(
        ["profile", "limit req/s", "run", "items", "wall s", "items/s", "of limit", "vs baseline",
         "server generations", "429s", "server in flight ≤", "learned in flight / rate", "peak RSS MB"], table))
    print()
    print("## Targets")
    print(tp.markdown_table(["target", "met", "measured"], [[t, "yes" if ok else "NO", v] for t, ok, v in checks]))
    print()
    print(f"machine: {os.cpu_count()} cores; {'; '.join(f'{k}: {v}' for k, v in load_at.items())}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="2s,length", help="comma-separated: 2s, length")
    parser.add_argument("--limits", default="20,200", help="comma-separated rate limits (req/s)")
    parser.add_argument("--items-scale", type=float, default=1.0, help="multiply every row's items by this")
    parser.add_argument("--work-dir", default=None, help="where outputs go (default: a temp dir)")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    for name in ("profile", "base-url", "token", "out-dir"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    for name, kind in (("rps", float), ("items", int), ("concurrency", int)):
        parser.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="voxmill-latency-"))
    load_at = {"start": tp.load()}
    started = time.monotonic()
    rows = []
    for profile in args.profiles.split(","):
        for rps in (float(x) for x in args.limits.split(",")):
            items = max(50, int(ITEMS.get(rps, int(rps * 25)) * args.items_scale))
            rows.append(measure_row(profile, rps, items, work))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # kept even if a later row fails
    load_at["end"] = tp.load()
    print(f"(the whole run took {time.monotonic() - started:.0f} s)", file=sys.stderr)
    print_report(rows, load_at, args.items_scale)


if __name__ == "__main__":
    main()
