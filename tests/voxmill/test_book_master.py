"""Mastering: chapters encoded once in parallel and joined by stream copy keep every chapter's speech where its
mark says (AAC priming and padding accounted for), at the book's loudness and under its true-peak ceiling, with a
limiter only on the chapters whose peaks need one."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

from voxmill.audio.measure import Loudness, decode_float32, loudness_lufs, loudness_of
from voxmill.book.m4b import (
    AAC_PRIMING,
    ChapterMark,
    chapter_gains,
    chapter_span,
    combined_loudness,
    encode_chapters,
    join_chapters,
)

RATE = 24000


def _chapter(path: Path, seconds: float, beep_at: float | None, seed: int) -> int:
    """A chapter of voiced syllables (speech-like loudness) with a loud 1 kHz beep at ``beep_at`` (None: no beep)."""
    rng = np.random.default_rng(seed)
    count = int(seconds * RATE)
    t = np.arange(count) / RATE
    pitch = np.repeat(rng.uniform(100, 200, count // 6000 + 1), 6000)[:count]
    signal = 0.05 * np.sin(2 * np.pi * np.cumsum(pitch) / RATE) * (np.sin(np.pi * t * 4) > 0)
    if beep_at is not None:
        start = int(beep_at * RATE)
        signal[start:start + 1200] = 0.9 * np.sin(2 * np.pi * 1000 * t[:1200])
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes((signal * 32767).astype("<i2").tobytes())
    return count


def _packets(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a", "-count_packets", "-show_entries",
                          "stream=nb_read_packets", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.strip())


def test_chapters_joined_without_reencoding_stay_in_sync_with_their_marks(tmp_path):
    lengths = [7.3, 11.05, 5.55]
    wavs = [tmp_path / f"ch{i}.wav" for i in range(3)]
    samples = [_chapter(w, s, 1.5, i) for i, (w, s) in enumerate(zip(wavs, lengths))]
    encoded = encode_chapters(wavs, [w.with_suffix(".m4a") for w in wavs], samples, gains=None, sample_rate=RATE)
    marks, cursor = [], 0
    for number, count in enumerate(samples, start=1):
        marks.append(ChapterMark(f"Chapter {number}", cursor / RATE, (cursor + chapter_span(count)) / RATE))
        cursor += chapter_span(count)
    book = join_chapters(encoded, tmp_path / "book.m4b", tags={"title": "Sync"}, marks=marks, cover=None)
    # nothing re-encoded: the book's audio packets are the chapters' packets, every one of them
    assert _packets(book) == sum(_packets(e) for e in encoded) == sum(chapter_span(n) // 1024 for n in samples)
    decoded = decode_float32(book, sample_rate=RATE, channels=1)[:, 0]
    assert abs(decoded.size / RATE - marks[-1].end_s) < 0.05
    loud = np.nonzero(np.abs(decoded) > 0.5)[0]
    onsets = [loud[0]] + [b for a, b in zip(loud, loud[1:]) if b - a > RATE]
    expected = [mark.start_s + AAC_PRIMING / RATE + 1.5 for mark in marks]
    assert len(onsets) == 3
    assert all(abs(o / RATE - e) < 0.01 for o, e in zip(onsets, expected)), (onsets, expected)

    # at the book's loudness: one gain (measured over the chapters in parallel); every chapter has a beep that
    # the gain would push over the ceiling, so every one is limited
    gains = chapter_gains(wavs, lengths, -18.0, -3.0)
    assert gains is not None and len({g.gain_db for g in gains}) == 1 and all(g.limit for g in gains)
    louder = encode_chapters(wavs, [w.with_suffix(".loud.m4a") for w in wavs], samples, gains=gains,
                             sample_rate=RATE)
    book = join_chapters(louder, tmp_path / "loud.m4b", tags={"title": "Sync"}, marks=marks, cover=None)
    assert abs(loudness_lufs(decode_float32(book, sample_rate=RATE, channels=1)[:, 0], RATE) - -18.0) <= 0.5
    assert loudness_of(book, peak="true").peak_db <= -3.0  # true peak of the decoded AAC, oversampled 4×


def test_only_the_chapter_whose_peaks_need_it_is_limited_and_the_book_meets_its_targets(tmp_path):
    wavs = [tmp_path / "beep.wav", tmp_path / "calm.wav"]
    samples = [_chapter(wavs[0], 9.0, 4.0, 1), _chapter(wavs[1], 9.0, None, 2)]
    gains = chapter_gains(wavs, [n / RATE for n in samples], -18.0, -3.0)
    assert gains is not None and gains[0].gain_db == gains[1].gain_db  # one gain: chapters keep their levels
    assert gains[0].limit and "alimiter" in gains[0].filter
    assert gains[1].limit is None and gains[1].filter == f"volume={gains[1].gain_db:.2f}dB"  # the gain alone
    encoded = encode_chapters(wavs, [w.with_suffix(".m4a") for w in wavs], samples, gains=gains, sample_rate=RATE)
    calm_before = loudness_of(wavs[1]).lufs
    calm_after = loudness_of(encoded[1], peak="true")
    assert calm_before is not None and calm_after.lufs is not None
    assert abs(calm_after.lufs - (calm_before + gains[1].gain_db)) <= 0.2  # linear: no limiter touched it
    marks = [ChapterMark("Beep", 0.0, chapter_span(samples[0]) / RATE),
             ChapterMark("Calm", chapter_span(samples[0]) / RATE, sum(map(chapter_span, samples)) / RATE)]
    book = join_chapters(encoded, tmp_path / "book.m4b", tags={"title": "Peaks"}, marks=marks, cover=None)
    measured = loudness_of(book, peak="true")
    assert measured.lufs is not None and abs(measured.lufs - -18.0) <= 0.5
    assert measured.peak_db is not None and measured.peak_db <= -3.0, measured
    quiet = chapter_gains(wavs, [n / RATE for n in samples], -40.0, -3.0)  # a target that keeps the beep under
    assert quiet is not None and all(g.limit is None for g in quiet)


def test_combined_loudness_is_the_energy_mean():
    assert combined_loudness([(-20.0, 10.0), (-20.0, 30.0)]) == -20.0
    assert round(combined_loudness([(-20.0, 10.0), (-10.0, 10.0), (None, 50.0)]), 2) == -12.6
    assert combined_loudness([(None, 3.0)]) is None


def test_a_silent_chapter_takes_the_books_gain_and_a_silent_book_none(tmp_path):
    silent = tmp_path / "silent.wav"
    with wave.open(str(silent), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(bytes(2 * RATE * 3))
    assert loudness_of(silent, peak="sample") == loudness_of(silent, peak="true") == Loudness(None, None)
    voiced = tmp_path / "voiced.wav"
    count = _chapter(voiced, 6.0, None, 3)
    gains = chapter_gains([silent, voiced], [3.0, count / RATE], -18.0, -3.0)
    assert gains is not None and gains[0] == gains[1] and gains[0].limit is None
    assert chapter_gains([silent], [3.0], -18.0, -3.0) is None  # nothing to normalise
