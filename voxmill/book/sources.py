"""Book readers: EPUB 2/3, plain text, Markdown and HTML → :class:`~voxmill.book.model.Book`.

EPUB is read with the stdlib (zipfile + ElementTree for the container, OPF, nav and NCX; html.parser for
the content): chapters come from the table of contents (EPUB 3 nav, else the EPUB 2 NCX, else one per spine
document), nested entries flattened in reading order, each running from its anchor to the next entry's.
Plain text splits at chapter headings (``CHAPTER IV.``, ``Chapter 4``, ``PROLOGUE``) and honours Project
Gutenberg's start/end markers; text with ``#`` lines, Markdown and HTML split at their headings.

Every read is bounded (:mod:`voxmill.limits`): zip members are inflated against a byte budget and a
compression-ratio check, documents against a size and a nesting-depth cap; a book over one is refused
with :class:`~voxmill.limits.LimitExceeded` naming the file and the limit.
"""

from __future__ import annotations

import posixpath
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote
from xml.etree import ElementTree

from voxmill.book.chapters import FRONT_MATTER, Section, number_chapters, skip_reason
from voxmill.book.html_text import Block, html_blocks
from voxmill.book.model import Book
from voxmill.book.structure import RawSection, refine_sections
from voxmill.errors import ConfigError
from voxmill.limits import BoundedZip, InputLimits, check_markup_size, depth_exceeded

BOOK_TYPES = ("epub", "txt", "md", "markdown", "html", "htm", "xhtml")
_EPUB_TYPE = "{http://www.idpf.org/2007/ops}type"


def read_book(path: Path, limits: InputLimits | None = None) -> Book:
    """Parse the book at ``path`` by its extension; ConfigError naming the file when it cannot be read,
    LimitExceeded when it is over an input limit (default: :meth:`InputLimits.from_env`)."""
    path = Path(path)
    limits = limits or InputLimits.from_env()
    suffix = path.suffix.lower().lstrip(".")
    if not path.is_file():
        raise ConfigError(f"book {str(path)!r} does not exist")
    if suffix not in BOOK_TYPES:
        raise ConfigError(f"book {str(path)!r}: unknown type {suffix!r}; give an .epub, .txt, .md or .html file")
    if suffix == "epub":
        return read_epub(path, limits)
    check_markup_size(path.stat().st_size, f"book {str(path)!r}", limits)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"book {str(path)!r} is not UTF-8 text; re-save it as UTF-8") from None
    if suffix in ("html", "htm", "xhtml"):
        return _book_from_blocks(path, html_blocks(text, where=f"book {str(path)!r}", max_depth=limits.markup_depth))
    if suffix in ("md", "markdown") or re.search(r"(?m)^#{1,6} \S", text):
        return read_markdown(path, text)
    return read_text(path, text)


# --- plain text ----------------------------------------------------------------------------------------

_NUMBER_WORDS = (r"one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
                 r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|first|second|third|last")
_CHAPTER_LINE = re.compile(
    rf"^\s*(?:(?:CHAPTER|Chapter|BOOK|Book|PART|Part)\s+(?:[IVXLCDM]+|\d+|{_NUMBER_WORDS}|"
    rf"{_NUMBER_WORDS.upper()}|(?:{_NUMBER_WORDS.title()}))\b[^\n]{{0,80}}"
    r"|(?:PROLOGUE|EPILOGUE|PREFACE|INTRODUCTION|CONTENTS|AFTERWORD|FOREWORD|Prologue|Epilogue|Preface|Contents|"
    r"Introduction|Afterword|Foreword)\.?)\s*$"
)
_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)


