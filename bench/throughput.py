"""Throughput benchmark (not a test): voxmill against a plain asyncio + httpx + limiter script.

    .venv/bin/python bench/throughput.py                 # the full run (~4 min on 2 cores)
    .venv/bin/python bench/throughput.py --quick         # a smoke run with small numbers (~30 s)
    .venv/bin/python bench/throughput.py --prefect       # also through the Prefect flow (+ ephemeral server)

The local server runs in its own process (null engine, rate limit and latency injected), so its CPU does
not count against the client. Every measured phase runs in a fresh subprocess of this script
(``--phase ...``) and reports one JSON line: wall time, CPU (self + children, e.g. ffmpeg) and peak RSS.

Phases
- baseline: asyncio + one httpx.AsyncClient + a token bucket at the same rate and concurrency, posting the
  same multipart TTS requests and writing each body to a file (bench/http_baseline.py, shared with latency.py).
- voxmill: ``voxmill.jobs.run_job`` on an N-row CSV manifest (manifest checks, plan, batches, ledger,
  output files, compaction: everything a user's run does), ``--rps`` given (a ceiling: it starts there).
- adaptive: the same with no rate given and nothing learned yet (a fresh cache directory): voxmill has to
  find the server's limit on its own (slow start, then holding just under the limit).
- cli: the same job through ``voxmill synthesize`` in a subprocess (Prefect's ephemeral API start included
  in "whole", excluded in "job only", read from the CLI's summary line).
- prefect (optional): the same job through ``flows.synthesize.synthesize``.
- rss: manifest reading + validation + keying + resume-skipping over generated Parquet manifests of
  several sizes, half of each already done in its ledger; peak RSS per size.
- rerun: ``run_job`` on a finished job (every row done in results.parquet); must send nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/throughput.py` from anywhere: flows/ and tasks/ importable
    sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_baseline import MODEL, run_baseline  # noqa: E402  (the script measured against)


def text_of(index: int) -> str:
    """Varied, realistic-length text for row ``index`` (every row distinct, so nothing is deduplicated)."""
    return f"Sentence number {index} of the throughput benchmark, read aloud in a calm voice."


# --- measuring ------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children (ffmpeg/ffprobe count too)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mb() -> float:
    """Peak resident set of this process, MB.

    VmHWM, not ``ru_maxrss``: Linux carries a parent's high-water mark across fork + exec into ru_maxrss,
    so a phase started by a parent holding a big generated manifest would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Measured:
    """Wall and CPU seconds around a block."""

    def __enter__(self) -> Measured:
        self.wall0, self.cpu0 = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = cpu_seconds() - self.cpu0


# --- the server -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``voxmill serve --engine null`` in its own process, with the admin calls the benchmark needs."""

    def __init__(self, rps: float, latency_ms: float) -> None:
        self.token = secrets.token_urlsafe(12)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "voxmill.cli", "serve", "--engine", "null", "--no-preload",
            "--rate-limit-rps", str(rps), "--latency-ms", str(latency_ms),
            "--port", str(self.port), f"--token={self.token}",
        ]
        self.process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the local server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit("the local server did not answer /health within 60 s")

    def _admin(self, method: str, path: str) -> dict[str, Any]:
        import httpx

        response = httpx.request(method, f"{self.base_url}{path}",
                                 headers={"Authorization": f"Bearer {self.token}"}, timeout=30.0)
        response.raise_for_status()
        return response.json() if response.content else {}

    def stats(self) -> dict[str, Any]:
        """Counters, without the per-content map (10k entries of no interest here)."""
        snapshot = self._admin("GET", "/admin/stats")
        snapshot.pop("generations", None)
        return snapshot

    def reset(self) -> None:
        self._admin("POST", "/admin/reset")

    def cpu_seconds(self) -> float:
        """CPU seconds of the server process so far (from /proc: it is not our waited-for child)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- phase: baseline ------------------------------------------------------------------------------------


def phase_baseline(args: argparse.Namespace) -> dict:
    import httpx  # noqa: F401  (imported before measuring, like voxmill's imports)

    with Measured() as m:
        counts = asyncio.run(run_baseline(args.base_url, args.token, text_of, args.items, Path(args.out_dir),
                                          rps=args.rps, concurrency=args.concurrency, timeout_s=60.0))
    return {"wall_s": m.wall, "cpu_s": m.cpu, "done": counts["ok"], "client_429": counts["429"],
            "failed": counts["other"], "peak_rss_mb": peak_rss_mb()}


# --- phase: voxmill -------------------------------------------------------------------------------------


def write_csv_manifest(path: Path, rows: int, start: int = 0) -> None:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows((f"item-{i}", text_of(i)) for i in range(start, start + rows))


def voxmill_settings(args: argparse.Namespace, rps: float | None = None):
    """Settings of a phase; the rate budget (learned rates) lives next to the phase's output."""
    from voxmill.settings import ApiKey, RateLimit, Settings

    return Settings(api_key=ApiKey(args.token), base_url=args.base_url,
                    rate_limit=RateLimit(requests_per_second=rps, max_concurrent=args.concurrency),
                    cache_dir=Path(args.out_dir).with_name(Path(args.out_dir).name + "-cache"))


