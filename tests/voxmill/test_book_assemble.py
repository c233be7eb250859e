"""Chapter assembly: trimmed edges, measured pauses, equal-power crossfades, exact chunk positions; FFMETADATA."""

from __future__ import annotations

import numpy as np

from voxmill.audio.formats import read_wav, wav_bytes
from voxmill.book.assemble import Pauses, assemble_chapter, crossfade_join, trim_silence
from voxmill.book.m4b import ChapterMark, ffmetadata
from voxmill.book.model import Chunk

RATE = 24000


def _tone(seconds: float, freq: float = 220.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def test_trim_keeps_a_bounded_edge_of_silence():
    pauses = Pauses(edge_keep_s=0.05)
    clip = np.concatenate([_silence(0.6), _tone(1.0), _silence(0.9)])
    trimmed = trim_silence(clip, RATE, pauses)
    assert abs(len(trimmed) / RATE - 1.1) < 0.02
    assert trim_silence(_silence(1.0), RATE, pauses).size == 0


def test_crossfade_join_positions_and_no_click():
    # the first tone ends at a peak: a plain cut would jump by 0.5 in one sample
    first = _tone(0.2525, freq=100.0)
    pieces = [first, _silence(0.3), _tone(0.4)]
    joined, starts = crossfade_join(pieces, 360)
    assert len(joined) == sum(len(p) for p in pieces) - 2 * 360
    assert starts == [0, len(first) - 360, len(first) + len(pieces[1]) - 720]
    steepest_in_tone = np.max(np.abs(np.diff(_tone(0.4))))
    assert np.max(np.abs(np.diff(joined))) <= steepest_in_tone * 1.05
    # equal power: two uncorrelated noises keep their power through the overlap
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 0.1, 4800).astype(np.float32), rng.normal(0, 0.1, 4800).astype(np.float32)
    mixed, _ = crossfade_join([a, b], 2400)
    middle = mixed[2400 - 600: 2400 + 600]
    assert 0.85 < np.sqrt(np.mean(middle ** 2)) / 0.1 < 1.15


def test_assembled_chapter_places_chunks_with_sentence_and_paragraph_pauses(tmp_path):
    pauses = Pauses()
    files = []
    for number, seconds in enumerate([1.0, 0.7, 1.3]):
        path = tmp_path / f"c{number}.wav"
        clip = np.concatenate([_silence(0.4), _tone(seconds, 200 + 50 * number), _silence(0.6)])
        path.write_bytes(wav_bytes(np.round(clip * 32767).astype("<i2"), RATE))
        files.append(path)
    chunks = [Chunk(1, 0, 0, "One.", False), Chunk(1, 1, 0, "Two.", True), Chunk(1, 2, 1, "Three.", True)]
    audio = assemble_chapter(1, list(zip(chunks, files)), tmp_path / "ch.wav", pauses)
    samples, rate, _ = read_wav((tmp_path / "ch.wav").read_bytes())
    assert rate == RATE and abs(len(samples) / RATE - audio.duration_s) < 1e-6
    spans = [(p.start_s, p.end_s) for p in audio.placed]
    # each chunk keeps its speech plus 2 × 50 ms of edge
    for (start, end), seconds in zip(spans, [1.0, 0.7, 1.3]):
        assert abs((end - start) - (seconds + 0.1)) < 0.02
    crossfade = pauses.crossfade_s
    assert abs(spans[1][0] - spans[0][1] - (pauses.sentence_s - 0.1 - 2 * crossfade)) < 0.02
    assert abs(spans[2][0] - spans[1][1] - (pauses.paragraph_s - 0.1 - 2 * crossfade)) < 0.02
    # the speech really is where the spans say, and silence between
    level = np.abs(samples.astype(np.float32) / 32768)
    for start, end in spans:
        assert level[int((start + 0.1) * RATE): int((end - 0.1) * RATE)].max() > 0.4
    assert level[int((spans[0][1] + 0.02) * RATE): int((spans[1][0] - 0.02) * RATE)].max() < 0.01
    assert abs(audio.duration_s - spans[-1][1] - (pauses.chapter_tail_s - crossfade)) < 0.02


def test_ffmetadata_chapters_in_milliseconds_with_escaping():
    text = ffmetadata({"title": "A=B; #1", "artist": None},
                      [ChapterMark("One", 0.0, 61.2345), ChapterMark("Two\\Three", 61.2345, 130.0)])
    assert text.splitlines() == [
        ";FFMETADATA1", "title=A\\=B\\; \\#1",
        "[CHAPTER]", "TIMEBASE=1/1000", "START=0", "END=61234", "title=One",
        "[CHAPTER]", "TIMEBASE=1/1000", "START=61234", "END=130000", "title=Two\\\\Three",
    ]
