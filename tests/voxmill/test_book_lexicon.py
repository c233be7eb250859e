"""Pronunciation lexicon: TOML/CSV files, the book's entries before the global ones, applied before chunks
are keyed, so changing one entry re-bills exactly the chunks holding that word (counted on the server)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from book_files import PARAGRAPHS, write_epub

from voxmill.book.lexicon import load_lexicon, resolve_lexicon
from voxmill.book.pipeline import AudiobookRequest, make_audiobook
from voxmill.cli import main
from voxmill.errors import ConfigError
from voxmill.settings import ApiKey, Settings


def test_word_and_regex_entries_book_first(tmp_path, monkeypatch):
    book = tmp_path / "island.epub"
    (tmp_path / "island.lexicon.toml").write_text(
        '[words]\nHale = "Hayle"\n"Mr." = "Mister"\n\n[[regex]]\npattern = \'(\\d+)mm\'\nsay = \'\\1 millimetres\'\n')
    glob = tmp_path / "global.csv"
    glob.write_text("word,say\nhale,Hail\nharbour,harbor\n")
    monkeypatch.setenv("VOXMILL_LEXICON", str(glob))
    lexicon = resolve_lexicon(book, None, None)
    assert lexicon.describe() == "5 entries (island.lexicon.toml 3, global.csv 2)"
    said = lexicon.apply("Mr. Hale measured 35mm of rain in the harbour; Halestorm and harbours stayed.")
    assert said == "Mister Hayle measured 35 millimetres of rain in the harbor; Halestorm and harbours stayed."


@pytest.mark.parametrize(("name", "content", "message"), [
    ("bad.toml", "[words]\nx = 3\n", "[words] 'x'"),
    ("bad.toml", "[[regex]]\npattern = '('\nsay = 'x'\n", "not a valid regex"),
    ("bad.toml", "[sounds]\n", "unknown table"),
    ("bad.csv", "word,spoken\nx,y\n", "needs 'say'"),
    ("bad.csv", "word,regex,say\nx,y,z\n", "line 2: give either"),
])
def test_bad_lexicons_name_the_file_and_entry(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")) as caught:
        load_lexicon(path)
    assert str(path) in str(caught.value)


def _settings(server) -> Settings:
    return Settings.from_env().with_(api_key=ApiKey(server.token), base_url=server.base_url)


def test_changing_one_entry_rebills_only_the_chunks_with_that_word(null_server, tmp_path, capsys, monkeypatch):
    book = write_epub(tmp_path / "island.epub")
    lexicon = tmp_path / "island.lexicon.toml"
    lexicon.write_text('[words]\nharbour = "harbor"\ncompass = "kum-pass"\n')
    out = tmp_path / "out"
    settings = _settings(null_server)
    first = make_audiobook(AudiobookRequest(book=str(book), out_dir=out / "island", loudness_lufs=None), settings)
    assert first.ok and null_server.stats()["generations_total"] == first.chunks
    rows = pq.read_table(out / "island" / "chunks.parquet").to_pylist()
    respelled = [r for r in rows if r["spoken"]]
    assert respelled and all("harbor" in r["spoken"] or "kum-pass" in r["spoken"] for r in respelled)
    assert all("harbour" not in (r["spoken"] or r["text"]) for r in rows)
    with_harbour = sum(1 for r in rows if "harbour" in r["text"].lower())
    assert with_harbour >= 2 and "harbour" in PARAGRAPHS[1]  # printed text (subtitles) keeps the spelling

    lexicon.write_text('[words]\nharbour = "har-bur"\ncompass = "kum-pass"\n')  # one entry changed
    monkeypatch.setenv("VOXMILL_API_KEY", null_server.token)
    monkeypatch.setenv("VOXMILL_BASE_URL", null_server.base_url)
    assert main(["audiobook", str(book), "--list", "-o", str(out)]) == 0
    listing = capsys.readouterr().out
    assert f"lexicon: 2 entries (island.lexicon.toml 2); respells {len(respelled)} of {first.chunks} chunks" in listing
    assert f"to send: {with_harbour} of {first.chunks} chunks" in listing

    null_server.reset_stats()
    again = make_audiobook(AudiobookRequest(book=str(book), out_dir=out / "island", loudness_lufs=None), settings)
    assert again.ok and null_server.stats()["generations_total"] == with_harbour
    spoken = [r["spoken"] or r["text"] for r in pq.read_table(out / "island" / "chunks.parquet").to_pylist()]
    assert sum("har-bur" in s for s in spoken) == with_harbour and Path(again.m4b).exists()
