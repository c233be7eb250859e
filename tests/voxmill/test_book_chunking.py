"""Chunking: whole sentences within each model's limits, long sentences cut at clauses then words, nothing lost."""

from __future__ import annotations

import random

import pytest
from book_files import write_epub

from voxmill.book.chunking import ChunkLimits, chunk_chapter, chunk_paragraph, rejoin, split_sentences
from voxmill.book.model import Chapter
from voxmill.book.sources import read_book
from voxmill.catalog import TTS_MODELS, get_model

WORDS = ("harbour lantern compass island keeper parcel village stranger evening morning quietly suddenly "
         "ancient narrow golden silver whispered carried opened watched").split()


def _sentence(rng: random.Random, words: int, clause_every: int | None = None) -> str:
    chosen = [rng.choice(WORDS) for _ in range(words)]
    if clause_every:
        chosen = [w + ("," if (i + 1) % clause_every == 0 and i + 1 < words else "") for i, w in enumerate(chosen)]
    ending = rng.choice([".", "!", "?", ".”", "…"])
    return " ".join(chosen).capitalize() + ending


def _chapter(seed: int, limits: ChunkLimits) -> Chapter:
    """Paragraphs of ordinary sentences, with one sentence over the word limit (clauses) and one run-on
    sentence without any punctuation, longer than the limit."""
    rng = random.Random(seed)
    paragraphs = []
    for number in range(8):
        sentences = [_sentence(rng, rng.randint(3, 30)) for _ in range(rng.randint(1, 12))]
        if number == 2:
            sentences.insert(1, _sentence(rng, limits.words * 2 + 7, clause_every=9))
        if number == 5:
            sentences.append(_sentence(rng, limits.words * 3 + 1))
        paragraphs.append(" ".join(sentences))
    return Chapter(1, "Chapter", "\n\n".join(paragraphs))


@pytest.mark.parametrize("model", TTS_MODELS)
def test_chunks_rejoin_to_the_chapter_and_respect_the_model_limits(model):
    limits = ChunkLimits.for_model(model)
    spec = get_model(model)
    assert limits.words == spec.chunk_words and limits.chars == spec.text_soft_limit
    for seed in range(5):
        chapter = _chapter(seed, limits)
        chunks = chunk_chapter(chapter, limits)
        assert rejoin(chunks) == chapter.text  # nothing dropped, added or rewritten
        assert [c.index for c in chunks] == list(range(len(chunks)))
        for chunk in chunks:
            assert len(chunk.text.split()) <= limits.words and len(chunk.text) <= limits.chars


def test_sentences_are_never_cut_unless_one_alone_is_over_the_limit():
    limits = ChunkLimits(words=40, chars=10_000)
    chapter = _chapter(7, limits)
    for paragraph in chapter.paragraphs:
        sentences = split_sentences(paragraph)
        pieces = chunk_paragraph(paragraph, limits)
        long_ones = [s for s in sentences if len(s.split()) > limits.words]
        if not long_ones:
            # every chunk is a run of whole sentences
            starts = {0} | {len(" ".join(sentences[:i])) + 1 for i in range(1, len(sentences))}
            cursor = 0
            for piece in pieces:
                assert cursor in starts
                cursor += len(piece) + 1
    run_on = chunk_paragraph(_chapter(7, limits).paragraphs[5], limits)
    assert max(len(p.split()) for p in run_on) <= limits.words


def test_long_sentence_is_cut_at_clause_punctuation_first():
    limits = ChunkLimits(words=12, chars=10_000)
    sentence = ("The keeper climbed the stairs, lit the lamp, wiped the glass, checked the oil, "
                "watched the sea, and waited for the dawn to come over the hills.")
    pieces = chunk_paragraph(sentence, limits)
    assert " ".join(pieces) == sentence
    assert all(p.endswith(",") for p in pieces[:-1])  # every cut is after a comma
    assert all(len(p.split()) <= 12 for p in pieces)


def test_abbreviations_initials_and_quotes_do_not_end_sentences():
    text = ('Mr. Hale met Dr. Lee at St. Mary\'s. "Is it far?" she asked. J. R. Smith said no. '
            "See No. 5 on p. 12. Then they left.")
    assert split_sentences(text) == [
        "Mr. Hale met Dr. Lee at St. Mary's.", '"Is it far?" she asked.', "J. R. Smith said no.",
        "See No. 5 on p. 12.", "Then they left.",
    ]


def test_a_real_book_chunks_for_the_smallest_model(tmp_path):
    book = read_book(write_epub(tmp_path / "book.epub"))
    limits = ChunkLimits(words=12, chars=80)
    for chapter in book.chapters:
        chunks = chunk_chapter(chapter, limits)
        assert rejoin(chunks) == chapter.text
        ends = [c.ends_paragraph for c in chunks]
        assert sum(ends) == len(chapter.paragraphs) and ends[-1]