def phase_voxmill(args: argparse.Namespace, rate_given: bool = True) -> dict:
    from voxmill.jobs import JobRequest, run_job

    request = JobRequest("tts", args.manifest, Path(args.out_dir), batch_size=args.batch_size, workers=args.workers)
    settings = voxmill_settings(args, rps=args.rps if rate_given else None)
    with Measured() as m:
        summary = run_job(request, settings)
    return {"wall_s": m.wall, "cpu_s": m.cpu, "done": summary.done, "failed": summary.failed,
            "skipped_done": summary.skipped_done, "rows": summary.rows, "peak_rss_mb": peak_rss_mb(),
            "api_rate": summary.api_rate}


def phase_adaptive(args: argparse.Namespace) -> dict:
    return phase_voxmill(args, rate_given=False)


def phase_cli(args: argparse.Namespace) -> dict:
    """``voxmill synthesize`` as a user types it; "job only" is the run time its summary line reports."""
    import re

    env = {**os.environ, "VOXMILL_API_KEY": args.token, "PYTHONPATH": str(ROOT),
           "VOXMILL_CACHE_DIR": str(Path(args.out_dir).with_name(Path(args.out_dir).name + "-cache"))}
    cmd = [sys.executable, "-m", "voxmill.cli", "synthesize", args.manifest, "-o", args.out_dir,
           "--rps", str(args.rps), "--concurrency", str(args.concurrency), "--base-url", args.base_url,
           "--no-progress"]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    from bench.cli_rss import run_with_own_peak

    with Measured() as m:
        code, _, cli_peak_mb, output = run_with_own_peak(cmd, env)
    if code != 0:
        sys.stderr.write(output)
        raise SystemExit(f"voxmill synthesize exited with {code}")
    headline = re.search(r"(\d+) done, .* rows in ([0-9.]+)s", output)
    # the CLI process's own peak (not this phase process's, nor its Prefect server's)
    return {"wall_s": m.wall, "cpu_s": m.cpu, "done": int(headline.group(1)) if headline else None,
            "steady_wall_s": float(headline.group(2)) if headline else None, "peak_rss_mb": cli_peak_mb}


def phase_prefect(args: argparse.Namespace) -> dict:
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ["VOXMILL_API_KEY"] = args.token
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows.synthesize import synthesize
    from voxmill.options import RunOptions

    with Measured() as m:
        options = RunOptions(requests_per_second=args.rps, max_concurrent=args.concurrency, base_url=args.base_url)
        summary = synthesize(manifest=args.manifest, out_dir=args.out_dir, batch_size=args.batch_size,
                             options=options, return_state=True).result(raise_on_failure=False)
    done = getattr(summary, "done", None)
    elapsed = getattr(summary, "elapsed_s", None)
    return {"wall_s": m.wall, "cpu_s": m.cpu, "done": done, "steady_wall_s": elapsed,
            "peak_rss_mb": peak_rss_mb()}


