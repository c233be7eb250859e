"""A take's transcript aligned to its text word by word: WER per sentence and the longest divergent run.

A whole-chunk WER hides a garbled 10–25 s stretch in a long chunk (a few bad words among many good ones
average out); a run of consecutive wrong words does not. Words are compared after
:func:`voxmill.quality.normalise_text`; an inserted word counts against the sentence it lands in.
"""

from __future__ import annotations

from dataclasses import dataclass

import jiwer

from voxmill.book.chunking import iter_sentences
from voxmill.quality import normalise_text


@dataclass(frozen=True)
class SentenceScore:
    """One sentence of the text: its words, the errors in it and its WER."""

    sentence: str
    words: int
    errors: int

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else float(self.errors > 0)


@dataclass(frozen=True)
class Alignment:
    """A take against its text: overall WER, every sentence's score, and the longest run of wrong words."""

    wer: float
    sentences: tuple[SentenceScore, ...]
    #: the most consecutive words wrong (substituted, dropped or inserted)
    longest_run: int
    #: the text's words where that run is (empty when none is wrong)
    run_text: str

    @property
    def worst(self) -> SentenceScore | None:
        """The sentence with the highest WER (the first of equals), or None without sentences."""
        return max(self.sentences, key=lambda s: s.wer, default=None)


def align(text: str, transcript: str) -> Alignment:
    """Align ``transcript`` to ``text`` (see the module docstring)."""
    sentences = [s for s in iter_sentences(text) if normalise_text(s)]
    sentence_words = [normalise_text(s).split() for s in sentences]
    reference = [w for words in sentence_words for w in words]
    hypothesis = normalise_text(transcript).split()
    # which sentence each reference word is in
    owner = [i for i, words in enumerate(sentence_words) for _ in words]
    errors = [0] * len(sentences)
    wrong_at = [False] * len(reference)
    runs: list[tuple[int, int, int]] = []  # (length, first ref word, last ref word)
    run, run_start = 0, 0

    def close_run(end: int) -> None:
        nonlocal run
        if run:
            runs.append((run, run_start, end))
        run = 0

    if not reference:
        return Alignment(float(bool(hypothesis)), (), len(hypothesis), "")
    if not hypothesis:
        scores = tuple(SentenceScore(s, len(w), len(w)) for s, w in zip(sentences, sentence_words, strict=True))
        return Alignment(1.0, scores, len(reference), " ".join(reference))
    for chunk in jiwer.process_words(" ".join(reference), " ".join(hypothesis)).alignments[0]:
        if chunk.type == "equal":
            close_run(chunk.ref_start_idx - 1)
            continue
        if not run:
            run_start = min(chunk.ref_start_idx, len(reference) - 1)
        if chunk.type == "insert":
            at = owner[min(chunk.ref_start_idx, len(reference) - 1)]
            errors[at] += chunk.hyp_end_idx - chunk.hyp_start_idx
            run += chunk.hyp_end_idx - chunk.hyp_start_idx
            continue
        for position in range(chunk.ref_start_idx, chunk.ref_end_idx):
            errors[owner[position]] += 1
            wrong_at[position] = True
        # a substitution of n words by m: max(n, m) wrong in a row; a deletion: n
        run += max(chunk.ref_end_idx - chunk.ref_start_idx, chunk.hyp_end_idx - chunk.hyp_start_idx)
    close_run(len(reference) - 1)
    longest = max(runs, default=(0, 0, -1))
    scores = tuple(SentenceScore(s, len(w), e) for s, w, e in zip(sentences, sentence_words, errors, strict=True))
    return Alignment(round(sum(errors) / len(reference), 4), scores, longest[0],
                     " ".join(reference[longest[1]:longest[2] + 1]))


__all__ = ["Alignment", "SentenceScore", "align"]
