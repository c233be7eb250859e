"""Manifests: three formats, precedence of values, bad rows as problems, up-front errors."""

from __future__ import annotations

import json
import subprocess

import pytest
from manifest_files import write_manifest

from voxmill.errors import ConfigError
from voxmill.jobs import JobRequest, run_job
from voxmill.ledger import read_results
from voxmill.manifests import ManifestReader, RunDefaults, find_duplicate_ids, iter_corpus
from voxmill.report import describe_out_dir
from voxmill.settings import ApiKey, RetryPolicy, Settings

ROWS = [
    {"id": "001", "text": "Hello there.", "model": "qwen3-tts", "voice": "Vivian"},
    {"id": "002", "text": "Second row.", "model": "", "voice": ""},
    {"id": "003", "text": "Third row.", "model": "chatterbox", "voice": ""},
]


def write_rows(tmp_path, fmt, rows):
    return write_manifest(tmp_path / f"m.{fmt}", rows)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_reads_every_format_with_defaults(tmp_path, fmt):
    path = write_rows(tmp_path, fmt, ROWS)
    items = list(ManifestReader(str(path), "tts", RunDefaults(model="higgs2p5", params={"voice": "Jack"})))
    assert [i.item_id for i in items] == ["001", "002", "003"]  # leading zeros kept
    assert [i.model for i in items] == ["qwen3-tts", "higgs2p5", "chatterbox"]
    # the row's own values only: catalogue defaults are left to the API (none is marked send_default)
    assert items[0].params == {"text": "Hello there.", "voice": "Vivian"}
    assert items[1].params["voice"] == "Jack"  # empty cell → run default
    # chatterbox has no 'voice' parameter: the run default does not fit that row
    assert items[2].problem is not None and "'voice'" in items[2].problem.message
    assert all(i.problem is None for i in items[:2])


def test_column_beats_params_json_beats_defaults(tmp_path):
    rows = [{"id": "a", "text": "x y z", "model": "qwen3-tts", "voice": "Ryan",
             "params": json.dumps({"voice": "Eric", "instructions": "slowly"})}]
    path = write_rows(tmp_path, "csv", rows)
    (item,) = ManifestReader(str(path), "tts", RunDefaults(params={"instructions": "fast", "voice": "Aiden"}))
    assert item.params["voice"] == "Ryan"
    assert item.params["instructions"] == "slowly"


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"text": ""}, "'text' is empty"),
        ({"text": "   "}, "'text' is empty"),
        ({"text": "x" * 5000}, "over the limit"),
        ({"text": "hi", "model": "nope"}, "unknown model 'nope'"),
        ({"text": "hi", "params": '{"bogus": 1}'}, "unknown parameter 'bogus'"),
        ({"text": "hi", "model": "chatterbox", "params": '{"exaggeration": 9}'}, "out of range"),
        ({"text": "hi", "model": "qwen3-tts", "params": '{"voice": "Vivian", "voice_id": "v1"}'}, "cannot be combined"),
        ({"text": "hi", "params": "{not json"}, "not valid JSON"),
        ({"text": "hi", "model": "whisper_v3_turbo"}, "is a ASR model"),
    ],
)
def test_bad_rows_become_problems_naming_row_and_cause(tmp_path, row, needle):
    rows = [{"id": "good", "text": "A fine row.", "model": "", "params": ""},
            {"id": "bad", "model": "", "params": "", **row}]
    path = write_rows(tmp_path, "csv", rows)
    good, bad = ManifestReader(str(path), "tts")
    assert good.problem is None
    assert bad.problem is not None
    assert needle in bad.problem.message
    assert "row 2" in bad.problem.message and "'bad'" in bad.problem.message


def test_missing_required_column_is_an_upfront_error(tmp_path):
    path = write_rows(tmp_path, "csv", [{"id": "1", "words": "hi"}])
    with pytest.raises(ConfigError, match="no 'text' column"):
        list(ManifestReader(str(path), "tts"))


