"""Book readers: EPUB (nav and NCX tables of contents), Project Gutenberg text, Markdown and HTML."""

from __future__ import annotations

import pytest
from book_files import MARKDOWN, PARAGRAPHS, write_epub, write_gutenberg_txt

from voxmill.book.chapters import parse_indices, select_chapters
from voxmill.book.sources import read_book
from voxmill.errors import ConfigError

EPUB_TITLES = ["Front matter", "Copyright", "Chapter 1: The Keeper", "The Letter", "Chapter 2: The Map",
               "Chapter 3: The Island", "Index"]
EPUB_SKIPS = ["front matter", "licence", None, None, None, None, "index"]


@pytest.mark.parametrize("nav", [True, False], ids=["epub3-nav", "epub2-ncx"])
def test_epub_chapters_follow_the_nested_toc_and_skip_non_narrative(tmp_path, nav):
    book = read_book(write_epub(tmp_path / "book.epub", nav=nav))
    assert (book.title, book.author, book.language) == ("The Island Beyond the Fog", "Ada Writer", "en")
    assert book.cover_type == "jpg" and book.cover[:2] == b"\xff\xd8"
    assert [c.title for c in book.chapters] == EPUB_TITLES
    assert [c.skip_reason for c in book.chapters] == EPUB_SKIPS
    assert [c.depth for c in book.chapters][2:6] == [1, 1, 1, 1]  # under "Part One"/"Part Two"
    one, letter = book.chapters[2], book.chapters[3]
    # the fragment entry splits the document; footnote marker, footnote and page number are not read
    assert one.text == f"Chapter 1: The Keeper\n\n{PARAGRAPHS[0]}\n\n{PARAGRAPHS[1]}"
    assert letter.text == f"The Letter\n\n{PARAGRAPHS[2]}"
    assert "footnote" not in " ".join(c.text for c in book.chapters)


def test_gutenberg_text_headings_contents_and_licence(tmp_path):
    book = read_book(write_gutenberg_txt(tmp_path / "harbour.txt"))
    assert (book.title, book.author) == ("The Harbour", "Ada Writer")
    assert [(c.title, c.skip_reason) for c in book.chapters] == [
        ("Project Gutenberg header", "licence"),
        ("CONTENTS", "contents"),
        ("CHAPTER I. The Keeper", None),
        ("Chapter 2", None),
        ("Project Gutenberg licence", "licence"),
    ]
    # hard-wrapped lines become one paragraph with single spaces
    assert book.chapters[3].paragraphs[-1].endswith("had sent it. Inside the parcel lay a brass compass, a folded map "
                                                    "and a letter.")
    assert [c.index for c in select_chapters(book.chapters)] == [3, 4]


def test_markdown_headings_front_matter_and_inline_markup(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text(MARKDOWN)
    book = read_book(path)
    assert (book.title, book.author) == ("Notes from the Harbour", "Ada Writer")
    assert [(c.title, c.skip_reason) for c in book.chapters] == [
        ("Front matter", "front matter"), ("Contents", "contents"), ("The Keeper", None), ("The Parcel", None),
    ]
    keeper = book.chapters[2]
    assert "**" not in keeper.text and "https" not in keeper.text and "`" not in keeper.text
    assert "climbed the narrow stairs before dawn. He carried a lantern and a tin of oil." in keeper.text
    assert "A detail" in keeper.text  # a deeper heading stays inside its chapter


def test_plain_text_with_hash_headings_and_html(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("# One\n\nFirst words here.\n\n# Two\n\nSecond words here.\n")
    assert [c.title for c in read_book(text).chapters] == ["One", "Two"]
    html = tmp_path / "page.html"
    html.write_text("<html><head><title>x</title><script>var a;</script></head><body><h1>Book</h1>"
                    "<h2>Start</h2><p>Hello <b>there</b>.</p><h2>End</h2><p>Good&nbsp;bye.</p></body></html>")
    book = read_book(html)
    assert book.title == "Book"
    assert [(c.title, c.text) for c in book.chapters] == [
        ("Start", "Start\n\nHello there."), ("End", "End\n\nGood bye."),
    ]


def test_selection_includes_named_skipped_chapters_and_excludes(tmp_path):
    book = read_book(write_epub(tmp_path / "book.epub"))
    assert [c.index for c in select_chapters(book.chapters)] == [3, 4, 5, 6]
    assert [c.index for c in select_chapters(book.chapters, "2,4-5")] == [2, 4, 5]
    assert [c.index for c in select_chapters(book.chapters, exclude="4")] == [3, 5, 6]
    assert parse_indices("1, 3-4,3", 5) == [1, 3, 4]
    with pytest.raises(ConfigError, match="outside 1–7"):
        select_chapters(book.chapters, "6-9")
    with pytest.raises(ConfigError, match="not a number"):
        parse_indices("two", 5)


def test_unreadable_books_are_config_errors_naming_the_file(tmp_path):
    broken = tmp_path / "broken.epub"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="broken.epub.*not a readable EPUB"):
        read_book(broken)
    with pytest.raises(ConfigError, match="unknown type 'pdf'"):
        (tmp_path / "x.pdf").write_bytes(b"%PDF")
        read_book(tmp_path / "x.pdf")
    with pytest.raises(ConfigError, match="does not exist"):
        read_book(tmp_path / "missing.epub")
