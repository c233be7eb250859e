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


#: chapters of the coarse book: (heading as printed, its paragraphs); typographic forms vary on purpose
COARSE_CHAPTERS = [
    ("PREFACE", [PARAGRAPHS[0]]),
    ("INTRODUCTION", [PARAGRAPHS[1]]),
    ("CHAPTER I.", [PARAGRAPHS[2]]),
    ("Chapter II — The Parcel", [PARAGRAPHS[3]]),
    ("CHAPTER III", [PARAGRAPHS[4]]),
    ("Chapter 4", [PARAGRAPHS[5]]),
    ("CHAPTER FIVE. The Fog", ["The fog rolled in from the sea and covered the harbour until nightfall."]),
    ("AFTERWORD", ["The island was never found again, though many sailed to look for it."]),
]
COARSE_LICENCE = [
    "*** END OF THE PROJECT GUTENBERG EBOOK THE HARBOUR ***",
    "Updated editions will replace the previous one. Creating the works from print editions not protected by "
    "U.S. copyright law means that no one owns a United States copyright in these works.",
    "START: FULL LICENSE",
    "THE FULL PROJECT GUTENBERG LICENSE",
    "To protect the Project Gutenberg mission of promoting the free distribution of electronic works, by using "
    "or distributing this work you agree to comply with all the terms of the Full Project Gutenberg License.",
]


def write_coarse_epub(path: Path) -> Path:
    """An EPUB like one built from a plain-text edition: a TOC of two entries. The first, titled after the
    Project Gutenberg header, runs the header, a contents page, the preface, the introduction and chapters
    I–III together; the second, "Chapter 4", runs chapters 4 and 5, the afterword and the licence."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("voxmill-coarse-book")
    book.set_title("The Harbour")
    book.set_language("en")
    book.add_author("Ada Writer")

    def body(chapters: list[tuple[str, list[str]]]) -> str:
        parts = []
        for heading, paragraphs in chapters:
            tag = "h2" if heading.isupper() else "p"  # some headings are marked up, some are plain lines
            parts.append(f"<{tag}>{heading}</{tag}>" + "".join(f"<p>{p}</p>" for p in paragraphs))
        return "".join(parts)

    first = epub.EpubHtml(title="Header", file_name="part1.xhtml", lang="en")
    first.content = (
        "<html><body><p>The Project Gutenberg eBook of The Harbour, by Ada Writer</p>"
        "<p>This ebook is for the use of anyone anywhere at no cost and with almost no restrictions.</p>"
        "<p>*** START OF THE PROJECT GUTENBERG EBOOK THE HARBOUR ***</p>"
        "<p>THE HARBOUR</p><p>by Ada Writer</p>"
        "<h2>CONTENTS</h2><p>PREFACE</p><p>INTRODUCTION</p><p>CHAPTER I. The Keeper</p>"
        "<p>CHAPTER II. The Parcel</p><p>CHAPTER III. The Map</p>"
        f"{body(COARSE_CHAPTERS[:5])}</body></html>"
    )
    second = epub.EpubHtml(title="Chapter 4", file_name="part2.xhtml", lang="en")
    second.content = (f"<html><body>{body(COARSE_CHAPTERS[5:])}"
                      + "".join(f"<p>{p}</p>" for p in COARSE_LICENCE) + "</body></html>")
    for item in (first, second):
        book.add_item(item)
    book.toc = [epub.Link("part1.xhtml", "The Project Gutenberg eBook of The Harbour", "p1"),
                epub.Link("part2.xhtml", "Chapter 4", "p2")]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = [first, second]
    epub.write_epub(str(path), book)
    return path


#: a conversation of three speakers (Mara, Tom, Ben) in narration, attributed in every way the rules know, and
#: one shout from nobody named (the dialogue voice reads it)
DIALOGUE_PARAGRAPHS = [
    "The wind rose over the harbour as the light faded.",
    "“The boats are late,” said Mara. “They should be back by now.”",
    "“Give them an hour,” Tom replied.",
    "“An hour is too long.”",
    "“Then go and look for them, Mara.”",
    "Ben came down the path with a lantern. He asked, “Is it the storm?”",
    "Ben said: “I have seen worse nights than this one.”",
    "“What did you see out there, Ben?” asked Tom.",
    "Nobody answered for a while, and the waves kept breaking on the stones.",
    "A shout came from the end of the pier: “Lights! I can see their lights!”",
]


def write_dialogue_md(path: Path) -> Path:
    """A short Markdown story in which Mara, Tom and Ben talk."""
    body = "\n\n".join(DIALOGUE_PARAGRAPHS)
    path.write_text(f"---\ntitle: Three at the Harbour\nauthor: Ada Writer\n---\n\n# The Storm\n\n{body}\n")
    return path
