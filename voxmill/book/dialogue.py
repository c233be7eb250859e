"""Dialogue: quoted speech found by the language's quotation marks, and who says it, by rules with a confidence.

Rules, strongest first:

- ``said``: a speech verb next to a name in the narration around a quote ("…,” said Mara. / Mara asked: “…”)
  gives that quote its speaker (0.9), and the other quotes of the paragraph the same speaker (0.8);
- ``pronoun``: "he asked" next to a quote in a paragraph whose narration has one named subject
  ("Ben came down the path. He asked, “…”"): that person (0.7);
- ``vocative``: a quote that names someone ("…, Tom?") in a two-person exchange is said by the other (0.6);
- ``alternation``: in a run of dialogue paragraphs, an unattributed one is said by whoever spoke the turn
  before last (0.5).

Other pronoun attributions ("she said") are left to the rules below them; a quote with no speaker is read by the
dialogue voice.
Only names that are attributed as speakers at least once count as characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

#: quotation marks by language (open, close); others fall back to every convention
_QUOTES = {
    "en": (("“", "”"), ('"', '"'), ("‘", "’")),
    "de": (("„", "“"), ("»", "«"), ('"', '"')),
    "fr": (("«", "»"), ("“", "”"), ('"', '"')),
    "es": (("«", "»"), ("“", "”"), ('"', '"')),
    "it": (("«", "»"), ("“", "”"), ('"', '"')),
    "ja": (("「", "」"), ("『", "』")),
    "zh": (("“", "”"), ("「", "」")),
}
_ALL_QUOTES = (("“", "”"), ("«", "»"), ("„", "“"), ("「", "」"), ('"', '"'), ("‘", "’"))
_SPEECH_VERBS = (r"said|says|asked|asks|replied|answered|cried|shouted|whispered|called|added|muttered|exclaimed|"
                 r"continued|insisted|murmured|snapped|laughed|sighed|began|told|agreed|demanded|yelled|"
                 r"protested|observed|remarked|declared|admitted|repeated|warned|explained")
_TITLE = r"(?:Mr\.|Mrs\.|Ms\.|Miss|Dr\.|Captain|Aunt|Uncle|Lady|Lord|Sir)"
_NAME = rf"((?:{_TITLE}\s+)?[A-Z][a-z]+(?:[ -][A-Z][a-z]+)?)"
_NOT_NAMES = frozenset("The Then He She It I They We You His Her Their Its But And So When As Now There Here "
                       "This That What Who Why How Yes No Oh Well".split())
_AFTER = (re.compile(rf"^\W*(?:{_SPEECH_VERBS})\s+{_NAME}"), re.compile(rf"^\W*{_NAME}\s+(?:{_SPEECH_VERBS})\b"))
_BEFORE = re.compile(rf"{_NAME}\s+(?:\w+ly\s+)?(?:{_SPEECH_VERBS})\b[^.!?“”\"«»]*[,:]?\s*$")
_PRONOUN = re.compile(rf"(?:^\W*(?:{_SPEECH_VERBS})\s+(?:he|she)\b|^\W*(?:he|she)\s+(?:{_SPEECH_VERBS})\b|"
                      rf"\b(?:He|She)\s+(?:{_SPEECH_VERBS})\b[^.!?“”\"«»]*[,:]?\s*$)")
_SUBJECT = re.compile(rf"(?:^|[.!?]\s+)(?:\w+\s+)?{_NAME}\s+[a-z]+")
_VOCATIVE = re.compile(rf"(?:^|[,;]\s*|\b(?:Oh|O|Dear|Hello|Hi)\s+){_NAME}\s*[,.!?]")

SAID, PRONOUN, VOCATIVE, ALTERNATION = 0.9, 0.7, 0.6, 0.5


@dataclass(frozen=True)
class Segment:
    """A run of a paragraph: narration, or a quote with its speaker (None: unknown), rule and confidence."""

    text: str
    quoted: bool = False
    speaker: str | None = None
    confidence: float = 0.0
    rule: str | None = None


def _quote_pattern(language: str | None) -> re.Pattern[str]:
    pairs = _QUOTES.get((language or "").split("-")[0].lower(), _ALL_QUOTES)
    parts = []
    for opening, closing in pairs:
        if opening == "‘":  # not an apostrophe: opens after a space or start, closes before a non-letter
            parts.append(r"(?<!\w)‘[^‘]*?’(?!\w)")
        else:
            parts.append(f"{re.escape(opening)}[^{re.escape(closing)}{re.escape(opening)}]*{re.escape(closing)}")
    return re.compile("|".join(parts))


def split_quotes(paragraph: str, language: str | None = None) -> list[Segment]:
    """The paragraph as narration and quotes, in order; joining their texts with single spaces gives it back
    (when the quotes are set off by spaces, as they nearly always are)."""
    segments: list[Segment] = []
    cursor = 0
    for match in _quote_pattern(language).finditer(paragraph):
        before = paragraph[cursor:match.start()].strip()
        if before:
            segments.append(Segment(before))
        segments.append(Segment(match.group(0), quoted=True))
        cursor = match.end()
    rest = paragraph[cursor:].strip()
    if rest:
        segments.append(Segment(rest))
    return segments


def _name(candidate: str | None) -> str | None:
    if not candidate:
        return None
    first = candidate.split()[0]
    return None if first in _NOT_NAMES else candidate


def _explicit(segments: Sequence[Segment]) -> str | None:
    """A name attributed by a speech verb in the narration right after or right before a quote."""
    for position, segment in enumerate(segments):
        if not segment.quoted:
            continue
        after = segments[position + 1].text if position + 1 < len(segments) and not segments[position + 1].quoted \
            else ""
        for pattern in _AFTER:
            found = _name(m.group(1)) if (m := pattern.match(after)) else None
            if found:
                return found
        before = segments[position - 1].text if position > 0 and not segments[position - 1].quoted else ""
        found = _name(m.group(1)) if (m := _BEFORE.search(before)) else None
        if found:
            return found
    return None


def _by_pronoun(segments: Sequence[Segment]) -> str | None:
    """"He asked" next to a quote, in a paragraph whose narration names one person as a subject: that person."""
    narration = [s.text for s in segments if not s.quoted]
    if not any(_PRONOUN.search(text) for text in narration):
        return None
    names = {n for text in narration for m in _SUBJECT.finditer(text) if (n := _name(m.group(1)))}
    return names.pop() if len(names) == 1 else None


def _addressee(segments: Sequence[Segment], known: set[str]) -> str | None:
    for segment in segments:
        if segment.quoted:
            for match in _VOCATIVE.finditer(segment.text.strip("“”\"«»„「」‘’")):
                if match.group(1) in known:
                    return match.group(1)
    return None


def attribute(paragraphs: Iterable[str], language: str | None = None) -> list[list[Segment]]:
    """Every paragraph's segments, with speakers where the rules find them (see the module docstring)."""
    split = [split_quotes(p, language) for p in paragraphs]
    explicit = [_explicit(s) if any(x.quoted for x in s) else None for s in split]
    known = {name for name in explicit if name} | {n for s in split if (n := _by_pronoun(s))}
    result: list[list[Segment]] = []
    turns: list[str | None] = []  # speakers of the current run of dialogue paragraphs
    for segments, said in zip(split, explicit, strict=True):
        if not any(s.quoted for s in segments):
            turns = []
            result.append(segments)
            continue
        speaker, rule, confidence = said, "said", SAID
        if speaker is None and (subject := _by_pronoun(segments)):
            speaker, rule, confidence = subject, "pronoun", PRONOUN
        if speaker is None:
            speaker, rule, confidence = None, None, 0.0
            talking = [t for t in dict.fromkeys(turns) if t]
            addressee = _addressee(segments, known)
            if addressee and len(talking) == 2 and addressee in talking:
                speaker, rule, confidence = next(t for t in talking if t != addressee), "vocative", VOCATIVE
            elif len(turns) >= 2 and turns[-2] and turns[-2] != turns[-1]:
                speaker, rule, confidence = turns[-2], "alternation", ALTERNATION
        turns.append(speaker)
        result.append(list(_assign(segments, speaker, rule, confidence, explicit=rule in ("said", "pronoun"))))
    return result


