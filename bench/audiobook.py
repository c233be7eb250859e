"""Audiobook benchmark (not a test): a synthetic 120,000-word book through the null engine, end to end.

    .venv/bin/python bench/audiobook.py                      # 120,000 words, null-engine audio (~0.1 s/chunk)
    .venv/bin/python bench/audiobook.py --speech             # chunk audio replaced by speech-length stand-ins
    .venv/bin/python bench/audiobook.py --words 20000        # smaller

The local server (null engine) runs in its own process, so its CPU and memory do not count against the
book. The book runs in a fresh subprocess of this script (``--phase book``) that reports one JSON line:
wall time, peak RSS of the process and of its largest child (ffmpeg), and the pipeline's own timings
(plan, requests, assembly, mastering). The null engine returns 0.1 s of silence per chunk, so by default
the book is mostly pauses; ``--speech`` overwrites every chunk's WAV, after the requests and before
assembly, with a voiced stand-in as long as the chunk would be spoken (2.5 words/s): a ~13-hour book for
120,000 words, to measure assembly and mastering at full length. The baseline is the requests phase
(the ordinary engine job on the book's chunks); the table gives every phase's ratio to it.

Mastering is then measured again on the same book folder (its chunks and assembled chapters reused, only
mastering redone): the earlier whole-book path (one AAC stream for the book, loudness measured over the joined
book and corrected through a 4×-oversampled true-peak limiter that also runs in the encode, ffmpeg's default
``twoloop`` AAC coder) and the chapter path (each chapter measured once and encoded once, in parallel, at one
gain for the book with a limiter only where its peaks need one, joined by stream copy) with the ``twoloop``
coder and with the default ``fast`` coder, in that order, in the same run (``--paths`` picks some); the second
table gives each one's ratio to the whole-book path, and the m4b each one wrote, measured afterwards (not
timed): its integrated loudness and its true peak (ffmpeg ``ebur128``, 4× oversampled), against the targets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORDS = ("harbour lantern compass island keeper parcel village stranger evening morning quietly suddenly ancient "
         "narrow golden silver whispered carried opened watched river mountain letter window garden winter summer "
         "shadow candle orchard meadow bridge thunder ribbon pocket station kettle blanket").split()


def synthetic_book(path: Path, words: int, chapters: int, seed: int = 7) -> Path:
    """A Markdown book of ``words`` words in ``chapters`` chapters of paragraphs of ordinary sentences."""
    rng = random.Random(seed)
    per_chapter = words // chapters
    lines = ["# A Synthetic Book", ""]
    for number in range(1, chapters + 1):
        lines += [f"## Chapter {number}", ""]
        written = 0
        while written < per_chapter:
            sentences = []
            for _ in range(rng.randint(3, 8)):
                length = rng.randint(6, 24)
                sentences.append(" ".join(rng.choice(WORDS) for _ in range(length)).capitalize() + ".")
                written += length
            lines += [" ".join(sentences), ""]
    path.write_text("\n".join(lines))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def speech_stand_ins(out_dir: Path, texts: dict[str, str]) -> float:
    """Overwrite each chunk's WAV with a voiced stand-in as long as its text spoken at 2.5 words/s.

    Syllables of 0.25 s at a random pitch (90–220 Hz, four harmonics, Hann envelope), a quarter of them
    silent: tonal like speech, so the AAC encoder does the work it does on speech (noise costs it ~7× more).
    """
    import numpy as np

    rng = np.random.default_rng(1)
    total = 0.0
    syllable = 6000  # samples at 24 kHz
    window = np.hanning(syllable).astype(np.float32)
    for item_id, text in texts.items():
        count = max(1, int(len(text.split()) / 2.5 * 4))
        pitch = np.repeat(rng.uniform(90, 220, count), syllable)
        voiced = np.repeat(rng.random(count) > 0.25, syllable) * np.tile(window, count)
        phase = np.cumsum(2 * np.pi * pitch / 24000)
        signal = sum(np.sin(k * phase) / k for k in range(1, 5)) * voiced * 0.15
        samples = (signal * 32767).astype("<i2")
        with wave.open(str(out_dir / "audio" / f"{item_id}.wav"), "wb") as writer:
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(24000)
            writer.writeframes(samples.tobytes())
        total += len(samples) / 24000
    return total


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children: the ffmpeg processes of mastering."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def phase_book(args: argparse.Namespace) -> dict:
    """Run one book in this process and report what it cost."""
    import pyarrow.parquet as pq

    from voxmill.audio.measure import loudness_of
    from voxmill.book.pipeline import AudiobookRequest, make_audiobook
    from voxmill.jobs import run_job
    from voxmill.settings import ApiKey, RateLimit, Settings

    settings = Settings.from_env().with_(api_key=ApiKey(args.token), base_url=args.base_url,
                                         rate_limit=RateLimit(max_concurrent=args.concurrency))

    stand_in = {"s": 0.0}

    def run_chunks(job):
        summary = run_job(job, settings)
        if args.speech and job.kind == "tts":
            clock = time.monotonic()
            table = pq.read_table(job.manifest).to_pylist()
            speech_stand_ins(job.out_dir, {row["id"]: row["text"] for row in table})
            stand_in["s"] += time.monotonic() - clock
        return summary

    request = AudiobookRequest(book=args.book, out_dir=Path(args.out), chapter_format=args.format)
    started = time.monotonic()
    result = make_audiobook(request, settings, run_chunks=run_chunks)
    wall = time.monotonic() - started
    first_stand_in = stand_in["s"]
    mastering: dict[str, dict] = {}
    for name, changes in (("whole-book", {"mastering": "whole-book"}),
                          ("chapters-twoloop", {"mastering": "chapters", "aac_coder": "twoloop"}),
                          ("chapters", {"mastering": "chapters", "aac_coder": "fast"})):
        if name not in args.paths.split(","):
            continue
        # the same folder again: chunks and assembled chapters are reused, only mastering is redone
        cpu_before = _children_cpu()
        again = make_audiobook(dataclasses.replace(request, **changes), settings, run_chunks=run_chunks)
        used = round(_children_cpu() - cpu_before, 2)
        level = loudness_of(Path(again.m4b), peak="true")  # after the timing: what the listener gets
        mastering[name] = {"wall_s": again.timings["mastering_s"], "cpu_s": used, "lufs": level.lufs,
                           "true_peak_db": level.peak_db}
    stand_in["s"] = first_stand_in
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    timings = dict(result.timings)
    timings["requests_s"] = round(timings["requests_s"] - stand_in["s"], 3)  # the stand-ins are not requests
    timings["total_s"] = round(timings["total_s"] - stand_in["s"], 3)
    return {"ok": result.ok, "chapters": result.chapters, "chunks": result.chunks, **timings,
            "audio_hours": round(result.audio_seconds / 3600, 3), "wall_s": round(wall, 2),
            "peak_rss_mb": round(own, 1), "peak_child_rss_mb": round(kids, 1), "stand_in_s": round(stand_in["s"], 2),
            "mastering": mastering, "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=120_000)
    parser.add_argument("--chapters", type=int, default=40)
    parser.add_argument("--speech", action="store_true", help="speech-length stand-in audio (see the docstring)")
    parser.add_argument("--format", default="m4b", help="per-chapter files (default m4b)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--paths", default="whole-book,chapters-twoloop,chapters",
                        help="mastering paths to time again, in this order (whole-book is the baseline)")
    parser.add_argument("--phase", choices=("book",), help=argparse.SUPPRESS)
    parser.add_argument("--book", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "book":
        print(json.dumps(phase_book(args)))
        return

    with tempfile.TemporaryDirectory(prefix="voxmill-bench-book-") as work:
        work_dir = Path(work)
        book = synthetic_book(work_dir / "book.md", args.words, args.chapters)
        token, port = secrets.token_urlsafe(12), free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen([sys.executable, "-m", "voxmill.cli", "serve", "--engine", "null", "--port",
                                   str(port), f"--token={token}"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.2)
            cmd = [sys.executable, __file__, "--phase", "book", "--book", str(book), "--out", str(work_dir / "out"),
                   f"--token={token}", "--base-url", f"http://127.0.0.1:{port}", "--format", args.format,
                   "--concurrency", str(args.concurrency), "--paths", args.paths]
            cmd += ["--speech"] if args.speech else []
            line = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        finally:
            server.terminate()
            server.wait(timeout=30)
    report = json.loads(line)
    load = os.getloadavg()[0]
    print(f"audiobook benchmark: {args.words} words, {args.chapters} chapters, {report['chunks']} chunks, "
          f"{report['audio_hours']} h of audio ({'speech stand-ins' if args.speech else 'null-engine audio'}), "
          f"chapter files {args.format}; load average {load:.1f}")
    baseline = report["requests_s"]
    print(f"{'phase':<28} {'seconds':>9} {'× requests':>11}")
    for name in ("plan_s", "requests_s", "assembly_s", "mastering_s", "total_s"):
        print(f"{name[:-2]:<28} {report[name]:>9.2f} {report[name] / baseline:>11.2f}")
    print(f"{'requests per second':<28} {report['chunks'] / baseline:>9.1f}")
    if args.speech:
        print(f"{'writing stand-ins (excluded)':<28} {report['stand_in_s']:>9.2f}")
    runs = report["mastering"]
    base = runs.get("whole-book")
    print(f"\nmastering the same {report['audio_hours']} h ({report['cpus']} CPUs, load average now "
          f"{os.getloadavg()[0]:.1f}): "
          "before (whole book, one AAC stream, 4x-oversampled true-peak limiter, ffmpeg's default twoloop coder) and "
          "after (each chapter measured once and encoded once in parallel, one gain, a limiter only where peaks need "
          "it, joined by stream copy)")
    print("wall seconds depend on what else the machine runs; ffmpeg CPU seconds do not (much), and an idle machine")
    print("runs the chapter path's ffmpeg processes on every core at once; LUFS and dBTP: the m4b, measured after")
    print(f"{'mastering path':<28} {'wall s':>9} {'× before':>9} {'ffmpeg CPU s':>13} {'× before':>9} {'LUFS':>7} "
          f"{'dBTP':>7}")
    labels = {"whole-book": "before: whole-book", "chapters-twoloop": "chapters, twoloop coder",
              "chapters": "after: chapters, fast coder"}
    for name, run in runs.items():
        wall = f"{run['wall_s'] / base['wall_s']:>9.2f}" if base else f"{'-':>9}"
        cpu = f"{run['cpu_s'] / base['cpu_s']:>9.2f}" if base else f"{'-':>9}"
        lufs = f"{run['lufs']:>7.1f}" if run["lufs"] is not None else f"{'-':>7}"
        peak = f"{run['true_peak_db']:>7.1f}" if run["true_peak_db"] is not None else f"{'-':>7}"
        print(f"{labels[name]:<28} {run['wall_s']:>9.2f} {wall} {run['cpu_s']:>13.2f} {cpu} {lufs} {peak}")
    print(f"{'peak RSS, book process':<28} {report['peak_rss_mb']:>7.0f} MB")
    print(f"{'peak RSS, largest child':<28} {report['peak_child_rss_mb']:>7.0f} MB")


if __name__ == "__main__":
    main()
