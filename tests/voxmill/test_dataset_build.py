"""Dataset builds with the real local engines over loopback: v1 from 12 rows (two that QC must reject),
an edited source → v2 billed for exactly the 4 new/changed rows, v1 untouched, ``latest`` on v2, v2 loads
with Hugging Face ``datasets`` with decodable audio; ``voxmill dataset build`` in a subprocess killed with
SIGKILL mid-publish (writing its shards; version complete but ``latest`` not yet moved) leaves ``latest``
alone, and the rerun publishes without paying again."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile
from manifest_files import write_manifest

from voxmill.audio.transcode import OutputSpec
from voxmill.dataset import DatasetSpec, DatasetStore, QcThresholds, build_dataset
from voxmill.settings import ApiKey, RateLimit, Settings

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the old stone bridge.",
    "Bright stars filled the winter sky above the quiet mountain village.",
    "She poured a cup of green tea and opened the morning newspaper.",
    "A small boat drifted slowly across the calm blue lake at dawn.",
    "The children laughed as they ran through the tall summer grass.",
    "He locked the front door and walked down the empty street.",
    "Fresh bread was cooling on the kitchen table by the window.",
    "The old clock in the hall struck twelve as the guests arrived.",
    "Rain tapped gently against the roof of the wooden cabin.",
    "They watched the sun set behind the hills from the garden.",
    "My sister planted red roses along the garden fence last spring.",
    "The train left the station exactly on time this morning.",
    "A gentle breeze carried the smell of pine through the forest.",
    "We found a quiet table in the corner of the busy cafe.",
]
#: piper says it, whisper cannot read it back
GIBBERISH = "Zxqv brrml kthpf wvzzy qlornk gruftz."
#: spoken at a quarter of the normal rate: far too long for its text
SLOW = {"id": "slow", "text": "Please close the window.", "params": '{"voice_settings": {"speed": 0.25}}'}


def settings_for(server, tmp_path) -> Settings:
    return Settings(api_key=ApiKey(server.token), base_url=server.base_url,
                    rate_limit=RateLimit(max_concurrent=4), cache_dir=tmp_path / "cache")


def folder_checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_incremental_build_publish_and_kill(real_server, tmp_path, monkeypatch):
    rows = [{"id": f"s{i:02d}", "text": SENTENCES[i], "params": ""} for i in range(10)]
    rows += [{"id": "gibberish", "text": GIBBERISH, "params": ""}, SLOW]
    source = write_manifest(tmp_path / "source.csv", rows)
    dest = tmp_path / "dest"
    spec = DatasetSpec(
        name="speech", kind="tts", source=str(source), dest=str(dest), model="higgs2p5",
        output=OutputSpec(format="flac", sample_rate=16000),
        qc=QcThresholds(roundtrip=True, max_wer=0.4), shard_rows=4,
    )
    settings = settings_for(real_server, tmp_path)
    real_server.reset_stats()

    v1 = build_dataset(spec, settings)
    assert v1.previous is None and v1.diff.added == 12
    assert real_server.stats()["generations_total"] == 24  # 12 clips + 12 round-trip transcriptions
    assert (v1.rows, v1.rejected) == (10, 2), v1
    store = DatasetStore(str(dest))
    assert store.latest_id() == v1.version
    v1_folder = dest / "versions" / v1.version
    rejects = {r["id"]: r["reasons"] for r in pq.read_table(v1_folder / "rejects.parquet").to_pylist()}
    assert set(rejects) == {"gibberish", "slow"}
    assert any(r.startswith("wer ") for r in rejects["gibberish"]), rejects
    assert any("IQR" in r for r in rejects["slow"]), rejects
    before = folder_checksums(v1_folder)
    assert len([n for n in before if n.startswith("data/")]) == 3  # 10 rows in shards of 4

    # the source changes: 1 removed, 1 edited, 3 added
    edited = [r for r in rows if r["id"] != "s03"]
    edited[0] = {**edited[0], "text": "The quick brown fox jumps over the sleeping cat by the river."}
    edited += [{"id": f"s{i:02d}", "text": SENTENCES[i], "params": ""} for i in (10, 11, 12)]
    write_manifest(source, edited)
    real_server.reset_stats()
    v2 = build_dataset(spec, settings)
    assert (v2.diff.added, v2.diff.changed, v2.diff.removed, v2.diff.unchanged) == (3, 1, 1, 10)
    assert real_server.stats()["generations_total"] == 8  # 4 rows: each one clip + one transcription
    assert v2.billed_requests == 8 and v2.carried == 10
    assert (v2.rows, v2.rejected) == (12, 2), v2
    assert store.latest_id() == v2.version
    assert folder_checksums(v1_folder) == before  # a published version is never modified
    v2_folder = dest / "versions" / v2.version
    assert (dest / "latest").resolve() == v2_folder.resolve()
    card = (v2_folder / "README.md").read_text()
    assert "added 3, changed 1, removed 1, unchanged 10" in card and "rows | 12" in card
    sums = dict(line.split("  ")[::-1] for line in (v2_folder / "SHA256SUMS").read_text().splitlines())
    assert {n: s for n, s in folder_checksums(v2_folder).items() if n in sums} == sums

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    loaded = datasets.load_dataset("parquet", data_files=str(v2_folder / "data" / "*.parquet"), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == 12
    ids = loaded["id"]
    assert "s03" not in ids and {"s10", "s11", "s12"} <= set(ids)
    texts = dict(zip(ids, loaded["text"]))
    assert texts["s00"].startswith("The quick brown fox jumps over the sleeping cat")
    assert isinstance(loaded.features["audio"], datasets.Audio)
    # the card's YAML header points load_dataset(folder) at the shards (rejects.parquet is not the train split)
    assert datasets.load_dataset(str(v2_folder), split="train", cache_dir=str(tmp_path / "hf")).num_rows == 12
    # datasets 3 decodes through librosa (not installed: heavy); soundfile decodes the same bytes here
    for row in loaded.cast_column("audio", datasets.Audio(decode=False)):
        samples, rate = soundfile.read(io.BytesIO(row["audio"]["bytes"]))
        assert rate == 16000 and row["audio"]["path"] == f"{row['id']}.flac"
        assert len(samples) / rate == pytest.approx(row["duration"], abs=0.05) and 1.0 < row["duration"] < 8.0

    # kill -9 of a CLI build (a subprocess) while it writes its shards, then again after its version folder is
    # complete but before `latest` moves: latest stays on v2 both times; a plain CLI rerun pays nothing again
    write_manifest(source, edited + [{"id": "s13", "text": SENTENCES[13], "params": ""}])
    spec_file = tmp_path / "speech.toml"
    spec_file.write_text(SPEC_TOML)
    cli_args = ["dataset", "build", str(spec_file), "--source", str(source), "--dest", str(dest)]
    env = {**os.environ, "VOXMILL_API_KEY": real_server.token, "VOXMILL_BASE_URL": real_server.base_url,
           "VOXMILL_CONCURRENCY": "4", "VOXMILL_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    calls_before = real_server.stats()["generations_total"]

    killed_at = kill_build_at("second-shard", cli_args, env, tmp_path)
    assert killed_at == "second-shard"
    assert store.latest_id() == v2.version and store.version_ids() == [v1.version, v2.version]
    assert [p.name for p in (dest / "versions").glob(".*.partial")], "it died with its version half written"
    assert real_server.stats()["generations_total"] == calls_before + 2  # s13: its clip and its round trip

    orphan = kill_build_at("latest", cli_args, env, tmp_path)
    assert (dest / "versions" / orphan / "manifest.json").exists(), "killed after the version folder was complete"
    assert store.latest_id() == v2.version, "latest never moved"
    assert real_server.stats()["generations_total"] == calls_before + 2, "the first rerun paid nothing again"

    done = subprocess.run([sys.executable, "-m", "voxmill.cli", *cli_args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 billed requests" in done.stdout and "published:" in done.stdout, done.stdout
    assert real_server.stats()["generations_total"] == calls_before + 2
    v3 = store.latest_id()
    assert store.version_ids() == [v1.version, v2.version, v3] and v3 != orphan
    assert store.manifest(v3).rows == 13 and store.manifest(v3).previous == v2.version
    assert sorted(p.name for p in (dest / "versions").iterdir()) == [v1.version, v2.version, v3], \
        "the partial folder and the never-published version were swept"
    assert folder_checksums(v1_folder) == before


SPEC_TOML = """
name = "speech"
kind = "tts"
source = "set by --source"
dest = "set by --dest"
shard_rows = 4

