"""Transcript QC: WER normalisation and the hallucination signals of ASR rows."""

from __future__ import annotations

import pytest

from voxmill.quality import compression_ratio, longest_repeat_run, transcript_qc, word_error_rate


def test_wer_ignores_case_and_punctuation():
    assert word_error_rate("Hello, world!", "hello world") == 0.0
    assert word_error_rate("one two three four", "one two four") == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("text", "seconds", "peak", "flags"),
    [
        ("The quick brown fox jumps over the lazy dog near the old stone bridge.", 4.5, -6.0, ()),
        ("the the the the the the", 5.0, -12.0, ("repetitive",)),  # whisper on noise
        ("you know what I mean " * 6, 12.0, -12.0, ("repetitive",)),  # compresses > 2.4
        ("Thank you for watching.", 3.0, -55.0, ("text_on_silence",)),  # a sentence on near-silence
        ("Thank you.", 2.0, None, ("text_on_silence",)),  # digital silence
        ("", 2.0, None, ()),  # nothing said on silence: right
        ("A whole paragraph of text could never be said in a fraction of a second.", 0.5, -6.0, ("too_fast",)),
        ("Yes.", 40.0, -6.0, ("too_slow",)),
    ],
)
def test_transcript_qc_flags(text, seconds, peak, flags):
    qc = transcript_qc(text, seconds, peak)
    assert qc.flags == flags
    assert qc.flags_text == (",".join(flags) or None)
    if text.strip():
        assert qc.chars_per_s == pytest.approx(len(text.strip()) / seconds, abs=0.001)


def test_signals():
    assert compression_ratio("") is None
    assert compression_ratio("abc " * 100) > 10 > compression_ratio("A short, varied sentence.")
    assert longest_repeat_run("a b c a b c a b c d".split()) == 3
    assert longest_repeat_run("one two three".split()) == 1
