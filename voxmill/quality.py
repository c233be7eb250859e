"""Transcript quality: word error rate with the normalisation every report and test uses."""

from __future__ import annotations

import re

import jiwer

_PUNCTUATION = re.compile(r"[^\w\s']")


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


__all__ = ["normalise_text", "word_error_rate"]
