"""Hostile inputs built by the tests, streaming so the tests stay light: zip bombs, deep markup."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_CONTAINER = (b'<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
              b'<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
              b'</rootfiles></container>')
_OPF = (b'<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0">'
        b'<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Bomb</dc:title></metadata><manifest>'
        b'%s</manifest><spine>%s</spine></package>')


@dataclass
class _Member:
    name: str
    chunks: Iterable[bytes]  # the stored bytes (raw deflate when ``deflated``)
    crc: int
    size: int
    deflated: bool


def _zeros_member(name: str, mib: int) -> _Member:
    """``mib`` MiB of zeros as raw deflate built from one repeated full-flushed block (~1 KB per MiB)."""
    zeros = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush()
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return _Member(name, [*([block] * mib), tail], crc, mib << 20, True)


def _stored(name: str, data: bytes) -> _Member:
    return _Member(name, [data], zlib.crc32(data), len(data), False)


def _write_zip(path: Path, members: list[_Member]) -> Path:
    """A plain zip (no zip64: every member under 4 GiB) written by hand, so a deflated member can be given
    as precompressed chunks."""
    central = []
    with open(path, "wb") as out:
        for member in members:
            offset = out.tell()
            name = member.name.encode()
            method = 8 if member.deflated else 0
            out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, member.crc, 0,
                                  member.size, len(name), 0) + name)
            start = out.tell()
            for chunk in member.chunks:
                out.write(chunk)
            compressed = out.tell() - start
            end = out.tell()
            out.seek(offset + 18)
            out.write(struct.pack("<I", compressed))
            out.seek(end)
            central.append(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, member.crc,
                                       compressed, member.size, len(name), 0, 0, 0, 0, 0, offset) + name)
        cd_offset = out.tell()
        for entry in central:
            out.write(entry)
        out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(central), len(central),
                              out.tell() - cd_offset, cd_offset, 0))
    return path


def _epub(path: Path, chapters: list[_Member]) -> Path:
    items = b"".join(b'<item id="c%d" href="%s" media-type="application/xhtml+xml"/>'
                     % (n, m.name.removeprefix("OEBPS/").encode()) for n, m in enumerate(chapters))
    spine = b"".join(b'<itemref idref="c%d"/>' % n for n in range(len(chapters)))
    return _write_zip(path, [
        _stored("mimetype", b"application/epub+zip"),
        _stored("META-INF/container.xml", _CONTAINER),
        _stored("OEBPS/content.opf", _OPF % (items, spine)),
        *chapters,
    ])


def zip_bomb_epub(path: Path, *, mib: int) -> Path:
    """An EPUB whose one chapter inflates to ``mib`` MiB of zeros (a few KB per GiB... about 1 KB per MiB)."""
    return _epub(path, [_zeros_member("OEBPS/chapter.xhtml", mib)])


def many_chapters_epub(path: Path, *, chapters: int, kib_each: int) -> Path:
    """An honest EPUB of ``chapters`` stored chapters of ``kib_each`` KiB of prose each."""
    sentence = b"The keeper climbed the stairs before dawn and lit the lamp. "
    body = (sentence * (kib_each * 1024 // len(sentence) + 1))[: kib_each * 1024]
    return _epub(path, [_stored(f"OEBPS/c{n}.xhtml", b"<html><body><p>" + body + b"</p></body></html>")
                        for n in range(chapters)])


def deep_html(depth: int) -> str:
    """An HTML document nesting ``depth`` ``<div>`` elements."""
    return "<html><body>" + "<div>" * depth + "deep" + "</div>" * depth + "</body></html>"


def deep_xml_epub(path: Path, depth: int) -> Path:
    """An EPUB whose OPF package document nests ``depth`` elements inside its metadata."""
    nested = b"<x>" * depth + b"</x>" * depth
    opf = (_OPF % (b'<item id="c0" href="c.xhtml" media-type="application/xhtml+xml"/>', b'<itemref idref="c0"/>'))
    opf = opf.replace(b"</metadata>", nested + b"</metadata>")
    return _write_zip(path, [
        _stored("mimetype", b"application/epub+zip"),
        _stored("META-INF/container.xml", _CONTAINER),
        _stored("OEBPS/content.opf", opf),
        _stored("OEBPS/c.xhtml", b"<html><body><p>Hello there.</p></body></html>"),
    ])
