"""Read-along EPUB 3: ``--format epub`` writes an EPUB with media overlays beside the m4b; EPUBCheck passes
it, and every sentence's SMIL clip is where the m4b has that sentence (within 0.5 s)."""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from voxmill.audio.measure import decode_float32, measure_file
from voxmill.book.pipeline import AudiobookRequest, make_audiobook
from voxmill.settings import ApiKey, Settings

RATE = 24000
EXAMPLE_BOOK = Path(__file__).resolve().parents[2] / "manifests" / "example_book.md"


def _epubcheck() -> list[str] | None:
    """The epubcheck command: Debian's is a jar run through binfmt, which containers often lack: run it by java."""
    found = shutil.which("epubcheck")
    if found is None:
        return None
    real = Path(found).resolve()
    return ["java", "-jar", str(real)] if real.suffix == ".jar" else [found]


def _seconds(clock: str) -> float:
    hours, minutes, seconds = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _make(server, tmp_path: Path):
    settings = Settings.from_env().with_(api_key=ApiKey(server.token), base_url=server.base_url)
    out = tmp_path / "out"
    result = make_audiobook(AudiobookRequest(book=str(EXAMPLE_BOOK), out_dir=out, chapter_format="epub"), settings)
    assert result.ok, result.headline()
    return result, out, Path(result.m4b).with_suffix(".epub")


def _clips(archive: zipfile.ZipFile, number: int) -> list[tuple[float, float]]:
    smil = archive.read(f"OEBPS/ch{number:03d}.smil").decode()
    return [(_seconds(b), _seconds(e)) for b, e in re.findall(r'clipBegin="([^"]+)" clipEnd="([^"]+)"', smil)]


@pytest.mark.e2e
@pytest.mark.skipif(_epubcheck() is None, reason="epubcheck is not installed (make system-deps)")
def test_readalong_epub_passes_epubcheck(null_server, tmp_path):
    result, out, epub = _make(null_server, tmp_path)
    check = subprocess.run([*_epubcheck(), str(epub)], capture_output=True, text=True, timeout=240)
    assert check.returncode == 0 and "No errors or warnings detected" in check.stdout, check.stdout + check.stderr
    chapters = [c for c in pq.read_table(out / "chapters.parquet").to_pylist() if c["selected"]]
    with zipfile.ZipFile(epub) as archive:
        assert archive.namelist()[0] == "mimetype" and archive.read("mimetype") == b"application/epub+zip"
        for number, chapter in enumerate(chapters, start=1):
            text = archive.read(f"OEBPS/ch{number:03d}.xhtml").decode()
            assert len(_clips(archive, number)) == text.count("<span id=") > 0  # a clip per sentence
            packed = tmp_path / f"packed{number}.m4a"  # the chapter's audio, as the m4b has it
            packed.write_bytes(archive.read(f"OEBPS/audio/ch{number:03d}.m4a"))
            assert abs(measure_file(packed).duration_s - chapter["duration_s"]) < 0.05


@pytest.mark.engines
def test_readalong_clips_start_where_the_m4b_speaks_each_sentence(real_server, tmp_path):
    result, out, epub = _make(real_server, tmp_path)
    chapters = [c for c in pq.read_table(out / "chapters.parquet").to_pylist() if c["selected"]]
    chunks = pq.read_table(out / "chunks.parquet").to_pylist()
    book = decode_float32(Path(result.m4b), sample_rate=RATE, channels=1)[:, 0]
    frame = RATE // 50  # 20 ms energy frames
    energy = np.sqrt(np.mean(book[: book.size // frame * frame].reshape(-1, frame) ** 2, axis=1))
    speaking = energy > 0.1 * np.percentile(energy, 95)
    checked = 0
    with zipfile.ZipFile(epub) as archive:
        for number, chapter in enumerate(chapters, start=1):
            clips = _clips(archive, number)
            offset = chapter["start_s"] + 1024 / RATE  # the chapter's speech in the m4b starts after AAC priming
            for chunk in (c for c in chunks if c["chapter"] == chapter["chapter"]):
                # the clip of the chunk's first sentence, in the m4b, lands where the speech of that chunk begins
                begin = min((b for b, _ in clips if abs(b - chunk["start_s"]) < 0.002), default=None)
                assert begin is not None, chunk
                at = offset + begin
                onset = next(i for i in range(int((at - 0.5) * 50), len(speaking)) if speaking[i]) / 50
                assert abs(onset - at) <= 0.5, (chunk["text"][:40], at, onset)
                checked += 1
            # and every sentence's clip lies inside the chapter's span in the m4b
            assert all(chapter["start_s"] <= offset + b < offset + e <= chapter["end_s"] + 0.01 for b, e in clips)
    assert checked == len(chunks)
