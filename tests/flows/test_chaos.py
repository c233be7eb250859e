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
