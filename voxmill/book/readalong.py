"""Read-along EPUB 3: the book's text with its audio, synchronised sentence by sentence (media overlays, SMIL).

Each chapter is an XHTML document whose sentences are ``<span id="sNNN">`` elements, a SMIL document with one
``<par>`` per sentence (the span, and the chapter's audio from ``clipBegin`` to ``clipEnd``), and the chapter's
own AAC file (the one the m4b was joined from, so the EPUB's audio is the m4b's, frame for frame). Sentence
times are the subtitle cues' (:func:`voxmill.book.captions.chapter_cues`): exact at every chunk boundary,
shared by length within a chunk. The package follows EPUB 3.3 and its Media Overlays; ``epubcheck`` passes it.
"""

from __future__ import annotations

import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from voxmill.audio.transcode import atomic_output
from voxmill.book.assemble import PlacedChunk
from voxmill.book.captions import sentence_times
from voxmill.identity import content_hash

ACTIVE_CLASS = "-epub-media-overlay-active"


@dataclass(frozen=True)
class ReadAlongChapter:
    """One chapter: its title, where its chunks sit in its audio, the audio file and how long it is."""

    title: str
    placed: Sequence[PlacedChunk]
    audio: Path
    duration_s: float


@dataclass(frozen=True)
class Clip:
    """A sentence of a chapter: its span id, text, paragraph and where it is in the chapter's audio."""

    span_id: str
    text: str
    paragraph: int
    begin_s: float
    end_s: float


def sentence_clips(placed: Sequence[PlacedChunk]) -> list[Clip]:
    """Every sentence of a chapter with its clip (the subtitles' timings)."""
    clips: list[Clip] = []
    floor = 0.0
    for number, t in enumerate(sentence_times(placed), start=1):
        # a clip must not be empty: a sentence that took no time (silence trimmed away) gets one millisecond
        begin = max(round(t.start_s, 3), floor)
        end = max(round(t.end_s, 3), begin + 0.001)
        clips.append(Clip(f"s{number:05d}", t.text, t.paragraph, begin, end))
        floor = end
    return clips


def _clock(seconds: float) -> str:
    """A SMIL clock value, ``h:mm:ss.fff``."""
    millis = round(max(0.0, seconds) * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def _xhtml(title: str, clips: Sequence[Clip], language: str) -> str:
    paragraphs: list[list[Clip]] = []
    for clip in clips:
        if not paragraphs or paragraphs[-1][0].paragraph != clip.paragraph:
            paragraphs.append([])
        paragraphs[-1].append(clip)
    body = "\n".join("<p>" + " ".join(f'<span id="{c.span_id}">{escape(c.text)}</span>' for c in p) + "</p>"
                     for p in paragraphs)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html>\n'
            f'<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops" '
            f'lang={quoteattr(language)} xml:lang={quoteattr(language)}>\n'
            f"<head><title>{escape(title)}</title><link rel=\"stylesheet\" type=\"text/css\" href=\"style.css\"/>"
            f"</head>\n<body>\n<section id=\"chapter\" epub:type=\"chapter\">\n<h1>{escape(title)}</h1>\n{body}\n"
            "</section>\n"
            "</body>\n</html>\n")


def _smil(document: str, audio: str, clips: Sequence[Clip]) -> str:
    pars = "\n".join(f'<par id="p{c.span_id}"><text src="{document}#{c.span_id}"/>'
                     f'<audio src="{audio}" clipBegin="{_clock(c.begin_s)}" clipEnd="{_clock(c.end_s)}"/></par>'
                     for c in clips)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<smil xmlns="http://www.w3.org/ns/SMIL" xmlns:epub="http://www.idpf.org/2007/ops" version="3.0">\n'
            f'<body>\n<seq id="seq1" epub:textref="{document}#chapter" epub:type="chapter">\n{pars}\n</seq>\n'
            "</body>\n"
            "</smil>\n")