def read_text(path: Path, text: str) -> Book:
    """A plain-text book: chapters at heading lines; Gutenberg header/licence become skipped sections."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    header, licence = "", ""
    start, end = _GUTENBERG_START.search(text), _GUTENBERG_END.search(text)
    if start and end and end.start() > start.end():
        header, licence = text[: start.start()], text[end.start():]
        text = text[start.end(): end.start()]
    title = _field(header, "Title") or path.stem.replace("_", " ")
    author = _field(header, "Author")
    sections = [Section("Project Gutenberg header", _paragraphs(header), kind="copyright-page")] if header else []
    current = Section("", kind=FRONT_MATTER)
    for paragraph in _paragraphs(text):
        lines = paragraph.split("\n")
        if len(lines) <= 2 and _CHAPTER_LINE.match(lines[0]):
            sections.append(current)
            current = Section(" ".join(line.strip() for line in lines))
            current.paragraphs.append(current.title)  # the heading is read aloud
        else:
            current.paragraphs.append(paragraph)
    sections.append(current)
    if licence:
        sections.append(Section("Project Gutenberg licence", _paragraphs(licence), kind="copyright-page"))
    sections = _fold_contents(sections)
    return Book(str(path), title.strip(), author, chapters=number_chapters(sections))


def _fold_contents(sections: list[Section]) -> list[Section]:
    """Heading-only sections right after a contents heading are its entries; other heading-only ones go."""
    folded: list[Section] = []
    in_contents = False
    for section in sections:
        heading_only = not section.kind and len(section.paragraphs) <= 1
        if heading_only and in_contents:
            folded[-1].paragraphs.extend(section.paragraphs)
            continue
        in_contents = skip_reason(section.title, None) == "contents"
        if in_contents or not heading_only:
            folded.append(section)
    return [s for s in folded if s.kind or len(s.paragraphs) > 1]


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def _field(header: str, name: str) -> str | None:
    match = re.search(rf"(?m)^{name}:\s*(.+)$", header)
    return match.group(1).strip() if match else None


# --- Markdown and HTML ---------------------------------------------------------------------------------

_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_INLINE = (
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), ""),  # images
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),  # links keep their text
    (re.compile(r"\[\^[^\]]*\]"), ""),  # footnote references
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"(\*\*|__|\*|_)(?=\S)(.+?)(?<=\S)\1"), r"\2"),
    (re.compile(r"<[^>\n]+>"), ""),  # inline HTML tags
)


def read_markdown(path: Path, text: str) -> Book:
    """A Markdown (or ``#``-headed text) book: front matter ``title:``/``author:``, chapters at headings."""
    text = text.replace("\r\n", "\n")
    meta: dict[str, str] = {}
    front = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    if front:
        for line in front.group(1).splitlines():
            key, sep, value = line.partition(":")
            if sep:
                meta[key.strip().lower()] = value.strip().strip("\"'")
        text = text[front.end():]
    blocks: list[Block] = []
    in_code = False
    for paragraph in _paragraphs(text):
        for chunk in _split_heading_lines(paragraph):
            if chunk.startswith("```"):
                in_code = not in_code if chunk.count("```") % 2 else in_code
                continue
            if in_code or re.match(r"^\s*([-*_]\s*){3,}$", chunk):
                continue
            heading = _MD_HEADING.match(chunk)
            if heading:
                blocks.append(Block(_md_inline(heading.group(2)), len(heading.group(1))))
                continue
            lines = [re.sub(r"^\s*(?:[-*+]|\d+\.|>)\s+", "", line) for line in chunk.split("\n")]
            blocks.append(Block(_md_inline(" ".join(lines))))
    book = _book_from_blocks(path, blocks)
    return Book(book.source, meta.get("title") or book.title, meta.get("author"), meta.get("language"),
                chapters=book.chapters)


def _split_heading_lines(paragraph: str) -> Iterator[str]:
    """A heading line is a block of its own even without blank lines around it."""
    rest: list[str] = []
    for line in paragraph.split("\n"):
        if _MD_HEADING.match(line):
            if rest:
                yield "\n".join(rest)
                rest = []
            yield line
        else:
            rest.append(line)
    if rest:
        yield "\n".join(rest)


def _md_inline(text: str) -> str:
    for pattern, replacement in _MD_INLINE:
        text = pattern.sub(replacement, text)
    return text


def _book_from_blocks(path: Path, blocks: list[Block]) -> Book:
    """Chapters at the chapter heading level: the shallowest level, or the next when it holds one title."""
    levels = sorted({b.heading for b in blocks if b.heading})
    title = path.stem.replace("_", " ")
    chapter_level = levels[0] if levels else 0
    title_block = None
    if len(levels) > 1 and sum(1 for b in blocks if b.heading == levels[0]) == 1:
        title_block = next(b for b in blocks if b.heading == levels[0])
        title = title_block.text
        chapter_level = levels[1]
    sections = [Section("", kind=FRONT_MATTER)]
    for block in blocks:
        if block is title_block:
            continue
        if block.heading and block.heading <= chapter_level:
            sections.append(Section(block.text))
        sections[-1].paragraphs.append(block.text)
    return Book(str(path), title, chapters=number_chapters(sections))


# --- EPUB ----------------------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ElementTree.Element, name: str) -> Iterator[ElementTree.Element]:
    return (child for child in element if _local(child.tag) == name)


def _descendants(element: ElementTree.Element, name: str) -> Iterator[ElementTree.Element]:
    return (node for node in element.iter() if _local(node.tag) == name)


def _resolve(base_file: str, href: str) -> tuple[str, str]:
    """(zip path, fragment) of ``href`` relative to the document ``base_file``."""
    target, _, fragment = href.partition("#")
    if not target:
        return base_file, fragment
    return posixpath.normpath(posixpath.join(posixpath.dirname(base_file), unquote(target))), fragment


class _Epub:
    """The parts of an EPUB needed for chapters: metadata, manifest, spine, table of contents, landmarks."""

    def __init__(self, path: Path, limits: InputLimits) -> None:
        self.path = path
        self.limits = limits
        try:
            self.zip = BoundedZip(path, f"book {str(path)!r}", limits)
            container = self._xml("META-INF/container.xml")
        except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, OSError) as exc:
            raise ConfigError(f"book {str(path)!r} is not a readable EPUB ({exc}); re-export it") from None
        rootfile = next(_descendants(container, "rootfile"), None)
        if rootfile is None or not rootfile.get("full-path"):
            raise ConfigError(f"book {str(path)!r}: META-INF/container.xml names no OPF package file")
        self.opf_path = str(rootfile.get("full-path"))
        self.opf = self._xml(self.opf_path)
        self.items: dict[str, dict[str, str]] = {}
        for item in _descendants(self.opf, "item"):
            href, _ = _resolve(self.opf_path, item.get("href", ""))
            self.items[item.get("id", "")] = {
                "href": href, "type": item.get("media-type", ""), "properties": item.get("properties", ""),
            }
        spine = next(_descendants(self.opf, "spine"), None)
        self.spine_element = spine
        self.spine = [
            self.items[ref.get("idref", "")]["href"]
            for ref in (_children(spine, "itemref") if spine is not None else ())
            if ref.get("idref") in self.items and ref.get("linear", "yes") != "no"
        ]

    def _xml(self, name: str) -> ElementTree.Element:
        return bounded_xml(self.zip.read(name), f"book {str(self.path)!r}: {name!r}", self.limits)

    def metadata(self, name: str) -> str | None:
        node = next(_descendants(self.opf, name), None)
        return node.text.strip() if node is not None and node.text else None

    def cover(self) -> tuple[bytes | None, str | None]:
        cover_id = next((m.get("content") for m in _descendants(self.opf, "meta") if m.get("name") == "cover"), None)
        candidates = [i for i in self.items.values() if "cover-image" in i["properties"].split()]
        if cover_id in self.items:
            candidates.append(self.items[cover_id])
        candidates += [i for k, i in self.items.items() if "cover" in (k + i["href"]).lower()]
        for item in candidates:
            if item["type"] in ("image/jpeg", "image/png"):
                try:
                    return self.zip.read(item["href"]), "png" if item["type"] == "image/png" else "jpg"
                except KeyError:
                    continue
        return None, None

    def toc(self) -> list[tuple[str, str, str, int]]:
        """(title, document, fragment, depth) of every table-of-contents entry, in order."""
        nav = next((i for i in self.items.values() if "nav" in i["properties"].split()), None)
        if nav is not None:
            entries = self._nav_entries(nav["href"], "toc")
            if entries:
                return entries
        toc_id = self.spine_element.get("toc") if self.spine_element is not None else None
        ncx = self.items.get(toc_id or "") or next(
            (i for i in self.items.values() if i["type"] == "application/x-dtbncx+xml"), None
        )
        if ncx is None:
            return []
        root = self._xml(ncx["href"])
        nav_map = next(_descendants(root, "navMap"), None)
        return list(self._ncx_points(nav_map, ncx["href"], 0)) if nav_map is not None else []

    def _ncx_points(self, parent: ElementTree.Element, base: str, depth: int) -> Iterator[tuple[str, str, str, int]]:
        for point in _children(parent, "navPoint"):
            label = next(_descendants(point, "text"), None)
            content = next(_children(point, "content"), None)
            if content is not None:
                doc, fragment = _resolve(base, content.get("src", ""))
                yield (label.text or "" if label is not None else ""), doc, fragment, depth
            yield from self._ncx_points(point, base, depth + 1)

    def _nav_entries(self, nav_href: str, kind: str) -> list[tuple[str, str, str, int]]:
        try:
            root = self._xml(nav_href)
        except (KeyError, ElementTree.ParseError):
            return []
        navs = list(_descendants(root, "nav"))
        nav = next((n for n in navs if kind in (n.get(_EPUB_TYPE) or "").split()), None)
        if nav is None and kind == "toc" and navs:
            nav = navs[0]
        if nav is None:
            return []
        entries: list[tuple[str, str, str, int]] = []

        def walk(ol: ElementTree.Element, depth: int) -> None:
            for li in _children(ol, "li"):
                link = next((c for c in li if _local(c.tag) in ("a", "span")), None)
                if link is not None and link.get("href"):
                    doc, fragment = _resolve(nav_href, link.get("href", ""))
                    label = " ".join("".join(link.itertext()).split())
                    entries.append((label, doc, fragment, depth) if kind == "toc" else
                                   (link.get(_EPUB_TYPE) or "", doc, fragment, depth))
                for sub in _children(li, "ol"):
                    walk(sub, depth + 1)

        for ol in _children(nav, "ol"):
            walk(ol, 0)
        return entries

    def structural_types(self) -> dict[str, str]:
        """Document → structural type, from EPUB 3 landmarks and the EPUB 2 guide."""
        types: dict[str, str] = {}
        for reference in _descendants(self.opf, "reference"):
            doc, _ = _resolve(self.opf_path, reference.get("href", ""))
            types[doc] = reference.get("type", "")
        nav = next((i for i in self.items.values() if "nav" in i["properties"].split()), None)
        if nav is not None:
            for kind, doc, _, _ in self._nav_entries(nav["href"], "landmarks"):
                types[doc] = kind
            types[nav["href"]] = "toc"  # the navigation document is the contents page when it is in the spine
        return {doc: kind for doc, kind in types.items() if kind}

    def blocks(self, doc: str) -> list[Block]:
        try:
            data = self.zip.read(doc)
        except KeyError:
            raise ConfigError(f"book {str(self.path)!r}: the spine names {doc!r}, which is not in the file") from None
        where = f"book {str(self.path)!r}: {doc!r}"
        check_markup_size(len(data), where, self.limits)
        return html_blocks(data.decode("utf-8", "replace"), where=where, max_depth=self.limits.markup_depth)