def test_non_utf8_csv_is_an_upfront_error(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("id,text\n1,caf\xe9 cr\xe8me\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        list(ManifestReader(str(path), "tts"))


def test_duplicate_ids_are_found_and_named(tmp_path):
    rows = [{"id": str(i % 7), "text": f"t{i}"} for i in range(20)]
    path = write_rows(tmp_path, "parquet", rows)
    assert find_duplicate_ids(str(path), "tts") == [str(i) for i in range(7)]
    unique = write_rows(tmp_path, "jsonl", [{"id": str(i), "text": "t"} for i in range(20)])
    assert find_duplicate_ids(str(unique), "tts") == []


def test_asr_rows(tmp_path):
    rows = [{"id": "a", "audio": "x.wav", "language": "", "reference_text": "hello"},
            {"id": "b", "audio": "", "language": "en", "reference_text": ""}]
    path = write_rows(tmp_path, "csv", rows)
    a, b = ManifestReader(str(path), "asr")
    assert a.audio == "x.wav" and a.params == {"language": "en", "response_format": "json"}
    assert a.reference_text == "hello"
    assert b.problem is not None and "'audio' is empty" in b.problem.message


def test_unknown_manifest_type_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown type"):
        list(ManifestReader(str(tmp_path / "m.xlsx"), "tts"))
    with pytest.raises(ConfigError, match="does not exist"):
        list(ManifestReader(str(tmp_path / "missing.csv"), "tts"))


def _tone(path, seconds, volume="1"):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"sine=frequency=300:duration={seconds}",
                    "-af", f"volume={volume}", "-ar", "16000", str(path)], check=True)
    return path


def test_corpus_folder_and_glob_are_sources_in_stable_order(tmp_path):
    corpus = tmp_path / "corpus"
    for name in ["b/2.flac", "b/10.flac", "a/x.wav", "a/notes.txt", "top.mp3", ".hidden/h.wav", "a/deep/y.flac"]:
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_bytes(b"")
    every = ["a/deep/y.flac", "a/x.wav", "b/10.flac", "b/2.flac", "top.mp3"]
    assert [i.item_id for i in ManifestReader(str(corpus), "asr")] == every
    assert [i for i, _ in iter_corpus(f"{corpus}/**/*.flac")] == ["a/deep/y.flac", "b/10.flac", "b/2.flac"]
    assert [i for i, _ in iter_corpus(f"{corpus}/*/*.flac")] == ["b/10.flac", "b/2.flac"]
    assert [i for i, _ in iter_corpus(f"{corpus}/b/[0-9].flac")] == ["2.flac"]
    items = list(ManifestReader(f"{corpus}/**/*.flac", "asr", batch_rows=2))
    assert [i.audio for i in items] == [str(corpus / i.item_id) for i in items]
    with pytest.raises(ConfigError, match="matched no audio files"):
        list(ManifestReader(f"{corpus}/**/*.ogg", "asr"))
    with pytest.raises(ConfigError, match="does not exist"):
        list(ManifestReader(f"{tmp_path}/nowhere/*.wav", "asr"))


def test_corpus_job_carries_qc_columns(null_server, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "s1").mkdir(parents=True)
    _tone(corpus / "s1" / "tone.flac", 2)
    _tone(corpus / "s1" / "hush.flac", 2, volume="0.001")  # about -78 dBFS
    _tone(corpus / "loud.wav", 1)
    settings = Settings(api_key=ApiKey(null_server.token), base_url=null_server.base_url,
                        retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.05), cache_dir=tmp_path / "cache")
    out = tmp_path / "out"
    summary = run_job(JobRequest("asr", f"{corpus}/**/*.flac", out), settings)
    assert summary.done == 2 and summary.failed == 0
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert set(rows) == {"s1/hush.flac", "s1/tone.flac"}
    # the null engine answers the same text for any audio: on near-silence that is a hallucination
    assert rows["s1/hush.flac"]["qc_flags"] == "text_on_silence"
    assert rows["s1/tone.flac"]["qc_flags"] is None and rows["s1/tone.flac"]["peak_dbfs"] > -20
    for row in rows.values():
        assert row["qc_chars_per_s"] == pytest.approx(len(row["transcript"]) / row["duration_s"], abs=0.01)
        assert row["qc_compression_ratio"] > 0
    assert "text_on_silence ×1" in describe_out_dir(out).text
    again = run_job(JobRequest("asr", f"{corpus}/**/*.flac", out), settings)
    assert again.skipped_done == 2 and null_server.stats()["generations_total"] == 2
