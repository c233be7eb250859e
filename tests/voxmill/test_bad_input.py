"""The bad-input matrix of docs/reliability.md: each bad manifest or text, and what voxmill does with it.

Jobs run against a null-engine local server over loopback; the server's own counters prove what was
(not) billed.
"""

from __future__ import annotations

import subprocess

import pyarrow.parquet as pq
import pytest
from manifest_files import write_manifest

from voxmill.errors import ConfigError
from voxmill.jobs import JobRequest, run_job
from voxmill.manifests import ManifestReader
from voxmill.settings import ApiKey, RateLimit, RetryPolicy, Settings


def settings_for(server, tmp_path) -> Settings:
    return Settings(
        api_key=ApiKey(server.token),
        base_url=server.base_url,
        rate_limit=RateLimit(max_concurrent=4),
        retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.05),
        cache_dir=tmp_path / "cache",
    )


UNSPEAKABLE = {
    "punct": ("?!... —", "unspeakable", "no letters or digits"),
    "zero-width": ("\u200b\u200b\u200d", "unspeakable", "no letters or digits"),
    "emoji": ("🙂🙂", "unspeakable", "no letters or digits"),
    "nul": ("Hello\x00world.", "forbidden_char", "U+0000 at position 5"),
    "bell": ("Ring\x07", "forbidden_char", "U+0007"),
    "c1": ("Next\x85line", "forbidden_char", "U+0085"),
}


def test_unspeakable_texts_and_duplicate_ids_fail_their_rows_and_bill_nothing(null_server, tmp_path):
    rows = [{"id": "good1", "text": "A good sentence."}]
    rows += [{"id": name, "text": text} for name, (text, _, _) in UNSPEAKABLE.items()]
    rows += [{"id": "tabbed", "text": "Tabs\tand\r\nnewlines are fine."},
             {"id": "good1", "text": "A second row reusing an id."},
             {"id": "good2", "text": "Another good sentence."},
             {"id": "good1", "text": "And a third."}]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    summary = run_job(JobRequest("tts", str(manifest), out), settings_for(null_server, tmp_path))
    assert summary.done == 3 and summary.failed == len(UNSPEAKABLE) + 2
    assert null_server.stats()["generations_total"] == 3  # nothing sent for a bad row
    failures = {r["id"]: r for r in pq.read_table(out / "failures.parquet").to_pylist()}
    for name, (_, kind, needle) in UNSPEAKABLE.items():
        message = failures[name]["error_message"]
        assert failures[name]["error_kind"] == kind and needle in message, message
        assert message.count(f"(id '{name}')") == 1, message  # one prefix, not two
    for row in (9, 11):
        duplicate = failures[f"good1 (duplicate, row {row})"]
        assert duplicate["error_kind"] == "duplicate_id"
        assert f"row {row} (id 'good1')" in duplicate["error_message"]
        assert "already used by row 1" in duplicate["error_message"]
    done = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist() if r["status"] == "done"}
    assert set(done) == {"good1", "tabbed", "good2"} and done["good1"]["text"] == "A good sentence."
    # a rerun keeps the first occurrence done and sends nothing
    again = run_job(JobRequest("tts", str(manifest), out), settings_for(null_server, tmp_path))
    assert again.skipped_done == 3 and again.done == 0
    assert null_server.stats()["generations_total"] == 3


BAD_CSV = {
    "unquoted-comma": (b"id,text\nr1,fine\nr2,Hello, world\n",
                       r"line 3: 3 cells where the header has 2.*double quotes"),
    "short-row": (b"id,text,voice\nr1,fine,Linda\nr2\n", r"line 3: 1 cells where the header has 3"),
    "unterminated-quote": (b'id,text\nr0,ok\nr1,"unterminated quote\nr2,next\nr3,last\n',
                           r"line 3: a quoted value opened on this line is never closed"),
    "stray-quote": (b'id,text\nr1,"quoted"then more\n', r"line 2: not valid CSV"),
    "cp1252-late": (b"id,text\n" + b"".join(b"r%d,plain ascii text number %d\n" % (i, i) for i in range(4000))
                    + b"r4000,caf\xe9\n", r"line 4002 is not UTF-8 text \(byte 0xe9"),
    "header-only": (b"id,text\n", r"has no rows"),
    "empty": (b"", r"is empty: it needs a header row"),
}