def bounded_xml(data: bytes, where: str, limits: InputLimits) -> ElementTree.Element:
    """Parse XML, refusing (LimitExceeded) a document over ``markup_mb`` or nested over ``markup_depth``."""
    check_markup_size(len(data), where, limits)
    parser = ElementTree.XMLPullParser(events=("start", "end"))
    depth = 0
    root: ElementTree.Element | None = None
    step = 1 << 16
    for offset in range(0, len(data) + 1, step):
        if offset < len(data):
            parser.feed(data[offset: offset + step])
        else:
            parser.close()
        for event, element in parser.read_events():
            if event == "start":
                depth += 1
                root = element if root is None else root
                if depth > limits.markup_depth:
                    raise depth_exceeded(where, limits)
            else:
                depth -= 1
    if root is None:
        raise ElementTree.ParseError(f"{where}: no element found")
    return root


def read_epub(path: Path, limits: InputLimits | None = None) -> Book:
    """An EPUB 2 or 3 book; chapters from its table of contents (see the module docstring)."""
    epub = _Epub(path, limits or InputLimits.from_env())
    if not epub.spine:
        raise ConfigError(f"book {str(path)!r}: the EPUB spine is empty (no readable documents)")
    types = epub.structural_types()
    # every block of the reading order, with where each document and anchor starts
    blocks: list[Block] = []
    starts: dict[tuple[str, str], int] = {}
    doc_of_block: list[str] = []
    for doc in epub.spine:
        starts[(doc, "")] = len(blocks)
        for block in epub.blocks(doc):
            for anchor in block.anchors:
                starts.setdefault((doc, anchor), len(blocks))
            blocks.append(block)
            doc_of_block.append(doc)
    entries = [(title, starts[(doc, frag)] if (doc, frag) in starts else starts.get((doc, "")), depth, doc)
               for title, doc, frag, depth in epub.toc()]
    located = [(title, start, depth, doc) for title, start, depth, doc in entries if start is not None]
    if not located:  # no usable table of contents: one chapter per spine document
        located = []
        for doc in epub.spine:
            first = starts[(doc, "")]
            heading = next((b.text for b in blocks[first:] if b.heading), "") if first < len(blocks) else ""
            located.append((heading, first, 0, doc))
    # a document outside the table of contents continues the chapter before it, unless it is plainly
    # non-narrative (a landmark/guide type, or a heading like "Copyright"): then it is a section of its own
    entered = {doc for _, _, _, doc in located}
    for doc in epub.spine:
        first = starts[(doc, "")]
        if doc in entered or first >= len(blocks) or doc_of_block[first] != doc:
            continue
        own = blocks[first: first + doc_of_block[first:].count(doc)]
        heading = next((b.text for b in own if b.heading), own[0].text)
        if types.get(doc) or skip_reason(heading, None):
            located.append((heading, first, 0, doc))
    located.sort(key=lambda entry: entry[1])  # stable: TOC order among entries at one place
    entries: list[RawSection] = []
    if located and located[0][1] > 0:
        entries.append(RawSection("", blocks[: located[0][1]], 0, FRONT_MATTER))
    for position, (title, start, depth, doc) in enumerate(located):
        end = located[position + 1][1] if position + 1 < len(located) else len(blocks)
        kind = types.get(doc) if start == starts[(doc, "")] else None
        entries.append(RawSection(title, blocks[start:end], depth, kind))
    sections = refine_sections(entries)  # a coarse table of contents split at the headings in the text
    cover, cover_type = epub.cover()
    return Book(
        source=str(path),
        title=epub.metadata("title") or path.stem,
        author=epub.metadata("creator"),
        language=epub.metadata("language"),
        cover=cover,
        cover_type=cover_type,
        chapters=number_chapters(sections),
    )


__all__ = ["BOOK_TYPES", "read_book", "read_epub", "read_markdown", "read_text"]
