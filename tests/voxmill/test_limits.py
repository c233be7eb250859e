"""Input limits: zip bombs, deep or huge markup, huge manifest fields and absurd audio headers are refused,
naming the file and the limit; raising the limit lets a trusted file through."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.hostile_files import deep_html, deep_xml_epub, many_chapters_epub, zip_bomb_epub
from voxmill.book.html_text import html_blocks
from voxmill.book.sources import read_book
from voxmill.limits import InputLimits, LimitExceeded, apply_limit_overrides

_MEASURE = ("import resource, subprocess, sys, time; start = time.monotonic(); "
            "rc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE); "
            "sys.stdout.write(rc.stderr.decode(errors='replace')); "
            "usage = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print('\\nMEASURED', rc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)")


def run_cli_measured(*args: str, env: dict[str, str] | None = None) -> tuple[int, float, float, str]:
    """(exit code, CPU seconds, peak RSS in MB of the CLI process itself, its stderr): a small wrapper process
    waits for the CLI, so RUSAGE_CHILDREN holds only the CLI's own CPU time and peak. CPU time, not wall time:
    what inflating a bomb would cost, whatever else the machine runs (the wall time of a CLI start read 2.25 s
    beside a busy test stage, 2.41 s just after one)."""
    result = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "voxmill.cli", *args],
                            capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)
    text, _, measured = result.stdout.rpartition("MEASURED")
    code, seconds, rss_kb = measured.split()
    return int(code), float(seconds), int(rss_kb) / 1024, text


@pytest.mark.e2e
@pytest.mark.rate  # a CPU-time bound (2 s, the CLI's start included): in the solo lane, with the machine to itself
def test_zip_bomb_epub_is_refused_fast_and_small(tmp_path):
    bomb = zip_bomb_epub(tmp_path / "bomb.epub", mib=2048)  # 2 GiB of zeros in ~2 MB
    assert bomb.stat().st_size < 4 << 20
    code, cpu_s, rss_mb, stderr = run_cli_measured("audiobook", str(bomb), "--list")
    assert code == 2, stderr
    assert "bomb.epub" in stderr and "chapter.xhtml" in stderr and "archive_member_mb" in stderr
    assert "--limit archive_member_mb=" in stderr and "Traceback" not in stderr
    assert cpu_s < 2.0 and rss_mb < 200, (cpu_s, rss_mb)

    # limits on size raised: the inflation is counted while it streams and the ratio check stops it
    code, cpu_s, rss_mb, stderr = run_cli_measured(
        "--limit", "archive_member_mb=4096", "--limit", "archive_mb=4096", "audiobook", str(bomb), "--list")
    assert code == 2, stderr
    assert "inflates more than 200:1" in stderr and "archive_ratio" in stderr, stderr
    assert cpu_s < 2.0 and rss_mb < 200, (cpu_s, rss_mb)


def test_total_inflated_bytes_are_counted_across_members(tmp_path):
    book = many_chapters_epub(tmp_path / "long.epub", chapters=6, kib_each=512)
    with pytest.raises(LimitExceeded, match=r"long\.epub.*inflates past 2 MiB read in all.*archive_mb"):
        read_book(book, InputLimits(archive_mb=2))
    assert len(read_book(book, InputLimits(archive_mb=4)).chapters) == 6  # raised: the book reads


def test_member_ratio_is_checked_while_inflating(tmp_path):
    bomb = zip_bomb_epub(tmp_path / "small-bomb.epub", mib=8)  # under the member cap, ~1000:1
    with pytest.raises(LimitExceeded, match=r"small-bomb\.epub.*chapter\.xhtml.*inflates more than 200:1"):
        read_book(bomb, InputLimits())
    # a trusted file with the ratio raised: read whole, checksum verified
    assert read_book(bomb, InputLimits(archive_ratio=10_000)).title == "Bomb"


def test_deep_html_and_xml_are_refused(tmp_path):
    assert [b.text for b in html_blocks(deep_html(500), max_depth=512)] == ["deep"]
    with pytest.raises(LimitExceeded, match=r"page\.html.*more than 512 deep.*markup_depth"):
        html_blocks(deep_html(100_000), where="page.html")
    page = tmp_path / "deep.html"
    page.write_text(deep_html(2000))
    with pytest.raises(LimitExceeded, match=r"deep\.html.*markup_depth"):
        read_book(page, InputLimits())
    assert read_book(page, InputLimits(markup_depth=4000)).chapters
    # unclosed <p> (common in hand-written HTML) is not nesting
    flat = "<html><body>" + "<p>para " * 5000 + "</body></html>"
    assert len(html_blocks(flat)) == 5000

    book = deep_xml_epub(tmp_path / "deep.epub", 100_000)
    with pytest.raises(LimitExceeded, match=r"deep\.epub.*content\.opf.*more than 512 deep"):
        read_book(book, InputLimits())


def test_text_book_over_the_size_limit_is_refused(tmp_path):
    book = tmp_path / "huge.txt"
    book.write_text("word " * 300_000)  # 1.5 MB
    with pytest.raises(LimitExceeded, match=r"huge\.txt.*over the limit of 1 MiB.*markup_mb"):
        read_book(book, InputLimits(markup_mb=1))


def test_limit_overrides_from_the_command_line(monkeypatch):
    monkeypatch.delenv("VOXMILL_MAX_ARCHIVE_MB", raising=False)
    apply_limit_overrides(["archive_mb=1024"])
    assert InputLimits.from_env().archive_mb == 1024
    monkeypatch.delenv("VOXMILL_MAX_ARCHIVE_MB")
    with pytest.raises(Exception, match="NAME=VALUE with NAME one of"):
        apply_limit_overrides(["bogus=3"])
    with pytest.raises(Exception, match="VOXMILL_MAX_MARKUP_DEPTH='x' is not an integer"):
        InputLimits.from_env({"VOXMILL_MAX_MARKUP_DEPTH": "x"})


def test_measuring_wrapper_reports_the_cli_not_itself():
    """The wrapper's RUSAGE_CHILDREN is its child's own peak: a child that holds 300 MB shows ≥ 300 MB."""
    result = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-c", "x = b'1' * (300 << 20)"],
                            capture_output=True, text=True, timeout=60)
    rss_kb = int(result.stdout.rpartition("MEASURED")[2].split()[2])
    assert rss_kb / 1024 >= 300


def test_manifest_with_a_gigantic_field_is_refused(tmp_path, monkeypatch):
    from voxmill.manifests import ManifestReader

    monkeypatch.setenv("VOXMILL_MAX_FIELD_MB", "1")
    huge = "word " * 300_000  # 1.5 MB
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(f"id,text\na,hello\nb,{huge}\n")
    with pytest.raises(LimitExceeded, match=r"m\.csv' line 3 holds a value of 1 MiB or more.*field_mb"):
        list(ManifestReader(str(csv_path), "tts"))
    jsonl = tmp_path / "m.jsonl"
    with open(jsonl, "w") as handle:  # one line with no end, as a broken export writes it
        handle.write('{"id": "a", "text": "hello"}\n{"id": "b", "text": "' + huge)
    with pytest.raises(LimitExceeded, match=r"m\.jsonl' line 2 .*field_mb"):
        list(ManifestReader(str(jsonl), "tts"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["hello", huge]}), parquet)
    with pytest.raises(LimitExceeded, match=r"m\.parquet' column 'text'.*field_mb"):
        list(ManifestReader(str(parquet), "tts"))
    monkeypatch.setenv("VOXMILL_MAX_FIELD_MB", "2")  # raised: read (the text itself then fails its row)
    assert [item.item_id for item in ManifestReader(str(csv_path), "tts")] == ["a", "b"]


def test_audio_whose_header_claims_an_absurd_duration_fails_its_row(tmp_path, monkeypatch):
    import struct

    from voxmill.audio.measure import check_complete, probe
    from voxmill.limits import InputTooLarge

    honest = tmp_path / "honest.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=f=440:d=1",
                    "-ar", "24000", "-c:a", "libmp3lame", str(honest)], check=True)
    data = bytearray(honest.read_bytes())
    xing = max(data.find(b"Xing"), data.find(b"Info"))
    assert xing > 0 and struct.unpack(">I", data[xing + 4: xing + 8])[0] & 1  # the frame count is present
    data[xing + 8: xing + 12] = struct.pack(">I", 0x7FFFFFFF)  # 2^31 frames: ~14,000 hours
    liar = tmp_path / "liar.mp3"
    liar.write_bytes(data)
    check_complete(probe(honest))
    with pytest.raises(InputTooLarge, match=r"liar\.mp3' declares 14,316.\d h of audio, over the limit of 24 h"):
        check_complete(probe(liar))
    monkeypatch.setenv("VOXMILL_MAX_AUDIO_HOURS", "20000")  # raised: then it is caught as truncated
    with pytest.raises(Exception, match="truncated"):
        check_complete(probe(liar))
