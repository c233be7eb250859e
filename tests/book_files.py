"""Books built by the tests: EPUBs written with ebooklib (nested TOC, front matter, licence, index), TXT, Markdown."""

from __future__ import annotations

import subprocess
from pathlib import Path

#: varied prose (Whisper loops on repetitive text); each paragraph a few sentences
PARAGRAPHS = [
    "The lighthouse keeper climbed the narrow stairs before dawn. Mr. Hale carried a lantern and a tin of oil.",
    "Rain had fallen all night over the harbour. Fishing boats rocked against the wooden pier, and gulls waited.",
    "At noon the postman arrived with a parcel from the city. Nobody in the village knew who had sent it.",
    "Inside the parcel lay a brass compass, a folded map and a letter written in green ink.",
    "The map showed an island that no chart in the harbour office had ever recorded.",
    "By evening the whole village was talking about the stranger's gift and the island beyond the fog.",
]


def cover_jpeg(path: Path) -> Path:
    """A small JPEG cover made by ffmpeg."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "color=c=navy:s=64x64",
                    "-frames:v", "1", str(path)], check=True)
    return path


def write_epub(path: Path, *, paragraphs: list[str] | None = None, nav: bool = True) -> Path:
    """An EPUB with: a title page (front matter, outside the TOC), a copyright page, Part One → Chapter 1
    (with a sub-section reached by a fragment) and Chapter 2, Part Two → Chapter 3, and an index page
    outside the TOC. ``nav=False`` writes only the EPUB 2 NCX table of contents."""
    from ebooklib import epub

    text = paragraphs or PARAGRAPHS
    book = epub.EpubBook()
    book.set_identifier("voxmill-test-book")
    book.set_title("The Island Beyond the Fog")
    book.set_language("en")
    book.add_author("Ada Writer")
    book.set_cover("cover.jpg", cover_jpeg(path.with_name("cover.jpg")).read_bytes(), create_page=False)

    def page(name: str, title: str, body: str) -> epub.EpubHtml:
        item = epub.EpubHtml(title=title, file_name=name, lang="en")
        item.content = f"<html><body>{body}</body></html>"
        book.add_item(item)
        return item

    title_page = page("title.xhtml", "Title", "<p>The Island Beyond the Fog</p><p>A novel by Ada Writer</p>")
    licence = page("copyright.xhtml", "Copyright",
                   "<h1>Copyright</h1><p>Copyright 2026 Example Press. All rights reserved. No part of this book "
                   "may be reproduced without permission.</p>")
    one = page("one.xhtml", "Chapter 1",
               f"<h1>Chapter 1: The Keeper</h1><p>{text[0]}<sup><a epub:type='noteref' href='#n1'>1</a></sup></p>"
               f"<p>{text[1]}<span epub:type='pagebreak' id='page7' title='7'>7</span></p>"
               f"<h2 id='letter'>The Letter</h2><p>{text[2]}</p>"
               "<aside epub:type='footnote' id='n1'><p>1. A footnote that is not read aloud.</p></aside>")
    two = page("two.xhtml", "Chapter 2", f"<h1>Chapter 2: The Map</h1><p>{text[3]}</p>")
    three = page("three.xhtml", "Chapter 3", f"<h1>Chapter 3: The Island</h1><p>{text[4]}</p><p>{text[5]}</p>")
    index = page("index.xhtml", "Index", "<h1>Index</h1><p>compass, 12</p><p>harbour, 3, 9</p>")
    book.toc = [
        epub.Link("copyright.xhtml", "Copyright", "copyright"),
        (epub.Section("Part One"), [
            epub.Link("one.xhtml", "Chapter 1: The Keeper", "one"),
            epub.Link("one.xhtml#letter", "The Letter", "letter"),
            epub.Link("two.xhtml", "Chapter 2: The Map", "two"),
        ]),
        (epub.Section("Part Two"), [epub.Link("three.xhtml", "Chapter 3: The Island", "three")]),
    ]
    book.add_item(epub.EpubNcx())
    if nav:
        book.add_item(epub.EpubNav())
    book.spine = [title_page, licence, one, two, three, index]
    epub.write_epub(str(path), book)
    return path


GUTENBERG_TXT = """The Project Gutenberg eBook of The Harbour

Title: The Harbour
Author: Ada Writer

*** START OF THE PROJECT GUTENBERG EBOOK THE HARBOUR ***

CONTENTS

 CHAPTER I.     The Keeper
 CHAPTER II.    The Parcel

CHAPTER I.
The Keeper

{p0}

{p1}

Chapter 2

{p2}
Inside the parcel lay a brass compass,
a folded map and a letter.

*** END OF THE PROJECT GUTENBERG EBOOK THE HARBOUR ***

Section 1. General Terms of Use and Redistributing Project Gutenberg electronic works.
"""


def write_gutenberg_txt(path: Path) -> Path:
    """A Project Gutenberg-style text: header, contents page, two chapters, the licence after the end marker."""
    path.write_text(GUTENBERG_TXT.format(p0=PARAGRAPHS[0], p1=PARAGRAPHS[1], p2=PARAGRAPHS[2]))
    return path


MARKDOWN = """---
title: Notes from the Harbour
author: Ada Writer
---

# Notes from the Harbour

A short preface before the first chapter.

## Contents

- [The Keeper](#the-keeper)
- [The Parcel](#the-parcel)

## The Keeper

The lighthouse keeper climbed the **narrow** stairs before dawn.
He carried a [lantern](https://example.com) and a tin of oil.

### A detail

Rain had fallen all night over the `harbour`.

## The Parcel

At noon the postman arrived with a parcel from the _city_.
"""
