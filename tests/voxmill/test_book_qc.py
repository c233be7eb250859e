"""QC that finds the bad sentence: transcripts aligned word by word, per-sentence WER and the longest run of
wrong words; a garbled stretch (a server fault) is retaken, only there, and the better take kept; chunks
still bad after the retakes fail the run."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from book_files import PARAGRAPHS, write_epub

from voxmill.book.align import align
from voxmill.book.pipeline import AudiobookRequest, make_audiobook
from voxmill.book.qc import QcOptions, retake_params
from voxmill.cli import main
from voxmill.settings import ApiKey, Settings

TEXT = "The lighthouse keeper climbed the stairs. Mr. Hale carried a lantern and a tin of oil. Rain fell all night."


def test_alignment_finds_the_garbled_sentence_that_the_chunk_wer_hides():
    clean = align(TEXT, "the lighthouse keeper climbed the stairs mr hale carried a lantern and a tin of oil rain fell "
                        "all night")
    assert (clean.wer, clean.longest_run, clean.run_text) == (0.0, 0, "")
    garbled = align(TEXT, "the lighthouse keeper climbed the stairs oh so far out away and a tin of oil rain fell "
                          "all night")
    assert garbled.wer == 0.25 and garbled.longest_run == 5  # "mr hale carried a lantern" → "oh so far out away"
    assert garbled.run_text == "mr hale carried a lantern"
    assert [round(s.wer, 2) for s in garbled.sentences] == [0.0, 0.5, 0.0]
    assert garbled.worst.sentence == "Mr. Hale carried a lantern and a tin of oil."
    dropped = align(TEXT, "the lighthouse keeper climbed the stairs rain fell all night")
    assert dropped.longest_run == 10 and dropped.sentences[1].errors == 10
    assert align(TEXT, "").wer == 1.0


def test_a_retake_varies_what_the_model_lets_it_vary():
    assert retake_params("chatterbox", {"voice_id": "v"}, 2) == {"voice_id": "v", "seed": 2}
    assert retake_params("higgs2p5", {"voice": "Linda"}, 1) == {"voice": "Linda", "sampling": {"temperature": 0.85}}
    assert retake_params("qwen3-tts", {"voice": "Ryan"}, 1) == {"voice": "Ryan"}  # nothing to vary: asked again


def _settings(server) -> Settings:
    return Settings.from_env().with_(api_key=ApiKey(server.token), base_url=server.base_url)


@pytest.mark.engines
def test_only_the_garbled_chunk_is_retaken_and_the_better_take_kept(real_server, tmp_path):
    book = write_epub(tmp_path / "island.epub")
    request = AudiobookRequest(book=str(book), out_dir=tmp_path / "out", model="chatterbox", chapters="4,5",
                               loudness_lufs=None, qc=QcOptions(enabled=True, retakes=2))
    with real_server.faults(garble_text="compass", garble_first_n=1):
        result = make_audiobook(request, _settings(real_server))
    assert result.ok and not result.qc_failed, result.headline()
    takes = pq.read_table(tmp_path / "out" / "qc.parquet").to_pylist()
    first = {t["id"]: t for t in takes if t["take"] == 0}
    garbled = [i for i, t in first.items() if "compass" in PARAGRAPHS[3] and "compass" in (t["worst_sentence"] or "")]
    bad = [i for i, t in first.items() if t["longest_run"] >= 4]
    assert bad == garbled and len(bad) == 1, first  # the garbled chunk, and only it, was bad
    retaken = [t for t in takes if t["take"] > 0]
    assert [t["id"] for t in retaken] == bad and retaken[0]["longest_run"] < 4  # retaken once; the retake is good
    assert result.qc.retakes == 1
    kept = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "chunks.parquet").to_pylist()}
    assert kept[bad[0]]["take"] == 1 and kept[bad[0]]["audio_path"].startswith("qc/take-1/")
    assert all(r["take"] == 0 for i, r in kept.items() if i != bad[0])


@pytest.mark.engines
def test_chunks_still_bad_after_the_retakes_fail_the_run(real_server, tmp_path, monkeypatch, capsys):
    book = write_epub(tmp_path / "island.epub")
    monkeypatch.setenv("VOXMILL_API_KEY", real_server.token)
    monkeypatch.setenv("VOXMILL_BASE_URL", real_server.base_url)
    with real_server.faults(garble_text="compass", garble_first_n=10):
        code = main(["audiobook", str(book), "-o", str(tmp_path / "out"), "--model", "chatterbox", "--chapters", "5",
                     "--qc", "--retakes", "1", "--loudness", "off", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1, out
    still = [line for line in out.splitlines() if "STILL BAD" in line]
    assert len(still) == 1 and "wrong in a row" in still[0], out
    assert "1 chunks still bad after 1 retakes" in out
    rows = pq.read_table(tmp_path / "out" / "island" / "chunks.parquet").to_pylist()
    assert [r["qc_bad"] for r in rows].count(True) == 1


@pytest.mark.engines
def test_a_swapped_voice_is_found_by_its_pitch_and_retaken(real_server, tmp_path):
    book = write_epub(tmp_path / "island.epub")
    # words are not judged here (whisper tiny hears "harbor", "layer"…): only the voice
    request = AudiobookRequest(book=str(book), out_dir=tmp_path / "out", model="chatterbox", chapters="3-6",
                               loudness_lufs=None, qc=QcOptions(enabled=True, retakes=1, max_wer=1.0, max_run=99))
    with real_server.faults(garble_text="compass", garble_mode="voice", garble_first_n=1):
        result = make_audiobook(request, _settings(real_server))
    assert result.ok and not result.qc_failed, result.headline()
    takes = pq.read_table(tmp_path / "out" / "qc.parquet").to_pylist()
    first = {t["id"]: t for t in takes if t["take"] == 0}
    chunks = pq.read_table(tmp_path / "out" / "chunks.parquet").to_pylist()
    swapped = [c["id"] for c in chunks if "compass" in c["text"]]
    assert len(swapped) == 1 and first[swapped[0]]["drift_semitones"] > 9  # an octave up, measured
    assert all(abs(t["drift_semitones"]) < 6 for i, t in first.items() if i not in swapped), first
    retaken = [t for t in takes if t["take"] == 1]
    assert [t["id"] for t in retaken] == swapped and abs(retaken[0]["drift_semitones"]) < 6 and retaken[0]["kept"]