[model]
name = "higgs2p5"

[output]
format = "flac"
sample_rate = 16000

[qc]
roundtrip = true
max_wer = 0.4
"""
#: ``voxmill dataset build`` with one publish step made to wait (so the test can kill -9 the process there):
#: ``second-shard`` before the version's second Parquet shard is written, ``latest`` once the version folder
#: is complete, just before ``latest`` would move. The marker file says the process got there.
PAUSING_BUILD = """
import sys, time
from pathlib import Path
from voxmill.cli import main
from voxmill.dataset import publish

marker, point = Path(sys.argv[1]), sys.argv[2]

def pause(where):
    marker.write_text(where)
    time.sleep(600)

if point == "latest":
    publish.DatasetStore._move_latest = lambda self, version_id: pause(version_id)
else:
    write, shards = publish._parquet_bytes, []
    def pause_before_second(table):
        shards.append(table.num_rows)
        if len(shards) == 2:
            pause(point)
        return write(table)
    publish._parquet_bytes = pause_before_second
sys.exit(main(sys.argv[3:]))
"""


def kill_build_at(point: str, cli_args: list[str], env: dict[str, str], tmp_path: Path) -> str:
    """Run the CLI build in a subprocess, SIGKILL it once it reaches ``point``; what its marker said."""
    marker = tmp_path / f"{point}.reached"
    process = subprocess.Popen([sys.executable, "-c", PAUSING_BUILD, str(marker), point, *cli_args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the build never reached its publish step"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return marker.read_text()
