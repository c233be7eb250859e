"""Dataset pieces without engines: the spec, QC verdicts, verify refusing a bad version, retention, exports,
ASR builds from a folder of audio and the ``voxmill dataset`` command (null-engine local server)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile

from voxmill.audio.formats import wav_bytes
from voxmill.cli import main
from voxmill.dataset import DatasetSpec, DatasetStore, PublishError, QcThresholds, build_dataset, load_spec
from voxmill.dataset.export import NEMO_FIELDS, export_version
from voxmill.dataset.publish import BuildDiff, PreparedVersion, VersionManifest, new_version_id
from voxmill.dataset.qc import judge, measure_samples
from voxmill.dataset.rows import DatasetRow, rows_table
from voxmill.errors import ConfigError
from voxmill.settings import ApiKey, RateLimit, Settings

REPO = Path(__file__).resolve().parents[2]
NO_FILTERS = QcThresholds(min_duration_s=None, max_clipped_fraction=None, iqr_k=None)


def speech_like(seconds: float, rate: int = 16000, lead: float = 0.0) -> np.ndarray:
    """A 220 Hz tone of ``seconds`` after ``lead`` seconds of silence, (frames, 1) float32."""
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    return np.concatenate([np.zeros(int(lead * rate)), tone]).astype(np.float32).reshape(-1, 1)


def clip_row(folder: Path, row_id: str, text: str, seconds: float, data: bytes | None = None,
             **measures) -> DatasetRow:
    samples = speech_like(seconds)
    data = data if data is not None else wav_bytes((samples[:, 0] * 32767).astype(np.int16), 16000)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{row_id}.wav").write_bytes(data)
    return DatasetRow(id=row_id, text=text, audio_file=str(folder / f"{row_id}.wav"), audio_path=f"{row_id}.wav",
                      duration=seconds,
                      sample_rate=16000, model="higgs2p5", engine="test", params="{}", key=row_id * 4,
                      chars_per_s=len(text) / seconds, s_per_char=seconds / len(text), **measures)


def test_example_spec_parses_and_flags_override():
    spec = load_spec(REPO / "manifests" / "dataset.example.toml")
    assert spec.kind == "tts" and spec.qc.roundtrip and spec.qc.max_wer is not None
    assert spec.source == str(REPO / "manifests" / "demo_tts.csv") and Path(spec.source).exists()
    assert spec.output.format == "flac" and spec.output.sample_rate == 16000
    moved = load_spec(REPO / "manifests" / "dataset.example.toml", source="s3://b/texts.csv", dest="s3://b/ds")
    assert (moved.source, moved.dest) == ("s3://b/texts.csv", "s3://b/ds")


@pytest.mark.parametrize("text, message", [
    ('name="a"\nkind="video"\nsource="x.csv"\ndest="d"', "kind must be 'tts' or 'asr'"),
    ('name="a"\nkind="tts"\nsource="x.csv"\ndest="d"\ncolour=1', "unknown keys ['colour']"),
    ('name="a"\nkind="tts"\nsource="x.csv"\ndest="d"\n[qc]\nmax_snr=3', "[qc]"),
    ('name="a"\nkind="tts"\nsource="x.csv"\ndest="d"\n[model]\nname="whisper_v3_turbo"', "is not a tts model"),
    ('name="a"\nkind="tts"\ndest="d"', "'source' is required"),
    ('name="a"\nkind="tts"\nsource="x.csv"\ndest="d"\n[qc]\nmax_wer=0.3', "needs roundtrip = true"),
])
def test_spec_errors_name_the_problem(tmp_path, text, message):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="spec.toml") as caught:
        load_spec(path)
    assert message in caught.value.message


def test_measures_and_verdicts_thresholds_and_iqr(tmp_path):
    clips = tmp_path / "clips"
    measured = measure_samples(speech_like(1.0, lead=0.5), 16000)
    assert measured.leading_silence_s == pytest.approx(0.5, abs=0.011) and measured.trailing_silence_s < 0.02
    assert measured.clipped_fraction == 0 and -11 < measured.peak_dbfs < -10
    text = "a sentence of about forty characters ok"
    rows = [clip_row(clips, f"r{i}", text, 2.0 + 0.05 * i, wer=0.1) for i in range(9)]
    rows.append(clip_row(clips, "slow", "a sentence of about forty characters ok", 9.0, wer=0.0))
    rows.append(clip_row(clips, "noisy", "a sentence of about forty characters ok", 2.1, wer=0.8))
    failed = DatasetRow(id="gone", text="t", audio_file=None, audio_path=None, duration=None, sample_rate=None,
                        model="higgs2p5", engine=None, params="{}", key="", failure="failed: http: 400")
    verdict = judge(rows_table([*rows, failed]), QcThresholds(max_duration_s=8.0, max_wer=0.5))
    reasons = dict(zip([r.id for r in rows] + ["gone"], verdict.reasons))
    assert [k for k, v in reasons.items() if v] == ["slow", "noisy", "gone"]
    assert reasons["slow"][0] == "duration_s 9 > 8" and "IQR" in reasons["slow"][1]
    assert reasons["noisy"] == ["wer 0.8 > 0.5"] and reasons["gone"] == ["failed: http: 400"]
    low, high = verdict.s_per_char_bounds["default"]
    assert low < 2.0 / 39 < high < 9.0 / 39


def prepared(version_id: str, rows: list[DatasetRow]) -> PreparedVersion:
    table = rows_table(rows)
    manifest = VersionManifest(id=version_id, name="t", created_at="now", previous=None, rows=table.num_rows,
                               rejected=0, hours=0.0, diff=BuildDiff(added=len(rows)), filters_effect={},
                               models=["higgs2p5"], engines=["test"], billed_requests=0, cost=None, spec={})
    return PreparedVersion(lambda: iter([table]), table.num_rows, manifest, "# card\n", frozenset(r.id for r in rows))


def test_verify_refuses_undecodable_audio_and_retention_keeps_latest(tmp_path):
    clips = tmp_path / "clips"
    store = DatasetStore(str(tmp_path / "dest"))
    first = new_version_id(1)
    store.publish(prepared(first, [clip_row(clips, "a", "hello there", 1.0)]), shard_rows=10)
    assert store.latest_id() == first
    broken = prepared(new_version_id(2), [clip_row(clips, "b", "hello again", 1.0, data=b"RIFF not audio")])
    with pytest.raises(PublishError, match="'b'.*does not decode"):
        store.publish(broken, shard_rows=10)
    assert store.latest_id() == first and store.version_ids() == [first]
    assert [p.name for p in (tmp_path / "dest" / "versions").iterdir()] == [first]
    ids = [first] + [new_version_id(n) for n in (2, 3, 4)]
    for version_id in ids[1:]:
        store.publish(prepared(version_id, [clip_row(clips, "a", "hello there", 1.0)]), shard_rows=10)
    assert store.apply_retention(2) == ids[:2]
    assert store.version_ids() == ids[2:] and store.latest_id() == ids[3]


def test_exports_nemo_and_lhotse(tmp_path):
    """Each export is read by its own rules: NeMo's documented manifest fields with durations that match the
    audio, and lhotse itself loading the recordings, supervisions and cuts and reading the audio through them."""
    from lhotse import CutSet, RecordingSet, SupervisionSet, load_manifest

    clips = tmp_path / "clips"
    store = DatasetStore(str(tmp_path / "dest"))
    version = new_version_id(1)
    flac = tmp_path / "b.flac"
    soundfile.write(flac, speech_like(0.5)[:, 0], 16000, format="FLAC")
    (clips / "spk1").mkdir(parents=True)
    rows = [clip_row(clips, "spk1/a", "hello there", 1.0),
            replace(clip_row(clips, "b", "good bye", 0.5), audio_file=str(flac), audio_path="b.flac",
                    params='{"voice": "Linda"}')]
    store.publish(prepared(version, rows), 1)

    nemo = export_version(str(tmp_path / "dest"), tmp_path / "nemo", "nemo")
    lines = [json.loads(line) for line in nemo.files[0].read_text().splitlines()]
    assert [tuple(sorted(e)) for e in lines] == [tuple(sorted(NEMO_FIELDS))] * 2
    assert [(e["text"], e["duration"]) for e in lines] == [("hello there", 1.0), ("good bye", 0.5)]
    for entry in lines:
        assert Path(entry["audio_filepath"]).is_absolute() and isinstance(entry["duration"], float)
        info = soundfile.info(entry["audio_filepath"])
        assert info.frames / info.samplerate == pytest.approx(entry["duration"], abs=1 / info.samplerate)

    lhotse = export_version(str(tmp_path / "dest"), tmp_path / "lhotse", "lhotse", version_id=version)
    recordings, supervisions, cuts = (load_manifest(f) for f in lhotse.files)
    assert isinstance(recordings, RecordingSet) and isinstance(supervisions, SupervisionSet)
    assert isinstance(cuts, CutSet) and len(cuts) == 2
    assert [r.num_samples for r in recordings] == [16000, 8000]
    assert [(s.recording_id, s.text, s.speaker) for s in supervisions] == [
        ("spk1/a", "hello there", "default"), ("b", "good bye", "Linda")]
    for cut in cuts:
        audio = cut.load_audio()  # lhotse reads the exported file (WAV, FLAC) through the manifest
        assert audio.shape == (1, cut.num_samples) and np.abs(audio).max() == pytest.approx(0.3, abs=0.01)
        assert cut.supervisions[0].text in ("hello there", "good bye")
    rebuilt = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    assert sorted(c.recording.id for c in rebuilt) == ["b", "spk1/a"]


def test_asr_build_from_a_folder_of_audio(null_server, tmp_path, monkeypatch):
    audio = tmp_path / "corpus" / "spk1"
    audio.mkdir(parents=True)
    for i in range(3):
        (audio / f"utt{i}.wav").write_bytes(wav_bytes((speech_like(0.5 + i * 0.25)[:, 0] * 32767).astype(np.int16),
                                                      16000))
    (audio / "notes.txt").write_text("not audio")
    spec = DatasetSpec(name="asr", kind="asr", source=str(tmp_path / "corpus" / "**" / "*.wav"),
                       dest=str(tmp_path / "dest"), model="whisper_v3_turbo", qc=NO_FILTERS)
    settings = Settings(api_key=ApiKey(null_server.token), base_url=null_server.base_url,
                        rate_limit=RateLimit(max_concurrent=2), cache_dir=tmp_path / "cache")
    prices = tmp_path / "prices.json"
    prices.write_text('{"whisper_v3_turbo": {"per_request": 0.5, "per_minute": 1.0}}')
    monkeypatch.setenv("VOXMILL_PRICES", str(prices))
    first = build_dataset(spec, settings)
    assert (first.rows, first.billed_requests) == (3, 3)
    assert first.cost == pytest.approx(3 * 0.5 + (0.5 + 0.75 + 1.0) / 60)
    shard = next((tmp_path / "dest" / "versions" / first.version / "data").glob("*.parquet"))
    rows = pq.read_table(shard).to_pylist()
    assert [r["id"] for r in rows] == ["spk1/utt0", "spk1/utt1", "spk1/utt2"]
    assert rows[2]["duration"] == pytest.approx(1.0, abs=0.01) and rows[0]["text"] == "null engine transcript"
    assert rows[1]["audio"]["bytes"] == (audio / "utt1.wav").read_bytes()
    (audio / "utt3.wav").write_bytes((audio / "utt0.wav").read_bytes()[:-2] + b"\x01\x00")
    second = build_dataset(spec, settings)
    assert (second.rows, second.billed_requests, second.diff.added) == (4, 1, 1)
    assert build_dataset(spec, settings).published is False  # nothing changed: no new version


def test_dataset_command_build_list_export(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VOXMILL_API_KEY", raising=False)
    monkeypatch.setenv("VOXMILL_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "texts.csv"
    source.write_text("id,text\na,First line.\nb,Second line.\n")
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "cli"\nkind = "tts"\nsource = "texts.csv"\ndest = "elsewhere"\n'
                    "[qc]\nmin_duration_s = 0.05\niqr_k = 0.5\n")
    dest = tmp_path / "dest"
    assert main(["dataset", "build", str(spec), "--dest", str(dest), "--local", "--local-engine", "null"]) == 0
    out = capsys.readouterr().out
    assert "added 2" in out and "2 billed requests" in out and not (tmp_path / "elsewhere").exists()
    assert main(["dataset", "list", str(dest)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].startswith("*v00001-") and "+2 ~0 -0" in listing[1]
    assert main(["dataset", "export", str(dest), "--format", "nemo", "-o", str(tmp_path / "nemo")]) == 0
    assert "2 rows" in capsys.readouterr().out
    assert main(["dataset", "list", str(tmp_path / "nothing")]) == 1
    assert main(["dataset", "build", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_hf_features_metadata_types_audio(tmp_path):
    clips = tmp_path / "clips"
    store = DatasetStore(str(tmp_path / "dest"))
    version = new_version_id(1)
    store.publish(prepared(version, [clip_row(clips, "a", "hello there", 1.0)]), shard_rows=10)
    shard = next((tmp_path / "dest" / "versions" / version / "data").glob("*.parquet"))
    features = json.loads(pq.read_schema(shard).metadata[b"huggingface"])["info"]["features"]
    assert features["audio"] == {"_type": "Audio"} and features["text"]["dtype"] == "string"
    data = pq.read_table(shard)["audio"][0].as_py()
    samples, rate = soundfile.read(io.BytesIO(data["bytes"]))
    assert rate == 16000 and len(samples) == 16000


def test_a_second_build_of_the_same_dataset_is_refused(tmp_path):
    from voxmill.ledger import Ledger

    spec = DatasetSpec(name="t", kind="tts", source=str(tmp_path / "texts.csv"), dest=str(tmp_path / "dest"),
                       model="higgs2p5", work_dir=str(tmp_path / "work"))
    (tmp_path / "work").mkdir()
    running = Ledger(tmp_path / "work")
    running.lock()
    try:
        with pytest.raises(ConfigError, match="in use by another voxmill run"):
            build_dataset(spec, Settings(api_key=ApiKey("k"), base_url="http://127.0.0.1:9"))
    finally:
        running.close()
    assert not (tmp_path / "dest").exists()
