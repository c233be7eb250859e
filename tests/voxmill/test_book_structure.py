"""Structure that survives a coarse table of contents: entries split at the headings in their text, only the
boilerplate skipped, and ``--list`` warning about anything large that is skipped."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from book_files import COARSE_CHAPTERS, COARSE_LICENCE, write_coarse_epub

from voxmill.book.chapters import Section, number_chapters
from voxmill.book.html_text import Block
from voxmill.book.pipeline import AudiobookRequest, make_audiobook
from voxmill.book.sources import read_book
from voxmill.book.structure import RawSection, heading_family, refine_sections
from voxmill.cli import main
from voxmill.settings import ApiKey, Settings

NARRATIVE = [heading for heading, _ in COARSE_CHAPTERS]


def test_a_coarse_toc_is_split_into_every_chapter_and_only_boilerplate_is_skipped(tmp_path):
    book = read_book(write_coarse_epub(tmp_path / "harbour.epub"))
    chosen = [c for c in book.chapters if c.skip_reason is None]
    assert [c.title for c in chosen] == NARRATIVE
    for chapter, (heading, paragraphs) in zip(chosen, COARSE_CHAPTERS):
        assert chapter.paragraphs == [heading, *paragraphs]  # each chapter holds exactly its own text
    skipped = {c.title: c.skip_reason for c in book.chapters if c.skip_reason}
    assert skipped == {"The Project Gutenberg eBook of The Harbour": "licence", "Front matter": "front matter",
                       "CONTENTS": "contents", "Project Gutenberg licence": "licence"}
    licence = next(c for c in book.chapters if c.title == "Project Gutenberg licence")
    assert licence.paragraphs == COARSE_LICENCE
    contents = next(c for c in book.chapters if c.title == "CONTENTS")
    assert "CHAPTER I. The Keeper" in contents.paragraphs and len(contents.paragraphs) == 6


@pytest.mark.parametrize(("text", "family"), [
    ("Chapter 7 — The Storm", "chapter"), ("CHAPTER VII.", "chapter"), ("Chapter the Third", "chapter"),
    ("PART TWO", "chapter"), ("Book 3: The Return", "chapter"), ("XIV.", "numeral"), ("IV. The Storm", "numeral"),
    ("Preface", "named"), ("INTRODUCTION.", "named"), ("Afterword", "named"), ("Contents", "boilerplate"),
    ("*** END OF THE PROJECT GUTENBERG EBOOK X ***", "boilerplate"),
    ("I went home.", None), ("Chapter and verse were quoted at length by the old vicar to all of us there.", None),
    ("The chapter ended.", None),
])
def test_heading_forms(text, family):
    assert heading_family(Block(text)) == family


def _prose(n: int, word: str = "sea") -> list[Block]:
    return [Block(f"The {word} was calm that morning and the boats went out early to fish.") for _ in range(n)]


def test_one_headed_chapter_with_numbered_subsections_is_not_split():
    entry = RawSection("Chapter 3", [Block("Chapter 3", 1), Block("I", 2), *_prose(3), Block("II", 2), *_prose(3)])
    assert [s.title for s in refine_sections([entry])] == ["Chapter 3"]


def test_a_large_entry_titled_licence_that_reads_as_prose_is_kept():
    prose = [b.text for b in _prose(200)]  # 2,800 words
    licence = ["Project Gutenberg licence terms: copyright, trademark and redistribution."] * 3
    chapters = number_chapters([Section("The Project Gutenberg eBook of The Sea", prose),
                                Section("Project Gutenberg licence", licence)])
    assert [c.skip_reason for c in chapters] == [None, "licence"]


def _settings(server) -> Settings:
    return Settings.from_env().with_(api_key=ApiKey(server.token), base_url=server.base_url)


def test_list_warns_about_large_skips_and_the_book_has_every_chapter(tmp_path, capsys, null_server, monkeypatch):
    path = write_coarse_epub(tmp_path / "harbour.epub")
    assert main(["audiobook", str(path), "--list"]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    # in a book this small, the header (13%) and the licence (29%) are large: each is named with its reason
    assert len(warnings) == 2 and all("is skipped as licence" in w for w in warnings)
    assert "'The Project Gutenberg eBook of The Harbour' (37 words, 13% of the book)" in warnings[0]
    assert "'Project Gutenberg licence' (83 words, 29% of the book)" in warnings[1]

    result = make_audiobook(AudiobookRequest(book=str(path), out_dir=tmp_path / "out", loudness_lufs=None),
                            _settings(null_server))
    assert result.ok and result.chapters == len(NARRATIVE)
    chapters = pq.read_table(tmp_path / "out" / "chapters.parquet").to_pylist()
    assert [c["title"] for c in chapters if c["selected"]] == NARRATIVE
