"""A book end to end through the batch engine and the local server: structure with the null engine (chapter
marks, skipped sections, coverage, resume after an edit billing only changed chunks), and one short chapter
with the real engines (duration, WER of the speech transcribed back, loudness, subtitles in sync)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from book_files import PARAGRAPHS, write_epub

from voxmill.audio.measure import decode_float32, loudness_lufs, loudness_of, measure_file
from voxmill.audio.split import detect_silences
from voxmill.book.chunking import ChunkLimits, chunk_chapter, rejoin
from voxmill.book.pipeline import AudiobookRequest, make_audiobook
from voxmill.book.qc import QcOptions
from voxmill.book.sources import read_book
from voxmill.jobs import JobRequest, run_job
from voxmill.ledger import read_results
from voxmill.report import describe_out_dir
from voxmill.settings import ApiKey, RetryPolicy, Settings

NARRATIVE = ["Chapter 1: The Keeper", "The Letter", "Chapter 2: The Map", "Chapter 3: The Island"]


def _settings(server) -> Settings:
    return Settings.from_env().with_(api_key=ApiKey(server.token), base_url=server.base_url,
                                     cache_dir=Path("/tmp/voxmill-test-cache"))


def _ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_chapters", "-show_format", "-show_streams", "-of", "json",
                          str(path)], capture_output=True, check=True, text=True).stdout
    return json.loads(out)


def _generations(server) -> int:
    return server.stats()["generations_total"]


def test_book_structure_with_the_null_engine(null_server, tmp_path):
    book_path = write_epub(tmp_path / "island.epub")
    out = tmp_path / "out"
    request = AudiobookRequest(book=str(book_path), out_dir=out, model="chatterbox", chapter_format="mp3")
    result = make_audiobook(request, _settings(null_server))
    assert result.ok, result.headline()
    assert result.skipped == ("1 Front matter (front matter)", "2 Copyright (licence)", "7 Index (index)")

    # every chunk was one billed request, one ledger row
    chunks = pq.read_table(out / "chunks.parquet").to_pylist()
    assert _generations(null_server) == len(chunks) == result.chunks
    assert read_results(out).num_rows == len(chunks)

    # the m4b: a chapter mark per chosen chapter with its TOC title, cover, tags
    probe = _ffprobe(Path(result.m4b))
    assert [c["tags"]["title"] for c in probe["chapters"]] == NARRATIVE
    chapters = pq.read_table(out / "chapters.parquet").to_pylist()
    assert [(c["title"], c["selected"], c["skip_reason"]) for c in chapters] == [
        ("Front matter", False, "front matter"), ("Copyright", False, "licence"),
        *((title, True, None) for title in NARRATIVE), ("Index", False, "index"),
    ]
    chosen = [c for c in chapters if c["selected"]]
    for mark, chapter in zip(probe["chapters"], chosen):
        assert abs(float(mark["start_time"]) - chapter["start_s"]) < 0.002
        assert abs(float(mark["end_time"]) - chapter["end_s"]) < 0.002
    assert abs(float(probe["format"]["duration"]) - chosen[-1]["end_s"]) < 0.1
    assert any(s.get("disposition", {}).get("attached_pic") == 1 for s in probe["streams"])
    tags = probe["format"]["tags"]
    assert (tags["title"], tags["artist"], tags["composer"]) == ("The Island Beyond the Fog", "Ada Writer",
                                                                "chatterbox")

    # chunks re-joined are each chapter's text (item 3's coverage proof, through the whole pipeline)
    book = read_book(book_path)
    for chapter in book.chapters[2:6]:
        mine = sorted((c for c in chunks if c["chapter"] == chapter.index), key=lambda c: c["chunk"])
        expected = chunk_chapter(chapter, ChunkLimits.for_model("chatterbox"))
        assert [c["text"] for c in mine] == [c.text for c in expected]
        assert rejoin(expected) == chapter.text

    # per-chapter files decode as mp3 with the chapter's duration; subtitles beside them
    for chapter in chosen:
        info = measure_file(out / f"{chapter['file']}.mp3")
        assert (info.format, info.sample_rate, info.channels) == ("mp3", 24000, 1)
        assert abs(info.duration_s - chapter["duration_s"]) < 0.08
        srt = (out / f"{chapter['file']}.srt").read_text()
        assert srt.startswith("1\n00:00:00,") and "-->" in srt
        assert (out / f"{chapter['file']}.vtt").read_text().startswith("WEBVTT")


def test_rerun_after_an_edit_bills_only_the_changed_chunk(null_server, tmp_path):
    out = tmp_path / "out"
    book_path = write_epub(tmp_path / "island.epub")
    request = AudiobookRequest(book=str(book_path), out_dir=out, loudness_lufs=None)
    settings = _settings(null_server)
    first = make_audiobook(request, settings)
    assert first.ok and _generations(null_server) == first.chunks

    null_server.reset_stats()
    again = make_audiobook(request, settings)
    assert again.ok and _generations(null_server) == 0 and again.summary.skipped_done == first.chunks

    edited = list(PARAGRAPHS)
    edited[4] = "The map showed an island that nobody in the harbour had ever seen."
    write_epub(book_path, paragraphs=edited)
    null_server.reset_stats()
    after = make_audiobook(request, settings)
    assert after.ok and _generations(null_server) == 1  # only the edited paragraph's chunk
    texts = [row["text"] for row in pq.read_table(out / "chunks.parquet").to_pylist()]
    assert edited[4] in texts and PARAGRAPHS[4] not in texts

    # a new paragraph at the top of chapter 6 moves the chunks after it (new ids, same text): they are
    # reused from the ledger, and only the new paragraph is paid for
    edited[4] = "A gull landed on the roof.</p><p>" + edited[4]
    write_epub(book_path, paragraphs=edited)
    null_server.reset_stats()
    moved = make_audiobook(request, settings)
    assert moved.ok and moved.chunks == first.chunks + 1
    assert _generations(null_server) == 1 and moved.summary.reused == 2
    reused = [r for r in read_results(out).to_pylist() if r["reused_from"] and r["run_id"] == moved.summary.run_id]
    # each copied from the chunk with the same text (the text's hash ends both ids)
    assert len(reused) == 2 and all(r["reused_from"][-8:] == r["id"][-8:] != "" for r in reused)


def test_a_failed_chunk_stops_the_book_and_names_it(make_server, tmp_path):
    server = make_server(error_rate=1.0)
    book_path = write_epub(tmp_path / "island.epub")
    request = AudiobookRequest(book=str(book_path), out_dir=tmp_path / "out", chapters="5")
    settings = _settings(server).with_(retry=RetryPolicy(max_attempts=1))
    result = make_audiobook(request, settings)
    assert not result.ok and result.m4b is None
    assert [item_id[:10] for item_id in result.missing] == ["ch005-0000", "ch005-0001"]
    assert "not done" in result.headline()


def test_qc_retakes_bad_chunks_bills_every_take_and_keeps_the_best(null_server, tmp_path):
    # the null engine speaks silence and transcribes "null engine transcript": every chunk is bad
    book_path = write_epub(tmp_path / "island.epub")
    out = tmp_path / "out"
    request = AudiobookRequest(book=str(book_path), out_dir=out, model="chatterbox", chapters="5,6",
                               loudness_lufs=None, qc=QcOptions(enabled=True, retakes=2))
    result = make_audiobook(request, _settings(null_server))
    assert result.ok and result.qc is not None
    chunks = result.chunks
    stats = null_server.stats()
    # every take of every chunk billed: 3 × chunks distinct speech requests (text + seed); the null engine's
    # audio is the same bytes for every chunk, so each take's transcription job pays for it once
    assert stats["generations_total"] == 3 * chunks + 3 and len(stats["generations"]) == 3 * chunks + 1
    assert result.qc.retakes == 2 * chunks and result.qc.checked == chunks and result.qc.over_threshold == chunks
    takes = pq.read_table(out / "qc.parquet").to_pylist()
    assert sorted({t["take"] for t in takes}) == [0, 1, 2] and len(takes) == 3 * chunks
    # chatterbox has a seed: each retake is a different request (seed = take number)
    seeds = {json.loads(row["params"]).get("seed") for row in read_results(out / "qc" / "take-2").to_pylist()}
    assert seeds == {2}
    rows = pq.read_table(out / "chunks.parquet").to_pylist()
    assert {(r["take"], r["takes"], r["wer"]) for r in rows} == {(0, 3, 1.0)}  # a tie keeps the first take
    status = describe_out_dir(out).text  # what `voxmill status` prints
    assert f"QC: {chunks} chunks transcribed back, mean WER 1.000, {2 * chunks} retakes" in status

    null_server.reset_stats()  # a rerun resumes every take: nothing is paid again
    again = make_audiobook(request, _settings(null_server))
    assert again.ok and null_server.stats()["generations_total"] == 0


@pytest.mark.slow
def test_one_chapter_with_the_real_engines(real_server, tmp_path):
    book_path = write_epub(tmp_path / "island.epub")
    out = tmp_path / "out"
    request = AudiobookRequest(book=str(book_path), out_dir=out, chapters="6", chapter_format="mp3",
                               qc=QcOptions(enabled=True, retakes=1))
    result = make_audiobook(request, _settings(real_server))
    assert result.ok, result.headline()
    chapter = pq.read_table(out / "chapters.parquet").to_pylist()[5]
    words = chapter["words"]
    assert words / 4.5 < result.audio_seconds < words / 1.2 + 3.0  # speech plus pauses and lead/tail

    # loudness of the book within 1 LU of the target, and its true peak (4× oversampled) under the ceiling
    samples = decode_float32(Path(result.m4b), sample_rate=24000, channels=1)
    assert abs(loudness_lufs(samples, 24000) - request.loudness_lufs) <= 1.0
    assert loudness_of(Path(result.m4b), peak="true").peak_db <= request.true_peak_db

    # the chapter file transcribed back through the same engine
    chapter_file = out / f"{chapter['file']}.mp3"
    text = read_book(book_path).chapters[5].text
    manifest = tmp_path / "asr.csv"
    manifest.write_text(f'id,audio,reference_text\nch6,{chapter_file},"{text}"\n')
    summary = run_job(JobRequest(kind="asr", manifest=str(manifest), out_dir=tmp_path / "asr"),
                      _settings(real_server))
    assert summary.ok
    assert read_results(tmp_path / "asr").to_pylist()[0]["wer"] <= 0.15
    # QC: every chunk transcribed back is good, so no retake was made
    assert result.qc.checked == result.chunks and result.qc.retakes == 0
    rows = pq.read_table(out / "chunks.parquet").to_pylist()
    assert all(r["wer"] <= 0.15 and 8 < r["chars_per_s"] < 25 for r in rows), rows

    # subtitles end where the speech ends (the chapter's tail silence starts)
    last_cue_end = _last_cue_end((out / f"{chapter['file']}.srt").read_text())
    speech_end = detect_silences(chapter_file, min_silence_s=0.8, noise_db=-45)[-1][0]
    assert abs(last_cue_end - speech_end) <= 0.5


def _last_cue_end(srt: str) -> float:
    stamp = [line for line in srt.splitlines() if "-->" in line][-1].split("-->")[1].strip()
    hours, minutes, rest = stamp.split(":")
    seconds, millis = rest.split(",")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000
