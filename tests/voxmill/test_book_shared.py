"""Identity by content: a chunk made once under an output root is never billed again, whatever the book's
file is called or wherever it moved (counted on the server)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
from book_files import PARAGRAPHS, write_epub

from voxmill.audio.measure import measure_file
from voxmill.book.pipeline import AudiobookRequest, make_audiobook
from voxmill.ledger import read_results
from voxmill.settings import ApiKey, Settings


def _settings(server) -> Settings:
    return Settings.from_env().with_(api_key=ApiKey(server.token), base_url=server.base_url,
                                     cache_dir=Path("/tmp/voxmill-test-cache"))


def test_a_renamed_copy_bills_nothing_and_an_edit_bills_one_chunk(null_server, tmp_path):
    root = tmp_path / "books"
    original = write_epub(tmp_path / "island.epub")
    settings = _settings(null_server)
    first = make_audiobook(AudiobookRequest(book=str(original), out_dir=root / "island", loudness_lufs=None),
                           settings)
    assert first.ok and null_server.stats()["generations_total"] == first.chunks > 3

    # the same book, renamed and moved elsewhere, into its own folder under the same root
    moved = tmp_path / "elsewhere" / "The Island (copy).epub"
    moved.parent.mkdir()
    shutil.copy(original, moved)
    null_server.reset_stats()
    copy = make_audiobook(AudiobookRequest(book=str(moved), out_dir=root / "copy", loudness_lufs=None), settings)
    assert copy.ok and null_server.stats()["generations_total"] == 0
    assert copy.shared_chunks == first.chunks
    rows = read_results(root / "copy").to_pylist()
    assert len(rows) == first.chunks and all(r["reused_from"].startswith("island/") for r in rows)
    for row in rows:  # the adopted audio lives in the copy's own folder and decodes
        assert measure_file(root / "copy" / row["output_path"]).duration_s > 0
    assert measure_file(Path(copy.m4b)).duration_s == measure_file(Path(first.m4b)).duration_s

    # one word edited in a third copy: exactly one chunk billed
    edited = list(PARAGRAPHS)
    edited[2] = edited[2].replace("postman", "courier")
    third = write_epub(tmp_path / "island-edited.epub", paragraphs=edited)
    null_server.reset_stats()
    result = make_audiobook(AudiobookRequest(book=str(third), out_dir=root / "edited", loudness_lufs=None), settings)
    assert result.ok and null_server.stats()["generations_total"] == 1
    assert result.shared_chunks == first.chunks - 1
    texts = [r["text"] for r in pq.read_table(root / "edited" / "chunks.parquet").to_pylist()]
    assert any("courier" in t for t in texts)

    # other parameters are another identity: a different voice bills every chunk again
    null_server.reset_stats()
    other = make_audiobook(AudiobookRequest(book=str(moved), out_dir=root / "other-voice", loudness_lufs=None,
                                            params={"voice": "Jack"}), settings)
    assert other.ok and other.shared_chunks == 0
    assert null_server.stats()["generations_total"] == first.chunks
