"""Jobs end to end without Prefect, against the local server over loopback: outputs, ledger, resume,
no double billing, bad input, faults, auth."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from manifest_files import write_manifest

from voxmill.audio.measure import measure_file
from voxmill.audio.transcode import OutputSpec
from voxmill.errors import ConfigError
from voxmill.identity import content_hash, file_hash
from voxmill.jobs import JobRequest, run_job
from voxmill.ledger import LEDGER_SCHEMA, read_results
from voxmill.progress import ProgressBoard
from voxmill.quality import word_error_rate
from voxmill.settings import ApiKey, RateLimit, RetryPolicy, Settings


def settings_for(server, tmp_path, *, token=None, concurrency=8, **retry) -> Settings:
    return Settings(
        api_key=ApiKey(token or server.token),
        base_url=server.base_url,
        rate_limit=RateLimit(max_concurrent=concurrency),
        retry=RetryPolicy(**{"initial_backoff": 0.02, "max_backoff": 0.2, **retry}),
        cache_dir=tmp_path / "cache",
    )


SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the old stone bridge.",
    "Bright stars filled the winter sky above the quiet mountain village.",
    "She poured a cup of green tea and opened the morning newspaper.",
]


def test_tts_job_real_engines_mp3_and_ledger(real_server, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [
        {"id": "a", "model": "higgs2p5", "voice": "Linda", "text": SENTENCES[0]},
        {"id": "b", "model": "chatterbox", "voice": "", "text": SENTENCES[1]},
        {"id": "c", "model": "qwen3-tts", "voice": "Vivian", "text": SENTENCES[2]},
    ])
    out = tmp_path / "out"
    request = JobRequest("tts", str(manifest), out, output=OutputSpec(format="mp3", sample_rate=44100))
    summary = run_job(request, settings_for(real_server, tmp_path))
    assert summary.ok and summary.done == 3, summary
    table = pq.read_table(out / "results.parquet")
    assert table.schema.names == LEDGER_SCHEMA.names
    assert table.num_rows == 3
    for row in table.to_pylist():
        assert row["status"] == "done" and row["engine"].startswith("piper:")
        info = measure_file(out / row["output_path"])
        assert info.format == "mp3" and info.sample_rate == 44100 and info.channels == 1
        words = len(row["text"].split())
        assert words * 0.2 < info.duration_s < words * 0.8  # plausible speech duration
        assert row["duration_s"] == pytest.approx(info.duration_s, abs=0.01)
        assert row["sha256"] and row["bytes"] == (out / row["output_path"]).stat().st_size
        assert row["lufs"] is not None and row["peak_dbfs"] is not None
        assert row["attempts"] == 1 and row["http_status"] == 200 and row["credits_remaining"]


def test_rerun_sends_nothing_and_changed_text_redoes_one(make_server, tmp_path):
    server = make_server()
    rows = [{"id": f"i{n}", "text": f"Sentence number {n} about apples."} for n in range(30)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    request = JobRequest("tts", str(manifest), tmp_path / "out", batch_size=7)
    settings = settings_for(server, tmp_path)
    first = run_job(request, settings)
    assert first.done == 30 and server.stats()["generations_total"] == 30
    second = run_job(request, settings)
    assert second.skipped_done == 30 and second.done == 0
    assert server.stats()["generations_total"] == 30
    rows[4]["text"] = "A changed sentence about pears."
    write_manifest(manifest, rows)
    third = run_job(request, settings)
    assert third.done == 1 and third.skipped_done == 29
    stats = server.stats()
    assert stats["generations_total"] == 31
    assert max(stats["generations"].values()) == 1
    table = pq.read_table(tmp_path / "out" / "results.parquet")
    assert table.num_rows == 30  # still one row per item
    assert "pears" in [r["text"] for r in table.to_pylist() if r["id"] == "i4"][0]


def test_identical_items_are_paid_once(make_server, tmp_path):
    server = make_server()
    rows = [{"id": f"d{n}", "text": "Exactly the same words."} for n in range(5)]
    rows.append({"id": "other", "text": "Different words."})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    summary = run_job(JobRequest("tts", str(manifest), tmp_path / "out"), settings_for(server, tmp_path))
    assert summary.ok and summary.done + summary.reused == 6
    assert server.stats()["generations_total"] == 2
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    reused = [r for r in table if r["reused_from"]]
    assert len(reused) == 4
    for row in table:
        assert (tmp_path / "out" / row["output_path"]).exists()


def test_reuse_takes_only_the_output_the_identical_item_made(real_server, tmp_path):
    out = tmp_path / "out"
    settings = settings_for(real_server, tmp_path)
    first = write_manifest(tmp_path / "1.csv", [{"id": "a", "text": SENTENCES[0]}, {"id": "b", "text": SENTENCES[1]}])
    assert run_job(JobRequest("tts", str(first), out), settings).ok
    made = {r["id"]: r for r in read_results(out).to_pylist()}
    old_b = (out / "audio" / "b.wav").read_bytes()
    # b now says what a said: its old file (other speech) is replaced by a's, nothing is sent
    second = write_manifest(tmp_path / "2.csv", [{"id": "a", "text": SENTENCES[0]}, {"id": "b", "text": SENTENCES[0]}])
    real_server.reset_stats()
    summary = run_job(JobRequest("tts", str(second), out), settings)
    assert summary.ok and summary.reused == 1 and real_server.stats()["generations_total"] == 0
    assert file_hash(out / "audio" / "b.wav") == made["a"]["sha256"] != content_hash(old_b)
    # a's file no longer holds what a's row recorded (as when an id is given other text and regenerated):
    # c, identical to a, is sent rather than handed the wrong speech
    (out / "audio" / "a.wav").write_bytes(old_b)
    third = write_manifest(tmp_path / "3.csv", [{"id": "c", "text": SENTENCES[0]}])
    real_server.reset_stats()
    assert run_job(JobRequest("tts", str(third), out), settings).ok
    assert real_server.stats()["generations_total"] == 1
    assert file_hash(out / "audio" / "c.wav") == made["a"]["sha256"]
    assert not list((out / "audio").glob(".*.part"))


def test_a_reused_transcript_is_scored_against_the_reusing_items_own_reference(null_server, tmp_path):
    """Identical audio is transcribed once; the reference text is not part of the request, so each row's WER
    is computed from its own reference, not copied from the row it reuses."""
    from voxmill.audio.formats import wav_bytes
    from voxmill.server import NULL_TRANSCRIPT

    audio = tmp_path / "clip.wav"
    audio.write_bytes(wav_bytes(np.zeros(16000, dtype=np.int16), 16000))
    out, settings = tmp_path / "out", settings_for(null_server, tmp_path)
    columns = ["id", "audio", "reference_text"]
    first = write_manifest(tmp_path / "1.csv", [{"id": "a", "audio": str(audio), "reference_text": "other words"}],
                           columns)
    assert run_job(JobRequest("asr", str(first), out), settings).ok
    second = write_manifest(tmp_path / "2.csv", [{"id": "b", "audio": str(audio), "reference_text": NULL_TRANSCRIPT}],
                            columns)
    null_server.reset_stats()
    summary = run_job(JobRequest("asr", str(second), out), settings)
    assert summary.ok and summary.reused == 1 and null_server.stats()["generations_total"] == 0
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert rows["b"]["reused_from"] == "a" and rows["b"]["transcript"] == rows["a"]["transcript"] == NULL_TRANSCRIPT
    assert rows["a"]["wer"] == pytest.approx(word_error_rate("other words", NULL_TRANSCRIPT), abs=1e-4)
    assert rows["a"]["wer"] > 0.5
    assert rows["b"]["wer"] == 0.0


def test_transient_faults_retry_without_double_billing(make_server, tmp_path):
    server = make_server(error_rate=0.3, seed=3)
    rows = [{"id": f"i{n}", "text": f"Retry test sentence {n}."} for n in range(40)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    summary = run_job(JobRequest("tts", str(manifest), tmp_path / "out"),
                      settings_for(server, tmp_path, max_attempts=10))
    assert summary.ok and summary.done == 40
    stats = server.stats()
    assert stats["generations_total"] == 40 and max(stats["generations"].values()) == 1
    failures_seen = sum(v for k, v in stats["by_status"].items() if k.startswith("5"))
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert sum(r["attempts"] for r in table) == 40 + failures_seen  # every 5xx was retried, nothing else


def test_refused_key_stops_the_run(make_server, tmp_path):
    server = make_server()
    rows = [{"id": f"i{n}", "text": f"Sentence {n}."} for n in range(50)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    summary = run_job(JobRequest("tts", str(manifest), tmp_path / "out", batch_size=5),
                      settings_for(server, tmp_path, token="sk-WRONG-KEY-123", concurrency=2))
    assert summary.stopped and "refused the key" in summary.stopped
    assert not summary.ok
    assert summary.done == 0 and summary.failed < 50
    assert server.stats()["generations_total"] == 0


def test_tts_bad_input_matrix(make_server, tmp_path):
    server = make_server()
    bad = {
        "empty": {"text": ""},
        "blank": {"text": "   "},
        "too-long": {"text": "word " * 2000},
        "unknown-model": {"text": "hi", "model": "no-such-model"},
        "unknown-param": {"text": "hi", "params": json.dumps({"pitch": 3})},
        "out-of-range": {"text": "hi", "model": "chatterbox", "params": json.dumps({"temperature": 99})},
        "voice-and-id": {"text": "hi", "model": "qwen3-tts",
                         "params": json.dumps({"voice": "Vivian", "voice_id": "x"})},
        "missing-ref": {"text": "hi", "voice_ref": str(tmp_path / "nope.wav")},
    }
    rows = [{"id": "good1", "text": "A perfectly good sentence."}]
    rows += [{"id": name, **values} for name, values in bad.items()]
    rows.append({"id": "good2", "text": "Another good sentence."})
    manifest = write_manifest(tmp_path / "m.csv", rows, ["id", "text", "model", "params", "voice_ref"])
    summary = run_job(JobRequest("tts", str(manifest), tmp_path / "out"), settings_for(server, tmp_path))
    assert summary.done == 2 and summary.failed == len(bad) and not summary.ok
    assert server.stats()["generations_total"] == 2
    failures = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "failures.parquet").to_pylist()}
    expected = {
        "empty": "'text' is empty", "blank": "'text' is empty", "too-long": "over the limit",
        "unknown-model": "unknown model", "unknown-param": "unknown parameter 'pitch'",
        "out-of-range": "out of range", "voice-and-id": "cannot be combined", "missing-ref": "does not exist",
    }
    for name, needle in expected.items():
        assert needle in failures[name]["error_message"], failures[name]
        assert f"(id '{name}')" in failures[name]["error_message"]


def test_upfront_errors(make_server, tmp_path):
    server = make_server()
    settings = settings_for(server, tmp_path)
    no_column = write_manifest(tmp_path / "n.csv", [{"id": "x", "words": "a"}])
    with pytest.raises(ConfigError, match="no 'text' column"):
        run_job(JobRequest("tts", str(no_column), tmp_path / "o2"), settings)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,text\n1,d\xe9j\xe0 vu\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        run_job(JobRequest("tts", str(latin), tmp_path / "o3"), settings)
    assert server.stats()["requests"] == 0


def _speech(server, text: str, path, fmt="wav"):
    import httpx

    response = httpx.post(f"{server.base_url}/api/v1/generate", headers=server.headers,
                          files={"model": (None, "higgs2p5"), "text": (None, text)}, timeout=60)
    response.raise_for_status()
    raw = path.with_suffix(".src.wav")
    raw.write_bytes(response.content)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(raw), str(path)], check=True)
    return path


def test_asr_bad_input_matrix_and_conversion(real_server, tmp_path):
    good = _speech(real_server, SENTENCES[0], tmp_path / "good.wav")
    flac = _speech(real_server, SENTENCES[1], tmp_path / "other.flac")  # not an API format: converted
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"\x00not audio at all" * 100)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not audio")
    rows = [
        {"id": "good", "audio": str(good), "reference_text": SENTENCES[0]},
        {"id": "flac", "audio": str(flac), "reference_text": SENTENCES[1]},
        {"id": "missing", "audio": str(tmp_path / "missing.wav")},
        {"id": "empty", "audio": str(empty)},
        {"id": "corrupt", "audio": str(corrupt)},
        {"id": "text", "audio": str(text_file)},
    ]
    manifest = write_manifest(tmp_path / "asr.csv", rows, ["id", "audio", "reference_text"])
    out = tmp_path / "out"
    summary = run_job(JobRequest("asr", str(manifest), out), settings_for(real_server, tmp_path))
    assert summary.done == 2 and summary.failed == 4
    table = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    for name in ("good", "flac"):
        assert table[name]["wer"] <= 0.15, table[name]
        assert word_error_rate(table[name]["transcript"], (out / table[name]["output_path"]).read_text()) == 0
        for ext in ("srt", "vtt", "json"):
            assert (out / "transcripts" / f"{name}.{ext}").stat().st_size > 0
    assert "does not exist" in table["missing"]["error_message"]
    for name in ("empty", "corrupt", "text"):
        assert table[name]["status"] == "failed" and table[name]["error_kind"] == "invalid", table[name]
        assert name in table[name]["error_message"] or table[name]["input"] in table[name]["error_message"]


def test_long_audio_is_split_and_stitched(real_server, tmp_path):
    parts = [_speech(real_server, s, tmp_path / f"p{i}.wav") for i, s in enumerate(SENTENCES)]
    concat = tmp_path / "list.txt"
    concat.write_text("".join(f"file '{p}'\n" for p in parts))
    long_file = tmp_path / "long.wav"
    # the sentences with a second of silence between them
    filter_graph = "".join(f"[{i}:a]apad=pad_dur=1[a{i}];" for i in range(3)) + "[a0][a1][a2]concat=n=3:v=0:a=1"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *sum((["-i", str(p)] for p in parts), []),
                    "-filter_complex", filter_graph, str(long_file)], check=True)
    manifest = write_manifest(tmp_path / "asr.csv", [{"id": "long", "audio": str(long_file),
                                                 "reference_text": " ".join(SENTENCES)}])
    out = tmp_path / "out"
    summary = run_job(JobRequest("asr", str(manifest), out, asr_max_seconds=6), settings_for(real_server, tmp_path))
    assert summary.ok
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["attempts"] >= 2  # more than one request: the file was split
    assert row["wer"] <= 0.15
    segments = json.loads((out / "transcripts" / "long.json").read_text())["segments"]
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts) and segments[-1]["end"] > 6  # offsets carried past the first piece
    assert segments[-1]["end"] <= row["duration_s"] + 0.05


def test_voice_ref_is_uploaded_once_per_model(make_server, tmp_path):
    import numpy as np

    from voxmill.audio.formats import wav_bytes

    server = make_server()
    reference = tmp_path / "narrator.wav"
    reference.write_bytes(wav_bytes((np.sin(np.arange(24000) / 8) * 8000).astype("int16"), 24000))
    rows = [{"id": f"r{n}", "text": f"Cloned line {n}.", "voice_ref": str(reference), "model": m}
            for n, m in enumerate(["higgs2p5", "higgs2p5", "higgs2p5", "chatterbox"])]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    summary = run_job(JobRequest("tts", str(manifest), tmp_path / "out"), settings_for(server, tmp_path))
    assert summary.ok and summary.done == 4
    stats = server.stats()
    assert stats["uploads"] == 2  # one per (reference, model), not one per row
    assert stats["generations_total"] == 4
    # a rerun with a changed reference redoes those rows (the key covers the reference's bytes)
    reference.write_bytes(wav_bytes((np.sin(np.arange(24000) / 5) * 8000).astype("int16"), 24000))
    again = run_job(JobRequest("tts", str(manifest), tmp_path / "out"), settings_for(server, tmp_path))
    assert again.done == 4 and server.stats()["uploads"] == 4


def test_loudness_normalisation_and_fsspec_manifest(real_server, tmp_path):
    import fsspec
    import pyloudnorm  # noqa: F401  (measure_file uses it)

    with fsspec.open("memory://voxmill-test/m.jsonl", "w") as handle:
        handle.write(json.dumps({"id": "loud", "text": SENTENCES[2]}) + "\n")
    out = tmp_path / "out"
    request = JobRequest("tts", "memory://voxmill-test/m.jsonl", out,
                         output=OutputSpec(format="wav", loudness_lufs=-16.0))
    summary = run_job(request, settings_for(real_server, tmp_path))
    assert summary.ok
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    info = measure_file(out / row["output_path"])
    assert info.lufs == pytest.approx(-16.0, abs=1.0) and row["lufs"] == pytest.approx(info.lufs, abs=0.01)
    assert info.peak_dbfs <= -1.0


def test_shards_are_disjoint_stable_and_cover_the_manifest(tmp_path):
    from voxmill.jobs import Shard
    from voxmill.manifests import ManifestReader

    rows = [{"id": f"item-{i}", "text": f"Text {i}."} for i in range(300)]
    forward = write_manifest(tmp_path / "a.csv", rows)
    backward = write_manifest(tmp_path / "b.csv", list(reversed(rows))[:200])  # reordered and shorter
    shards = [Shard(i, 3) for i in range(3)]
    owners = {}
    for item in ManifestReader(str(forward), "tts"):
        holders = [s.index for s in shards if s.holds(item)]
        assert len(holders) == 1
        owners[item.item_id] = holders[0]
    assert set(owners.values()) == {0, 1, 2} and min(list(owners.values()).count(i) for i in range(3)) > 60
    for item in ManifestReader(str(backward), "tts"):
        assert shards[owners[item.item_id]].holds(item), "an item's shard depends only on the item"
    with pytest.raises(ConfigError, match="shard 3 of 3"):
        Shard(3, 3)


def test_a_shard_refuses_a_relative_out_dir(tmp_path):
    from voxmill.jobs import Shard, open_job

    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "text": "Hello."}])
    request = JobRequest(kind="tts", manifest=str(manifest), out_dir=Path("out/rel"), shard=Shard(0, 2))
    with pytest.raises(ConfigError, match="relative; a shard runs on any worker"):
        open_job(request, Settings(api_key=ApiKey("k")))


def test_a_shard_reads_only_its_slice_and_the_slices_cover_the_manifest(tmp_path):
    """Rows with an id outside the shard are skipped before validation; row numbers stay the manifest's."""
    from manifest_files import write_manifest

    from voxmill.jobs import Shard
    from voxmill.manifests import ManifestReader

    rows = [{"id": f"s{i}" if i % 7 else "", "text": f"Shard slice line {i}." if i != 5 else ""} for i in range(60)]
    manifest = str(write_manifest(tmp_path / "m.parquet", rows))
    everything = list(ManifestReader(manifest, "tts"))
    seen: list[tuple[str, int]] = []
    for index in range(3):
        shard = Shard(index, 3)
        sliced = ManifestReader(manifest, "tts", id_filter=shard.holds_id)
        read = list(sliced)
        assert len(read) < len(everything)
        kept = [i for i in read if shard.holds(i)]
        assert kept == [i for i in everything if shard.holds(i)]
        seen += [(i.item_id, i.row) for i in kept]
    assert sorted(seen) == sorted((i.item_id, i.row) for i in everything)