# --- phase: rss -----------------------------------------------------------------------------------------


def write_big_job(manifest: Path, ledger_dir: Path, rows: int, done_every: int) -> None:
    """A Parquet TTS manifest of ``rows`` rows and a results.parquet marking every ``done_every``-th row done.

    Keys come from :func:`voxmill.identity.item_key` exactly as :func:`voxmill.plan.key_of` builds them for a
    row with only ``id`` and ``text`` (checked against ``key_of`` on the first rows). Written a million rows at
    a time, so 10M rows need no 10M-row lists here.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from voxmill.identity import item_keys
    from voxmill.ledger import LEDGER_SCHEMA, RESULTS_FILE, ROW_GROUP_ROWS
    from voxmill.manifests import ManifestReader
    from voxmill.plan import key_of

    ledger_dir.mkdir(parents=True, exist_ok=True)
    step = 1_000_000
    with pq.ParquetWriter(manifest, pa.schema({"id": pa.string(), "text": pa.string()})) as rows_out, \
            pq.ParquetWriter(ledger_dir / RESULTS_FILE, LEDGER_SCHEMA, compression="zstd") as done_out:
        for first in range(0, rows, step):
            numbers = range(first, min(rows, first + step))
            ids = [f"item-{i}" for i in numbers]
            texts = [text_of(i) for i in numbers]
            rows_out.write_table(pa.table({"id": ids, "text": texts}), row_group_size=65536)
            chosen = [i - first for i in numbers if i % done_every == 0]
            keys = item_keys(MODEL, {}, [texts[i] for i in chosen])
            n = len(chosen)
            columns: dict[str, pa.Array] = {
                "id": pa.array([ids[i] for i in chosen]),
                "key": pa.array(keys),
                "row": pa.array([first + i + 1 for i in chosen], pa.int64()),
                "kind": pa.array(["tts"] * n),
                "model": pa.array([MODEL] * n),
                "status": pa.array(["done"] * n),
                "params": pa.array(["{}"] * n),
                "text": pa.array([texts[i] for i in chosen]),
                "output_path": pa.array([f"audio/{ids[i]}.wav" for i in chosen]),
                "output_format": pa.array(["wav"] * n),
                "run_id": pa.array(["bench"] * n),
            }
            done_out.write_table(pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in LEDGER_SCHEMA},
                                          schema=LEDGER_SCHEMA), row_group_size=ROW_GROUP_ROWS)
    reader = ManifestReader(str(manifest), "tts")
    expected = item_keys(MODEL, {}, [text_of(i) for i in range(3)])
    for index, item in zip(range(3), reader, strict=False):
        assert key_of(item) == expected[index], "benchmark keys drifted from voxmill.plan.key_of"


def phase_rss(args: argparse.Namespace) -> dict:
    from voxmill.ledger import Ledger
    from voxmill.manifests import ManifestReader
    from voxmill.plan import PlanCounts, plan_items

    rss_before = peak_rss_mb()
    with Measured() as m:
        # what open_job and OpenJob.batches do: the scan (rows, repeated ids), the done-index, the plan
        scan = ManifestReader(args.manifest, "tts").scan()
        done = Ledger(Path(args.out_dir)).done_index()
        index_done = time.perf_counter() - m.wall0
        counts = PlanCounts()
        reader = ManifestReader(args.manifest, "tts", repeated_ids=scan.repeated_ids)
        pending = sum(1 for _ in plan_items(reader, done, counts=counts))
    return {"wall_s": m.wall, "cpu_s": m.cpu, "index_s": index_done, "rows": counts.rows, "pending": pending,
            "skipped_done": counts.skipped_done, "duplicates": len(scan.repeated_ids),
            "rss_after_imports_mb": rss_before, "peak_rss_mb": peak_rss_mb()}


# --- phase: rerun ---------------------------------------------------------------------------------------


def phase_rerun(args: argparse.Namespace) -> dict:
    from voxmill.jobs import JobRequest, run_job

    request = JobRequest("tts", args.manifest, Path(args.out_dir), workers=args.workers)
    settings = voxmill_settings(args)
    with Measured() as m:
        summary = run_job(request, settings)
    return {"wall_s": m.wall, "cpu_s": m.cpu, "done": summary.done, "skipped_done": summary.skipped_done,
            "rows": summary.rows, "peak_rss_mb": peak_rss_mb()}


PHASES = {"baseline": phase_baseline, "voxmill": phase_voxmill, "adaptive": phase_adaptive, "cli": phase_cli,
          "prefect": phase_prefect, "rss": phase_rss, "rerun": phase_rerun}


# --- orchestration --------------------------------------------------------------------------------------


def run_phase(name: str, args: argparse.Namespace, **extra: Any) -> dict:
    """Run one phase in a fresh interpreter; its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name,
           "--rps", str(args.rps), "--concurrency", str(args.concurrency), "--workers", str(args.workers)]
    for key, value in extra.items():
        if value is not None:
            cmd.append(f"--{key.replace('_', '-')}={value}")  # '=': a value may start with '-'
    print(f"  … {name} {' '.join(f'{k}={v}' for k, v in extra.items() if k not in ('token', 'base_url'))}",
          file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"phase {name} failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measured_run(server: ServerProcess, name: str, args: argparse.Namespace, **extra: Any) -> dict:
    """A phase against the server, with the server's counters and CPU for exactly that phase."""
    server.reset()
    server_cpu0 = server.cpu_seconds()
    result = run_phase(name, args, base_url=server.base_url, token=server.token, **extra)
    result["server"] = server.stats()
    result["server_cpu_s"] = server.cpu_seconds() - server_cpu0
    return result


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def orchestrate(args: argparse.Namespace) -> None:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="voxmill-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"voxmill throughput benchmark: {args.items} items, {args.rps:g} req/s limit, {args.latency_ms:g} ms "
          f"latency, concurrency {args.concurrency}, workers {args.workers}; {os.cpu_count()} cores, {load()}",
          file=sys.stderr, flush=True)
    results: dict[str, dict] = {}
    load_at: dict[str, str] = {"start": load()}
    parts = set(args.parts.split(","))
    server = ServerProcess(args.rps, args.latency_ms)
    try:
        if "throughput" in parts:
            manifest = work / "tts.csv"
            write_csv_manifest(manifest, args.items)
            results["baseline"] = measured_run(server, "baseline", args, items=args.items,
                                               out_dir=work / "baseline-out")
            results["voxmill"] = measured_run(server, "voxmill", args, manifest=manifest,
                                              out_dir=work / "voxmill-out", batch_size=args.batch_size)
            results["adaptive"] = measured_run(server, "adaptive", args, manifest=manifest,
                                               out_dir=work / "adaptive-out", batch_size=args.batch_size)
            if not args.no_cli:
                results["cli"] = measured_run(server, "cli", args, manifest=manifest, out_dir=work / "cli-out",
                                              batch_size=args.batch_size)
            load_at["throughput"] = load()
            if args.prefect:
                results["prefect"] = measured_run(server, "prefect", args, manifest=manifest,
                                                  out_dir=work / "prefect-out", batch_size=args.batch_size)
        if "rerun" in parts:
            # a finished job of rerun-items rows: every row done in results.parquet, nothing to send
            rerun_manifest, rerun_dir = work / "rerun.parquet", work / "rerun-out"
            write_big_job(rerun_manifest, rerun_dir, args.rerun_items, done_every=1)
            results["rerun"] = measured_run(server, "rerun", args, manifest=rerun_manifest, out_dir=rerun_dir)
    finally:
        server.stop()
    rss_results = []
    for rows in rss_sizes(args.rss_rows) if "rss" in parts else []:
        rss_manifest, rss_dir = work / f"rss-{rows}.parquet", work / f"rss-{rows}-out"
        write_big_job(rss_manifest, rss_dir, rows, done_every=2)
        rss_results.append((rows, run_phase("rss", args, manifest=rss_manifest, out_dir=rss_dir)))
        rss_manifest.unlink()
        shutil.rmtree(rss_dir)
    load_at["end"] = load()
    print_report(args, results, rss_results, load_at)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def rss_sizes(top: int) -> list[int]:
    return sorted({max(1, top // 10), max(1, (top * 3) // 10), top})


def print_report(args: argparse.Namespace, results: dict, rss_results: list, load_at: dict) -> None:
    checks: list[tuple[str, bool, str]] = []
    if "baseline" in results:
        print_throughput(args, results, checks)
    if "rerun" in results:
        rerun = results["rerun"]
        print(f"## Rerun of a finished {args.rerun_items}-item job")
        print(markdown_table(
            ["rows", "skipped as done", "sent", "wall s", "CPU s", "peak RSS MB", "server requests",
             "server generations"],
            [[f"{rerun['rows']}", f"{rerun['skipped_done']}", f"{rerun['done']}", f"{rerun['wall_s']:.2f}",
              f"{rerun['cpu_s']:.2f}", f"{rerun['peak_rss_mb']:.0f}", f"{rerun['server']['requests']}",
              f"{rerun['server']['generations_total']}"]],
        ))
        print()
        checks.append(("rerun ≤ 10 s", rerun["wall_s"] <= 10, f"{rerun['wall_s']:.2f} s"))
        checks.append(("rerun sends 0 requests", rerun["server"]["requests"] == 0, f"{rerun['server']['requests']}"))
    if rss_results:
        print("## Peak RSS: read + validate + key + resume-skip a Parquet manifest (half of it done in the ledger)")
        print(markdown_table(
            ["rows", "done in ledger", "pending", "wall s", "µs/row", "CPU µs/row", "scan + done-index s",
             "RSS after imports MB", "peak RSS MB"],
            [[f"{n}", f"{r['skipped_done']}", f"{r['pending']}", f"{r['wall_s']:.1f}",
              f"{1e6 * r['wall_s'] / n:.1f}", f"{1e6 * r['cpu_s'] / n:.1f}", f"{r['index_s']:.1f}",
              f"{r['rss_after_imports_mb']:.0f}", f"{r['peak_rss_mb']:.0f}"]
             for n, r in rss_results],
        ))
        print()
        peak = max(r["peak_rss_mb"] for _, r in rss_results)
        checks.append((f"peak RSS ≤ 500 MB at {rss_results[-1][0]} rows", peak <= 500, f"{peak:.0f} MB"))
        top_rows, top = rss_results[-1]
        per_row = 1e6 * top["wall_s"] / top_rows
        checks.append((f"planning ≤ 10 µs/row at {top_rows} rows", per_row <= 10,
                       f"{per_row:.1f} µs/row ({1e6 * top['cpu_s'] / top_rows:.1f} µs CPU)"))
    print("## Targets")
    print(markdown_table(["target", "met", "measured"], [[t, "yes" if ok else "NO", v] for t, ok, v in checks]))
    print()
    print(f"machine: {os.cpu_count()} cores; {'; '.join(f'{k}: {v}' for k, v in load_at.items())}")


def print_throughput(args: argparse.Namespace, results: dict, checks: list[tuple[str, bool, str]]) -> None:
    base = results["baseline"]
    base_rate = base["done"] / base["wall_s"]
    base_cpu_ms = 1000 * base["cpu_s"] / max(1, base["done"])
    rows = []

    def throughput_row(label: str, r: dict, wall_key: str = "wall_s") -> None:
        done = r["done"] or 0
        rate = done / r[wall_key] if r.get(wall_key) else float("nan")
        cpu_ms = 1000 * r["cpu_s"] / max(1, done)
        server = r["server"]
        rows.append([
            label, f"{done}", f"{r[wall_key]:.1f}", f"{rate:.1f}", f"{100 * rate / args.rps:.1f}%",
            f"{rate / base_rate:.3f}×", f"{cpu_ms:.2f}", f"{cpu_ms - base_cpu_ms:+.2f}",
            f"{server['generations_total']}", f"{server['by_status'].get('429', 0)}", f"{r['server_cpu_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
        ])

    throughput_row("baseline (asyncio+httpx+bucket)", base)
    throughput_row("voxmill run_job", results["voxmill"])
    throughput_row("voxmill run_job, no rate given (adaptive)", results["adaptive"])
    if "cli" in results:
        throughput_row("voxmill CLI (whole)", results["cli"])
        if results["cli"].get("steady_wall_s"):
            throughput_row("voxmill CLI (job only)", results["cli"], "steady_wall_s")
    if "prefect" in results:
        throughput_row("voxmill Prefect flow (whole)", results["prefect"])
        if results["prefect"].get("steady_wall_s"):
            throughput_row("voxmill Prefect flow (job only)", results["prefect"], "steady_wall_s")
    header = ["run", "items", "wall s", "items/s", "of limit", "vs baseline", "CPU ms/item",
              "orchestration ms/item", "server generations", "429s", "server CPU s", "peak RSS MB"]
    print()
    print(f"## Throughput: {args.items} TTS items, limit {args.rps:g} req/s, {args.latency_ms:g} ms latency, "
          f"concurrency {args.concurrency}")
    print(markdown_table(header, rows))
    print()
    vox = results["voxmill"]
    vox_rate = vox["done"] / vox["wall_s"]
    orchestration_ms = 1000 * vox["cpu_s"] / max(1, vox["done"]) - base_cpu_ms
    checks += [
        ("throughput ≥ 95% of the limit", vox_rate / args.rps >= 0.95, f"{100 * vox_rate / args.rps:.1f}%"),
        ("throughput ≥ 0.95× baseline", vox_rate / base_rate >= 0.95, f"{vox_rate / base_rate:.3f}×"),
        ("orchestration CPU ≤ 0.5 ms/item", orchestration_ms <= 0.5, f"{orchestration_ms:.2f} ms"),
        ("every item generated once", vox["server"]["generations_total"] == args.items,
         f"{vox['server']['generations_total']} of {args.items}"),
    ]
    adaptive = results["adaptive"]
    adaptive_rate = adaptive["done"] / adaptive["wall_s"]
    checks.append(("no rate given: ≥ 90% of the limit", adaptive_rate / args.rps >= 0.90,
                   f"{100 * adaptive_rate / args.rps:.1f}%, learned {adaptive.get('api_rate')} req/s, "
                   f"{adaptive['server']['by_status'].get('429', 0)} 429s"))
    cli = results.get("cli")
    if cli and cli.get("steady_wall_s") and cli.get("done"):
        cli_rate = cli["done"] / cli["steady_wall_s"]
        checks += [
            ("CLI (job only) ≥ 95% of the limit", cli_rate / args.rps >= 0.95, f"{100 * cli_rate / args.rps:.1f}%"),
            ("CLI (job only) ≥ 0.95× baseline", cli_rate / base_rate >= 0.95, f"{cli_rate / base_rate:.3f}×"),
        ]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000, help="TTS items per run (default %(default)s)")
    parser.add_argument("--rps", type=float, default=200.0, help="server rate limit = client rate (req/s)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="server latency per request")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at once")
    parser.add_argument("--workers", type=int, default=4, help="voxmill batch workers (threads)")
    parser.add_argument("--batch-size", type=int, default=None, help="voxmill batch size (default: automatic)")
    parser.add_argument("--rss-rows", type=int, default=1_000_000, help="largest manifest of the RSS phase")
    parser.add_argument("--rerun-items", type=int, default=100_000, help="rows of the finished job rerun")
    parser.add_argument("--prefect", action="store_true", help="also run the job through the Prefect flow")
    parser.add_argument("--no-cli", action="store_true", help="skip the run through the voxmill CLI")
    parser.add_argument("--parts", default="throughput,rerun,rss",
                        help="comma-separated parts to run: throughput, rerun, rss (default: all)")
    parser.add_argument("--quick", action="store_true", help="small numbers for a smoke run")
    parser.add_argument("--work-dir", default=None, help="where manifests and outputs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    # internal: one phase in this process
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    for name in ("base-url", "token", "manifest", "out-dir"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.rss_rows, args.rerun_items = min(args.items, 1000), min(args.rss_rows, 50_000), min(
            args.rerun_items, 10_000)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
