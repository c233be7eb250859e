"""Spec changes handled by what they change, counted on the server side (null engine): a new output format and
rate is re-derived from the kept masters with 0 calls (ffprobe shows the new format), a QC threshold change
re-filters with 0 calls, one edited text costs 1 call, turning the round trip on costs one ASR call per carried
row and no TTS; ``--plan`` shows each path before anything is sent."""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import soundfile

from voxmill.audio.transcode import OutputSpec
from voxmill.cli import main
from voxmill.dataset import DatasetSpec, DatasetStore, QcThresholds, build_dataset
from voxmill.settings import ApiKey, RateLimit, Settings

TTS, ASR = "higgs2p5", "whisper_v3_turbo"
TEXTS = ["One.", "Second line.", "The third line.", "A much longer fourth line of text."]


def calls(server) -> dict[str, int]:
    return {model: server.stats()["generations_by_model"].get(model, 0) for model in (TTS, ASR)}


def ffprobe(data: bytes, folder: Path) -> dict[str, str]:
    path = folder / "probe.bin"
    path.write_bytes(data)
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate", "-of", "json",
                          str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["streams"][0]


def shard_rows(dest: Path, version: str) -> list[dict]:
    return [r for f in sorted((dest / "versions" / version / "data").glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()]


def test_spec_changes_take_the_cheapest_path(make_server, tmp_path, monkeypatch, capsys):
    # the null engine says every text with the same 0.1 s of silence; its garbage fault gives each clip its own
    # noise, so the round trip's ASR job (keyed by audio bytes) cannot merge clips: QC lets clipping through here
    null_server = make_server(garbage_audio_rate=1.0)
    source = tmp_path / "texts.csv"
    source.write_text("id,text\n" + "".join(f"r{i},{t}\n" for i, t in enumerate(TEXTS)))
    dest = tmp_path / "dest"
    spec = DatasetSpec(name="changes", kind="tts", source=str(source), dest=str(dest), model=TTS,
                       output=OutputSpec(format="flac", sample_rate=16000),
                       qc=QcThresholds(max_clipped_fraction=1.0))
    settings = Settings(api_key=ApiKey(null_server.token), base_url=null_server.base_url,
                        rate_limit=RateLimit(max_concurrent=2), cache_dir=tmp_path / "cache")

    v1 = build_dataset(spec, settings)
    assert calls(null_server) == {TTS: 4, ASR: 0} and v1.rows == 4
    first = shard_rows(dest, v1.version)
    assert ffprobe(first[0]["audio"]["bytes"], tmp_path) == {"codec_name": "flac", "sample_rate": "16000"}
    assert ffprobe(first[0]["master"], tmp_path) == {"codec_name": "pcm_s16le", "sample_rate": "24000"}

    # 1. output format and rate: --plan shows 4 rows re-derived and no call; the build makes none
    null_server.reset_stats()
    spec = replace(spec, output=OutputSpec(format="wav", sample_rate=22050))
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(f'name = "changes"\nkind = "tts"\nsource = "{source}"\ndest = "{dest}"\n'
                         '[output]\nformat = "wav"\nsample_rate = 22050\n[qc]\nmax_clipped_fraction = 1.0\n')
    monkeypatch.setenv("VOXMILL_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["dataset", "build", str(spec_file), "--plan"]) == 0
    shown = capsys.readouterr().out
    assert "spec sections changed: output" in shown and "calls: 0 TTS, 0 ASR" in shown, shown
    assert "rederive              4" in shown and "nothing was sent" in shown, shown
    v2 = build_dataset(spec, settings)
    assert calls(null_server) == {TTS: 0, ASR: 0} and null_server.stats()["requests"] == 0
    assert (v2.rows, v2.rederived, v2.billed_requests) == (4, 4, 0)
    second = {r["id"]: r for r in shard_rows(dest, v2.version)}
    for row in second.values():
        assert ffprobe(row["audio"]["bytes"], tmp_path) == {"codec_name": "pcm_s16le", "sample_rate": "22050"}
        assert row["audio"]["path"].endswith(".wav") and row["sample_rate"] == 22050
        samples, rate = soundfile.read(io.BytesIO(row["audio"]["bytes"]))
        assert len(samples) / rate == row["duration"]
    assert second["r0"]["master"] == first[0]["master"], "the master is what the API returned, kept as it was"

    # 2. a QC threshold: re-filtered, no call (the longest text speaks too fast for its 0.5 s clip)
    spec = replace(spec, qc=replace(spec.qc, max_chars_per_s=50.0))
    v3 = build_dataset(spec, settings)
    assert null_server.stats()["requests"] == 0 and (v3.rows, v3.rejected) == (3, 1)
    assert v3.filters_effect == {"chars_per_s": 1}

    # 3. one text changed: one call
    source.write_text("id,text\n" + "".join(f"r{i},{t}\n" for i, t in enumerate([*TEXTS[:3], "Shorter now."])))
    v4 = build_dataset(spec, settings)
    assert calls(null_server) == {TTS: 1, ASR: 0} and (v4.diff.changed, v4.carried, v4.rows) == (1, 3, 4)

    # 4. the round trip turned on: one ASR call per carried row, no TTS, every row gets its WER
    null_server.reset_stats()
    spec = replace(spec, qc=replace(spec.qc, roundtrip=True))
    v5 = build_dataset(spec, settings)
    assert calls(null_server) == {TTS: 0, ASR: 4} and (v5.transcribed, v5.carried) == (4, 4)
    fifth = shard_rows(dest, v5.version)
    assert all(r["wer"] is not None and r["check_text"] == "null engine transcript" for r in fifth)
    assert build_dataset(spec, settings).published is False, "nothing left to do: no new version"
    assert calls(null_server) == {TTS: 0, ASR: 4}
    assert DatasetStore(str(dest)).latest_id() == v5.version
