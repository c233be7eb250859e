"""The chaos suite, small: ``bench/chaos.py --quick`` (200 TTS items under 5xx, resets, truncations and 429
bursts, SIGKILLed twice and rerun; an ASR pass with bad files) must pass its own checks. The numbers come
from the server's counters and the job's ledger, so this test sees what the benchmark sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.e2e
def test_quick_chaos_run_loses_nothing_and_pays_twice_only_for_items_in_flight(tmp_path):
    numbers = tmp_path / "chaos.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--quick", "--via", "run_job", "--json", str(numbers),
         "--work-dir", str(tmp_path / "work")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    result = json.loads(numbers.read_text())
    tts, asr = result["tts"], result["asr"]
    assert tts["items"] == tts["done"] == 200
    assert [run["ended"] for run in tts["runs"]][:2] == ["killed", "killed"]
    assert tts["runs"][-1]["ended"] == "exit 0" and tts["runs"][-1]["done_after"] == 200
    # every extra generation is a truncation or a duplicate of an item in flight at a kill
    assert tts["billed"] - tts["items"] == tts["truncations"] + tts["duplicates"]
    assert all(d <= f for d, f in zip(tts["duplicates_per_kill"], tts["in_flight_per_kill"], strict=True))
    assert tts["truncations"] > 0 and tts["resets"] > 0
    assert all(tts["by_status"].get(status, 0) > 0 for status in ("429", "500", "503"))
    assert asr["good_done"] == asr["good"]
    assert asr["outcomes"]["not-audio.wav"].startswith("failed") and asr["outcomes"]["empty.wav"].startswith("failed")
    assert all(ok for _, ok, _ in tts["checks"] + asr["checks"])


def test_the_rate_between_bursts_is_measured_after_a_kill_or_restart_in_the_gap():
    sys.path.insert(0, str(ROOT / "bench"))
    import chaos

    bursts = chaos.RateLimitBursts.__new__(chaos.RateLimitBursts)
    step = chaos.SAMPLE_S

    def stretch(start: float, end: float, rate: float, on: bool, admitted: float) -> list[tuple]:
        times = [start + i * step for i in range(round((end - start) / step))]
        return [(t, round(admitted + rate * (t - start)), on, 0, 0.0) for t in times]

    # 2 s at 300 req/s, a 3-s burst, a 5-s gap at 250 req/s, a burst, a gap with a restart in it (nothing for 2 s,
    # then 3 s at 200 req/s), a burst, a gap whose restart leaves 1 s, a burst
    samples = stretch(0, 2, 300, False, 0)
    for start, parts in ((2, [(5, 0, True), (10, 250, False)]),
                         (10, [(13, 0, True), (15, 0, False), (18, 200, False)]),
                         (18, [(21, 0, True), (25, 0, False), (26, 200, False)]),
                         (26, [(29, 0, True)])):
        for end, rate, on in parts:
            samples += stretch(start, end, rate, on, samples[-1][1])
            start = end
    bursts.samples = samples
    before, gaps, _ = bursts.rate_between_bursts(until=29, disruptions=[(14.0, 15.0), (21.5, 25.0)])
    assert before == pytest.approx(300, rel=0.05)
    assert gaps == [pytest.approx(250, rel=0.05), pytest.approx(200, rel=0.05)], "the 1-s rest of a gap: too short"