def test_a_batch_waiting_on_one_slow_item_holds_back_no_other_batch(make_server, tmp_path):
    # one worker, batches of 4: the first batch waits SLOW_S on its first item; the other four batches' items are
    # generated meanwhile (counted by the server), not after it (a thread blocked per batch held them back)
    from slow_items import BATCH, ITEMS, MS_PER_CHAR, SLOW_S, watch_generations, write_slow_first_manifest

    server = make_server(tts_ms_per_char=MS_PER_CHAR)
    manifest = write_slow_first_manifest(tmp_path / "m.csv")
    request = JobRequest("tts", str(manifest), tmp_path / "out", batch_size=BATCH, workers=1)
    # a fixed rate (none) and 8 in flight: neither slow start nor the learned in-flight limit paces the short items
    fixed = RateLimit(max_concurrent=8, adaptive=False)
    settings = dataclasses.replace(settings_for(server, tmp_path), rate_limit=fixed)
    summaries = []
    watched = watch_generations(server.stats, lambda: summaries.append(run_job(request, settings)))
    assert summaries[0].ok and summaries[0].done == ITEMS, summaries[0]
    assert watched.ended_s >= SLOW_S
    assert watched.ended_s - watched.others_done_s >= 0.5 * SLOW_S, watched


class _HighWater(ProgressBoard):
    """A progress board that remembers the most items started (``in_flight``) and retrying at once."""

    in_flight_most: int = 0
    retrying_most: int = 0

    def add(self, **deltas: float) -> None:
        super().add(**deltas)
        self.in_flight_most = max(self.in_flight_most, self.in_flight)
        self.retrying_most = max(self.retrying_most, self.retrying)


