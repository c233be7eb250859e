"""A full output disk (a small tmpfs) stops a CLI run at once with one clear error; the ledger and tables stay
intact, nothing partial is recorded as done, and the rerun after the disk grows pays only what was in flight."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest
from manifest_files import write_manifest

from voxmill.identity import file_hash
from voxmill.ledger import Ledger

ROWS = 400
CONCURRENCY = 4


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (the null engine writes ~5 KB per row: full after ~40 rows); grown by the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run_cli(manifest: Path, out: Path, server, prefect_api: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VOXMILL_API_KEY": server.token, "VOXMILL_BASE_URL": server.base_url,
           "VOXMILL_CONCURRENCY": str(CONCURRENCY), "PREFECT_API_URL": prefect_api}
    return subprocess.run([sys.executable, "-m", "voxmill.cli", "synthesize", str(manifest), "-o", str(out),
                           "--no-progress"], env=env, capture_output=True, text=True, timeout=300)


def done_rows(out: Path) -> list[dict]:
    table = Ledger(out).read()
    return table.filter(pc.equal(table["status"], "done")).to_pylist() if table.num_rows else []


@pytest.mark.e2e
@pytest.mark.prefect
def test_disk_full_stops_the_run_then_the_rerun_pays_only_what_was_in_flight(
        small_disk, make_server, prefect_api, tmp_path):
    server = make_server(latency_ms=20)
    manifest = write_manifest(tmp_path / "m.csv",
                              [{"id": f"row-{n:03d}", "text": f"Disk full check sentence number {n}."}
                               for n in range(ROWS)])
    out = small_disk / "out"

    first = run_cli(manifest, out, server, prefect_api)
    said = first.stdout + first.stderr
    assert first.returncode == 1, said[-3000:]
    assert "disk is full" in said and "No space left on device" in said, said[-3000:]
    assert "Traceback" not in said and "unexpected error" not in said, said[-3000:]
    assert said.count("disk is full") <= 2, said[-3000:]  # the stop reason, once in the headline (and once more
    # at most if the final table could not be written either)

    recorded = done_rows(out)
    assert 0 < len(recorded) < ROWS
    for row in recorded:  # nothing partial recorded as done: every done row's file is whole
        assert file_hash(out / row["output_path"]) == row["sha256"], row["id"]
    generated = server.stats()["generations_total"]
    # it stopped sending: beyond what it recorded, only the requests in flight at the stop were generated
    assert generated - len(recorded) <= CONCURRENCY, (generated, len(recorded))

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    second = run_cli(manifest, out, server, prefect_api)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert len(done_rows(out)) == ROWS
    twice = sum(n - 1 for n in Counter(server.stats()["generations"]).values() if n > 1)
    assert twice <= CONCURRENCY, twice


def test_journal_on_a_full_disk_never_keeps_a_torn_line(small_disk):
    """Rows appended until the disk fills: each refused one is cut back whole (a short write leaves no half
    line that would swallow the next row), every row written before it reads back, and results.parquet
    stays as it was when compaction has no room."""
    from voxmill.errors import DiskFull
    from voxmill.ledger import LedgerRow

    ledger = Ledger(small_disk)
    ledger.append(LedgerRow(id="first", key=f"{0:064x}", row=1, kind="tts", model="higgs2p5", status="done",
                            params="{}"))
    ledger.compact()
    before = (small_disk / "results.parquet").read_bytes()
    written = 0
    with pytest.raises(DiskFull, match=r"disk is full \(No space left on device\) writing .*journal"):
        for n in range(1, 100_000):
            ledger.append(LedgerRow(id=f"row-{n}", key=f"{n:064x}", row=n, kind="tts", model="higgs2p5",
                                    status="done", params="{}", text="x" * 500))
            written = n
    assert written > 100
    assert Ledger(small_disk).read().num_rows == written + 1
    with pytest.raises(DiskFull, match="results.parquet"):
        ledger.compact()
    assert (small_disk / "results.parquet").read_bytes() == before
    assert not [p.name for p in small_disk.iterdir() if ".tmp-" in p.name]
    ledger.close()
