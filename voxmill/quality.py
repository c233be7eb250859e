"""Transcript quality: word error rate, and the hallucination signals every ASR row carries as QC columns.

Whisper-style models invent text where there is none: "the the the …" on noise, a sentence on silence,
more characters than anyone could say in the time. :func:`transcript_qc` measures three signals:

- ``compression_ratio`` — UTF-8 bytes / zlib-compressed bytes of the text; repetitive text compresses
  well (whisper itself distrusts a ratio over 2.4). A run of one word or n-gram repeated
  ``REPEAT_RUN`` times or more is flagged too (short texts do not compress);
- ``chars_per_s`` — characters of text per second of audio; speech is ~10–20, over ``MAX_CHARS_PER_S``
  is not speech that was there;
- text on near-silent audio — words where the peak stays under ``SILENCE_PEAK_DBFS``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import jiwer

_PUNCTUATION = re.compile(r"[^\w\s']")

#: a compression ratio above this flags ``repetitive`` (whisper's own threshold)
MAX_COMPRESSION_RATIO = 2.4
#: one word or n-gram (n ≤ 4) repeated this many times in a row flags ``repetitive``
REPEAT_RUN = 4
#: characters per second above this flag ``too_fast``
MAX_CHARS_PER_S = 30.0
#: below this many characters per second over at least ``SLOW_MIN_SECONDS`` of audio: ``too_slow``
MIN_CHARS_PER_S = 1.0
SLOW_MIN_SECONDS = 10.0
#: audio whose sample peak stays under this (dBFS) is near-silent: any text on it flags ``text_on_silence``
SILENCE_PEAK_DBFS = -40.0


def normalise_text(text: str) -> str:
    """Lower case, punctuation out, whitespace folded: what WER compares."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of ``hypothesis`` against ``reference`` after :func:`normalise_text` (1.0 if the reference is empty)."""
    ref = normalise_text(reference)
    hyp = normalise_text(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp))


@dataclass(frozen=True)
class TranscriptQC:
    """Hallucination signals of one transcript; ``flags`` names each signal that fired."""

    compression_ratio: float | None
    chars_per_s: float | None
    flags: tuple[str, ...]

    @property
    def flags_text(self) -> str | None:
        """The flags as the ledger's ``qc_flags`` cell (comma-separated; None when clean)."""
        return ",".join(self.flags) or None


def compression_ratio(text: str) -> float | None:
    """UTF-8 bytes over zlib-compressed bytes (None for empty text)."""
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 3) if data else None


def longest_repeat_run(words: list[str], max_n: int = 4) -> int:
    """The most times one word or n-gram (n ≤ ``max_n``) follows itself in ``words``."""
    best = 1 if words else 0
    for n in range(1, max_n + 1):
        for start in range(n):
            run = 1
            for i in range(start + n, len(words) - n + 1, n):
                run = run + 1 if words[i : i + n] == words[i - n : i] else 1
                best = max(best, run)
    return best


def transcript_qc(text: str, duration_s: float | None, peak_dbfs: float | None) -> TranscriptQC:
    """The QC signals of ``text`` transcribed from audio of ``duration_s`` seconds peaking at ``peak_dbfs``
    (None: digital silence)."""
    spoken = text.strip()
    words = normalise_text(spoken).split()
    ratio = compression_ratio(spoken)
    rate = round(len(spoken) / duration_s, 3) if duration_s else None
    flags = []
    if ratio is not None and ratio > MAX_COMPRESSION_RATIO or longest_repeat_run(words) >= REPEAT_RUN:
        flags.append("repetitive")
    if rate is not None and rate > MAX_CHARS_PER_S:
        flags.append("too_fast")
    if rate is not None and words and rate < MIN_CHARS_PER_S and (duration_s or 0) >= SLOW_MIN_SECONDS:
        flags.append("too_slow")
    if words and (peak_dbfs is None or peak_dbfs < SILENCE_PEAK_DBFS):
        flags.append("text_on_silence")
    return TranscriptQC(compression_ratio=ratio, chars_per_s=rate, flags=tuple(flags))


__all__ = [
    "MAX_CHARS_PER_S",
    "MAX_COMPRESSION_RATIO",
    "REPEAT_RUN",
    "SILENCE_PEAK_DBFS",
    "TranscriptQC",
    "compression_ratio",
    "longest_repeat_run",
    "normalise_text",
    "transcript_qc",
    "word_error_rate",
]
