"""Kill -9 while TTS bodies are streaming into their temp files: the rerun sweeps them and counts none as done."""

from __future__ import annotations

import signal

import pyarrow.parquet as pq
import pytest
from manifest_files import write_manifest
from test_kill_resume import done_ids, start_run, wait_until

from voxmill.audio.formats import check_audio_body

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ITEMS = 12


def test_bodies_cut_by_a_kill_are_swept_and_redone(make_server, prefect_api, tmp_path):
    # every body trickles over 30 s: the kill lands while each one in flight is half written
    server = make_server(slow_body_rate=1.0, slow_body_seconds=30.0)
    manifest = write_manifest(tmp_path / "m.csv",
                              [{"id": f"item-{n:02d}", "text": f"Streaming kill check number {n}."}
                               for n in range(ITEMS)])
    out = tmp_path / "out"

    process = start_run(manifest, out, server, prefect_api)

    def partial_bodies() -> list:
        return [p for p in (out / "audio").glob(".*.part") if p.stat().st_size > 0] if (out / "audio").is_dir() else []

    assert wait_until(lambda: len(partial_bodies()) >= 2, process), process.stdout.read().decode()[-3000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    cut = partial_bodies()
    assert cut and done_ids(out) == set()  # half bodies on disk, none of them recorded
    assert not [p for p in (out / "audio").iterdir() if not p.name.startswith(".")]  # nor passed off as outputs

    server.clear_faults()
    final = start_run(manifest, out, server, prefect_api)
    output = final.communicate(timeout=300)[0].decode()
    assert final.returncode == 0, output[-3000:]
    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == ITEMS and set(table["status"].to_pylist()) == {"done"}
    for row in table.to_pylist():
        check_audio_body((out / row["output_path"]).read_bytes(), "wav")
    assert not list((out / "audio").glob(".*"))  # the cut bodies were swept