def _assign(segments: Sequence[Segment], speaker: str | None, rule: str | None, confidence: float,
            explicit: bool) -> Iterator[Segment]:
    first = True
    for segment in segments:
        if not segment.quoted:
            yield segment
            continue
        level = confidence if first or not explicit else confidence - 0.1
        yield Segment(segment.text, True, speaker, round(level, 2) if speaker else 0.0, rule if speaker else None)
        first = False


@dataclass(frozen=True)
class Character:
    """A speaker found in the book: how many quotes are attributed to them, and a few of them."""

    name: str
    lines: int
    samples: tuple[str, ...]
    mean_confidence: float


def find_characters(chapters_paragraphs: Iterable[Sequence[str]], language: str | None = None,
                    samples: int = 2) -> tuple[list[Character], int, int]:
    """(characters by line count, quotes in all, quotes with no speaker) over the chapters' paragraphs."""
    by_name: dict[str, list[Segment]] = {}
    quotes = unattributed = 0
    for paragraphs in chapters_paragraphs:
        for segments in attribute(paragraphs, language):
            for segment in segments:
                if not segment.quoted:
                    continue
                quotes += 1
                if segment.speaker is None:
                    unattributed += 1
                else:
                    by_name.setdefault(segment.speaker, []).append(segment)
    characters = [
        Character(name, len(lines), tuple(s.text[:80] for s in lines[:samples]),
                  round(sum(s.confidence for s in lines) / len(lines), 2))
        for name, lines in by_name.items()
    ]
    characters.sort(key=lambda c: (-c.lines, c.name))
    return characters, quotes, unattributed


__all__ = ["Character", "Segment", "attribute", "find_characters", "split_quotes"]
