"""Pronunciation lexicon: words (or regexes) → how they are spoken, applied to chunks before they are keyed.

A lexicon is a TOML or CSV file. TOML::

    [words]                       # whole words, matched case-insensitively
    Hermione = "her-MY-oh-nee"
    "St." = "Saint"

    [[regex]]                     # Python regexes; the replacement may use \\1…
    pattern = '\\b(\\d+)mm\\b'
    say = '\\1 millimetres'

CSV: a header ``word,say`` or ``regex,say`` (both columns may appear: one entry per row).

A book has its own lexicon (``--lexicon-book FILE``, a manifest's ``lexicon`` column, or ``<book
stem>.lexicon.toml``/``.csv`` next to the book) and every book in a run shares the global one (``--lexicon``
or ``VOXMILL_LEXICON``). The book's entries come first, so they win over the global ones for the same
word. The spoken text is what the TTS model is sent and what keys a chunk: changing one entry re-bills
only the chunks whose spoken text changed. Subtitles keep the printed text.
"""

from __future__ import annotations

import csv
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from voxmill.errors import ConfigError

LEXICON_ENV = "VOXMILL_LEXICON"
LEXICON_SUFFIXES = (".lexicon.toml", ".lexicon.csv")


@dataclass(frozen=True)
class LexiconEntry:
    """One rule: what it matches (a word or a regex), what is said instead, and the file it came from."""

    match: str
    say: str
    regex: bool
    source: str

    def compile(self) -> re.Pattern[str]:
        """The pattern: a regex as written, or the word between word boundaries, case-insensitively."""
        if self.regex:
            return re.compile(self.match)
        start = r"\b" if re.match(r"\w", self.match) else r"(?<!\w)"
        end = r"\b" if re.search(r"\w$", self.match) else r"(?!\w)"
        return re.compile(start + re.escape(self.match) + end, re.IGNORECASE)


@dataclass(frozen=True)
class Lexicon:
    """Entries applied in order (the book's first, then the global ones)."""

    entries: tuple[LexiconEntry, ...] = ()

    def __post_init__(self) -> None:
        compiled = []
        for entry in self.entries:
            try:
                compiled.append((entry.compile(), entry))
            except re.error as exc:
                raise ConfigError(f"lexicon {entry.source}: {entry.match!r} is not a valid regex ({exc})") from None
        object.__setattr__(self, "_compiled", tuple(compiled))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __add__(self, other: Lexicon) -> Lexicon:
        return Lexicon(self.entries + other.entries)

    def apply(self, text: str) -> str:
        """``text`` as it is spoken."""
        for pattern, entry in self._compiled:  # type: ignore[attr-defined]
            if entry.regex:
                text = pattern.sub(entry.say, text)
            else:
                text = pattern.sub(lambda _m, say=entry.say: say, text)
        return text

    def describe(self) -> str:
        """``"5 entries (book.lexicon.toml 2, global.toml 3)"``."""
        counts: dict[str, int] = {}
        for entry in self.entries:
            counts[Path(entry.source).name] = counts.get(Path(entry.source).name, 0) + 1
        parts = ", ".join(f"{name} {count}" for name, count in counts.items())
        return f"{len(self.entries)} entries ({parts})" if self.entries else "no entries"


def load_lexicon(path: str | Path) -> Lexicon:
    """A lexicon file (TOML or CSV); ConfigError naming the file and the bad entry."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"lexicon {str(path)!r} does not exist")
    name = str(path)
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"lexicon {name!r} is not valid TOML ({exc})") from None
        unknown = set(data) - {"words", "regex"}
        if unknown:
            raise ConfigError(f"lexicon {name!r}: unknown table(s) {', '.join(sorted(unknown))}; use [words] and "
                              "[[regex]]")
        entries = [_entry(name, word, say, False, f"[words] {word!r}") for word, say in data.get("words", {}).items()]
        for number, rule in enumerate(data.get("regex", []), start=1):
            if not isinstance(rule, dict) or "pattern" not in rule or "say" not in rule:
                raise ConfigError(f"lexicon {name!r}: [[regex]] entry {number} needs 'pattern' and 'say'")
            entries.append(_entry(name, rule["pattern"], rule["say"], True, f"[[regex]] entry {number}"))
        return Lexicon(tuple(entries))
    if path.suffix.lower() == ".csv":
        entries = []
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            if "say" not in columns or not columns & {"word", "regex"}:
                raise ConfigError(f"lexicon {name!r}: the header needs 'say' and 'word' or 'regex' (has: "
                                  f"{', '.join(sorted(columns)) or 'nothing'})")
            for number, row in enumerate(reader, start=2):
                word, regex = (row.get("word") or "").strip(), (row.get("regex") or "").strip()
                if bool(word) == bool(regex):
                    raise ConfigError(f"lexicon {name!r} line {number}: give either 'word' or 'regex'")
                entries.append(_entry(name, word or regex, row.get("say") or "", bool(regex), f"line {number}"))
        return Lexicon(tuple(entries))
    raise ConfigError(f"lexicon {name!r}: give a .toml or .csv file")


def _entry(source: str, match: object, say: object, regex: bool, where: str) -> LexiconEntry:
    if not isinstance(match, str) or not match or not isinstance(say, str):
        raise ConfigError(f"lexicon {source!r} {where}: needs a non-empty match and a text to say")
    return LexiconEntry(match, say, regex, source)


def book_lexicon_path(book: str | Path) -> Path | None:
    """``<book stem>.lexicon.toml`` (or ``.csv``) next to the book, when there is one."""
    book = Path(book)
    for suffix in LEXICON_SUFFIXES:
        candidate = book.with_name(book.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def resolve_lexicon(book: str | Path, book_lexicon: str | Path | None, global_lexicon: str | Path | None) -> Lexicon:
    """The book's lexicon (given, or found next to it) followed by the global one (given, or VOXMILL_LEXICON)."""
    book_path = book_lexicon or book_lexicon_path(book)
    global_path = global_lexicon or os.environ.get(LEXICON_ENV) or None
    lexicon = Lexicon()
    for path in (book_path, global_path):
        if path:
            lexicon = lexicon + load_lexicon(path)
    return lexicon


def count_changed(texts: Sequence[str], lexicon: Lexicon) -> int:
    """How many of ``texts`` the lexicon changes."""
    return sum(1 for text in texts if lexicon.apply(text) != text) if lexicon else 0


__all__ = ["LEXICON_ENV", "Lexicon", "LexiconEntry", "book_lexicon_path", "count_changed", "load_lexicon",
           "resolve_lexicon"]