def write_readalong_epub(
    target: Path,
    chapters: Sequence[ReadAlongChapter],
    *,
    title: str,
    author: str | None,
    language: str | None,
    narrator: str | None = None,
    cover: tuple[bytes, str] | None = None,
) -> Path:
    """Write the read-along EPUB 3 to ``target`` (see the module docstring)."""
    language = language or "en"
    identifier = f"urn:uuid:{uuid.UUID(content_hash(title + '|' + '|'.join(c.title for c in chapters))[:32])}"
    modified = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    files: list[tuple[str, bytes | Path]] = []
    manifest: list[str] = []
    spine: list[str] = []
    durations: list[str] = []
    nav_items: list[str] = []
    for number, chapter in enumerate(chapters, start=1):
        doc, smil, audio = f"ch{number:03d}.xhtml", f"ch{number:03d}.smil", f"audio/ch{number:03d}.m4a"
        clips = sentence_clips(chapter.placed)
        files += [(doc, _xhtml(chapter.title, clips, language).encode()), (smil, _smil(doc, audio, clips).encode()),
                  (audio, chapter.audio)]
        manifest += [f'<item id="c{number}" href="{doc}" media-type="application/xhtml+xml" '
                     f'media-overlay="o{number}"/>',
                     f'<item id="o{number}" href="{smil}" media-type="application/smil+xml"/>',
                     f'<item id="a{number}" href="{audio}" media-type="audio/mp4"/>']
        spine.append(f'<itemref idref="c{number}"/>')
        durations.append(f'<meta property="media:duration" refines="#o{number}">{_clock(chapter.duration_s)}</meta>')
        nav_items.append(f'<li><a href="{doc}">{escape(chapter.title)}</a></li>')
    total = sum(c.duration_s for c in chapters)
    nav = ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html>\n'
           '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops" '
           f'lang={quoteattr(language)} xml:lang={quoteattr(language)}>\n<head><title>{escape(title)}</title></head>\n'
           f'<body>\n<nav epub:type="toc" id="toc"><h1>{escape(title)}</h1>\n<ol>\n' + "\n".join(nav_items)
           + "\n</ol>\n</nav>\n</body>\n</html>\n")
    files.append(("nav.xhtml", nav.encode()))
    files.append(("style.css", f".{ACTIVE_CLASS} {{ background-color: #ffe58a; }}\n".encode()))
    manifest += ['<item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>',
                 '<item id="css" href="style.css" media-type="text/css"/>']
    if cover is not None:
        data, kind = cover
        name = f"cover.{kind}"
        files.append((name, data))
        manifest.append(f'<item id="cover" href="{name}" media-type="image/{"png" if kind == "png" else "jpeg"}" '
                        'properties="cover-image"/>')
    metadata = [f"<dc:identifier id=\"bookid\">{identifier}</dc:identifier>", f"<dc:title>{escape(title)}</dc:title>",
                f"<dc:language>{escape(language)}</dc:language>",
                f'<meta property="dcterms:modified">{modified}</meta>',
                f'<meta property="media:duration">{_clock(total)}</meta>', *durations,
                f'<meta property="media:active-class">{ACTIVE_CLASS}</meta>']
    if author:
        metadata.append(f"<dc:creator>{escape(author)}</dc:creator>")
    if narrator:
        metadata.append(f'<meta property="media:narrator">{escape(narrator)}</meta>')
    opf = ('<?xml version="1.0" encoding="UTF-8"?>\n'
           '<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="bookid" '
           f'xml:lang={quoteattr(language)}>\n<metadata xmlns:dc="http://purl.org/dc/elements/1.1/">\n'
           + "\n".join(metadata) + "\n</metadata>\n<manifest>\n" + "\n".join(manifest)
           + "\n</manifest>\n<spine>\n" + "\n".join(spine) + "\n</spine>\n</package>\n")
    files.append(("content.opf", opf.encode()))
    container = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                 '<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">\n'
                 '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
                 "</rootfiles>\n</container>\n")
    with atomic_output(target) as temp, zipfile.ZipFile(temp, "w") as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        archive.writestr("META-INF/container.xml", container, compress_type=zipfile.ZIP_DEFLATED)
        for name, content in files:
            if isinstance(content, Path):  # audio is already compressed
                archive.write(content, f"OEBPS/{name}", compress_type=zipfile.ZIP_STORED)
            else:
                archive.writestr(f"OEBPS/{name}", content, compress_type=zipfile.ZIP_DEFLATED)
    return target


__all__ = ["ACTIVE_CLASS", "Clip", "ReadAlongChapter", "sentence_clips", "write_readalong_epub"]