@pytest.mark.parametrize("name", list(BAD_CSV))
def test_bad_csv_is_one_error_naming_file_line_and_fix(null_server, tmp_path, name):
    data, pattern = BAD_CSV[name]
    manifest = tmp_path / f"{name}.csv"
    manifest.write_bytes(data)
    with pytest.raises(ConfigError, match=pattern) as info:
        run_job(JobRequest("tts", str(manifest), tmp_path / "out"), settings_for(null_server, tmp_path))
    assert str(manifest) in info.value.message
    assert null_server.stats()["requests"] == 0


def test_cp1252_byte_anywhere_in_a_big_file_is_found(tmp_path):
    # past the first 64 KB block and the first 1 MB block: where the old reader crashed
    lines = [b"id,text\n"] + [b"r%d,%s\n" % (i, b"x" * 60) for i in range(20000)]
    lines.insert(15000, b"bad,na\xefve\n")
    manifest = tmp_path / "big.csv"
    manifest.write_bytes(b"".join(lines))
    assert manifest.stat().st_size > 1 << 20
    with pytest.raises(ConfigError, match="line 15001 is not UTF-8"):
        sum(len(b) for b in ManifestReader(str(manifest), "tts").batches())


def test_quoted_commas_quotes_and_line_breaks_are_kept(tmp_path):
    manifest = tmp_path / "ok.csv"
    manifest.write_bytes(b'\xef\xbb\xbfid,text\r\n007,"Hello, world"\r\n'
                         b'8,"She said ""hi""\nthen left."\r\n\r\n9,end\r\n')
    items = list(ManifestReader(str(manifest), "tts"))
    assert [(i.item_id, i.params["text"], i.row) for i in items] == [
        ("007", "Hello, world", 1), ("8", 'She said "hi"\nthen left.', 2), ("9", "end", 3)]


def _tone(path, seconds: float, *extra: str):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"sine=frequency=300:duration={seconds}",
                    "-ar", "24000", *extra, str(path)], check=True)
    return path


def test_truncated_and_too_short_audio_fail_their_rows(null_server, tmp_path):
    good_wav = _tone(tmp_path / "good.wav", 3)
    good_mp3 = _tone(tmp_path / "good.mp3", 3)
    cut_wav = tmp_path / "cut.wav"
    cut_wav.write_bytes(good_wav.read_bytes()[:1000])  # the header still says 3 s
    cut_mp3 = tmp_path / "cut.mp3"
    cut_mp3.write_bytes(good_mp3.read_bytes()[: good_mp3.stat().st_size * 2 // 3])
    blip = _tone(tmp_path / "blip.wav", 0.05)
    rows = [{"id": name, "audio": str(path)} for name, path in
            [("good-wav", good_wav), ("good-mp3", good_mp3), ("cut-wav", cut_wav), ("cut-mp3", cut_mp3),
             ("blip", blip)]]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    summary = run_job(JobRequest("asr", str(manifest), out), settings_for(null_server, tmp_path))
    assert summary.done == 2 and summary.failed == 3
    assert null_server.stats()["generations_total"] == 2
    failures = {r["id"]: r for r in pq.read_table(out / "failures.parquet").to_pylist()}
    assert failures["cut-wav"]["error_kind"] == "truncated_audio"
    assert "declares 3.000 s but it holds 0.0" in failures["cut-wav"]["error_message"]
    assert failures["cut-mp3"]["error_kind"] == "truncated_audio"
    assert failures["blip"]["error_kind"] == "too_short" and "0.050 s" in failures["blip"]["error_message"]
    for failure in failures.values():
        assert failure["error_message"].startswith("row ") and str(tmp_path) in failure["error_message"]