def test_the_engine_starts_items_as_slots_free_not_every_batch_at_once(make_server, tmp_path):
    # 16 batches of 50 in the engine at once (window 4 × 4 workers), 4 requests in flight: the engine starts at most
    # FEED_PER_SLOT × 4 + FEED_HEADROOM items at a time (before, all 800 became tasks at once), and still every one
    from voxmill.batch import FEED_HEADROOM, FEED_PER_SLOT

    server = make_server(latency_ms=5)
    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"i{n}", "text": f"Item number {n}."} for n in range(800)])
    request = JobRequest("tts", str(manifest), tmp_path / "out", batch_size=50, workers=4)
    fixed = RateLimit(max_concurrent=4, adaptive=False)
    settings = dataclasses.replace(settings_for(server, tmp_path), rate_limit=fixed)
    board = _HighWater()
    summary = run_job(request, settings, progress=board)
    assert summary.ok and summary.done == 800, summary
    assert server.stats()["generations_total"] == 800
    assert FEED_PER_SLOT * 4 <= board.in_flight_most <= FEED_PER_SLOT * 4 + FEED_HEADROOM, board.in_flight_most


def test_items_waiting_out_a_back_off_leave_their_place_to_first_tries(make_server, tmp_path):
    # every item's first try answers 503 and waits 4 s before the next: while they wait, the engine starts the next
    # items, so far more items wait out a back-off at once than the engine starts at once (a straggler holds no place).
    # 4 s, not 1: the items waiting at once are the first tries' pace × the back-off, and beside the suite's parallel
    # stage 4 requests in flight went at ~250/s (249 waiting read against a bound of 272)
    from voxmill.batch import FEED_HEADROOM, FEED_PER_SLOT

    server = make_server(fail_first_n=1)
    items = 4 * (FEED_PER_SLOT * 4 + FEED_HEADROOM)  # enough that the feed's bound, not the manifest, is what's tested
    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"i{n}", "text": f"Item number {n}."} for n in range(items)])
    request = JobRequest("tts", str(manifest), tmp_path / "out", batch_size=100, workers=4)
    settings = dataclasses.replace(settings_for(server, tmp_path, initial_backoff=4.0, max_backoff=4.0),
                                   rate_limit=RateLimit(max_concurrent=4, adaptive=False))
    board = _HighWater()
    summary = run_job(request, settings, progress=board)
    assert summary.ok and summary.done == items, summary
    assert board.retrying_most > FEED_PER_SLOT * 4 + FEED_HEADROOM, board.retrying_most
