"""The whole book with ffmpeg, streamed from the chapter WAVs (never in memory): loudness, m4b, chapter files.

Loudness follows EBU R128 measurement (ITU-R BS.1770 integrated loudness, true peak) with a spoken-word
target: −18 LUFS integrated, true peak ≤ −3 dBTP by default — inside ACX's −23…−18 dB RMS window and
under its −3 dB peak ceiling. One gain is applied to the whole book, so chapters keep their relative levels.

The m4b carries a chapter mark per chapter (an FFMETADATA file with ``[CHAPTER]`` blocks in
milliseconds), the cover as an attached picture, and title/album/artist/composer (narrator) tags.

Mastering measures each chapter once and encodes it once, chapters in parallel (:func:`chapter_gains`,
:func:`encode_chapters`): the gain alone where it keeps the chapter's peaks 2 dB under the true-peak target,
a limiter at the native rate only on the chapters whose peaks need one. The encoded chapters are joined
without re-encoding (:func:`join_chapters`). AAC frames hold 1024 samples and ffmpeg's encoder
primes every stream with one frame of silence, which a stream copy keeps: each chapter is padded to whole
frames, so in the book it spans exactly ``padded + 1024`` samples (:func:`chapter_span`) and its speech
starts 1024 samples after its mark.

The earlier whole-book path (:func:`join_wavs`, :func:`book_loudness_filter`, :func:`write_m4b`: the book
joined as PCM, measured, corrected through a 4×-oversampled true-peak limiter that also runs in one AAC
encode of the whole book) is kept as the benchmark's baseline.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from voxmill.audio.formats import audio_format
from voxmill.audio.measure import ffmpeg_command, integrated_loudness_of, loudness_of, run_tool
from voxmill.audio.transcode import atomic_output, write_bytes_atomic

#: the spoken-word defaults (see the module docstring)
DEFAULT_LOUDNESS_LUFS = -18.0
DEFAULT_TRUE_PEAK_DB = -3.0
DEFAULT_BITRATE = "64k"
#: ffmpeg's AAC coders: ``fast`` (the chapter path's default: ~35% less CPU than ``twoloop``, ffmpeg's own
#: default; on piper speech at 64 kb/s mono its SNR measured higher, 31 vs 25 dB) or ``twoloop``
AAC_CODERS = ("fast", "twoloop")
DEFAULT_AAC_CODER = "fast"
#: samples per AAC frame, and the encoder's priming (one frame of silence at the start of every stream)
AAC_FRAME = 1024
AAC_PRIMING = 1024

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ChapterMark:
    """A chapter's title and its span in the book, in seconds."""

    title: str
    start_s: float
    end_s: float


def _escape(value: str) -> str:
    """FFMETADATA escaping: ``= ; # \\`` and newlines get a backslash."""
    out = []
    for char in value:
        if char in "=;#\\\n":
            out.append("\\")
        out.append(char)
    return "".join(out)


def ffmetadata(tags: Mapping[str, str | None], marks: Sequence[ChapterMark]) -> str:
    """An FFMETADATA1 document: global tags, then one ``[CHAPTER]`` block per mark (TIMEBASE 1/1000)."""
    lines = [";FFMETADATA1"]
    lines += [f"{key}={_escape(value)}" for key, value in tags.items() if value]
    for mark in marks:
        lines += [
            "[CHAPTER]",
            "TIMEBASE=1/1000",
            f"START={round(mark.start_s * 1000)}",
            f"END={round(mark.end_s * 1000)}",
            f"title={_escape(mark.title)}",
        ]
    return "\n".join(lines) + "\n"


def concat_list(paths: Sequence[Path]) -> str:
    """An ffmpeg concat-demuxer list of these files (absolute paths, quotes escaped)."""
    return "".join("file '" + str(Path(p).resolve()).replace("'", "'\\''") + "'\n" for p in paths)


def join_wavs(chapter_wavs: Sequence[Path], target: Path) -> Path:
    """Concatenate same-format WAVs into ``target`` by streaming (ffmpeg concat demuxer, no re-encode)."""
    listing = target.with_name(target.name + ".list")
    write_bytes_atomic(listing, concat_list(chapter_wavs).encode())
    with atomic_output(target) as temp:
        run_tool(ffmpeg_command("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", "-f", "wav",
                                str(temp)), what=f"could not join the chapters into {target.name}")
    listing.unlink(missing_ok=True)
    return target


def book_loudness_filter(
    book_wav: Path, target_lufs: float | None, true_peak_db: float, sample_rate: int
) -> str | None:
    """The filter that brings the book to ``target_lufs``: one gain for the whole book, then a true-peak limiter.

    The limiter runs at 4× the rate (so it sees inter-sample peaks) with a 1 dB margin under the ceiling
    (AAC encoding overshoots a little). Speech often peaks more than 15 dB over its loudness, so the
    limiter lowers the loudness it was given: the gain is measured again through the limiter and corrected
    (at most three times, until within 0.2 LU). Measuring is ffmpeg's streaming ``ebur128``, through the
    limiter at the native rate (3× cheaper than oversampled, and within a few tenths of a LU of it). loudnorm's own
    second pass is not used: it falls back to dynamic mode whenever the gain meets the ceiling, and misses
    the target on short inputs. None when no normalisation is asked, or the book is silent.
    """
    if target_lufs is None:
        return None
    measured = integrated_loudness_of(book_wav)
    if measured is None:
        return None  # silence: nothing to normalise
    ceiling = 10 ** ((true_peak_db - 1.0) / 20)
    gain = target_lufs - measured
    for _ in range(3):
        limited = integrated_loudness_of(book_wav, filters=_gain_filter(gain, ceiling, sample_rate, oversample=1))
        error = target_lufs - (limited if limited is not None else target_lufs)
        if abs(error) < 0.2:
            break
        gain += error
    return _gain_filter(gain, ceiling, sample_rate)


def _gain_filter(gain_db: float, ceiling: float, sample_rate: int, oversample: int = 4) -> str:
    limiter = f"alimiter=limit={ceiling:.4f}:attack=1:release=50:level=disabled"
    if oversample == 1:
        return f"volume={gain_db:.2f}dB,{limiter}"
    return f"volume={gain_db:.2f}dB,aresample={oversample * sample_rate},{limiter},aresample={sample_rate}"


def write_m4b(
    book_wav: Path,
    target: Path,
    *,
    tags: Mapping[str, str | None],
    marks: Sequence[ChapterMark],
    cover: Path | None,
    filters: str | None,
    sample_rate: int,
    bitrate: str = DEFAULT_BITRATE,
) -> Path:
    """Encode the book to AAC in an m4b with chapter marks, tags and the cover (streamed by ffmpeg)."""
    metadata = target.with_name(target.name + ".ffmetadata")
    write_bytes_atomic(metadata, ffmetadata(tags, marks).encode())
    args = ["-i", str(book_wav), "-f", "ffmetadata", "-i", str(metadata)]
    if cover is not None:
        args += ["-i", str(cover)]
    args += ["-map", "0:a", "-map_metadata", "1", "-map_chapters", "1"]
    if cover is not None:
        args += ["-map", "2:v", "-c:v", "copy", "-disposition:v:0", "attached_pic"]
    if filters:
        args += ["-af", filters]
    args += ["-ar", str(sample_rate), "-ac", "1", "-c:a", "aac", "-b:a", bitrate, "-movflags", "+faststart"]
    with atomic_output(target) as temp:
        run_tool(ffmpeg_command(*args, "-f", "ipod", str(temp)), what=f"could not write {target.name}")
    metadata.unlink(missing_ok=True)
    return target


def parallel_map(work: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """``work`` over ``items`` in threads (each runs an ffmpeg process, so they run on every core), in order."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(items) or 1))
    if workers == 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="voxmill-master") as pool:
        return list(pool.map(work, items))


def padded_frames(samples: int) -> int:
    """``samples`` rounded up to whole AAC frames."""
    return math.ceil(samples / AAC_FRAME) * AAC_FRAME


def chapter_span(samples: int) -> int:
    """Samples a chapter of ``samples`` spans in the joined book: padded to whole frames, plus the priming."""
    return padded_frames(samples) + AAC_PRIMING


def combined_loudness(measures: Sequence[tuple[float | None, float]]) -> float | None:
    """The loudness of chapters played in a row, from each one's (integrated LUFS, seconds): energy-weighted.

    BS.1770 gates blocks against the whole programme; per-chapter gating differs from it by hundredths of a
    LU for speech at an even level. None when every chapter is silent.
    """
    voiced = [(lufs, seconds) for lufs, seconds in measures if lufs is not None and seconds > 0]
    if not voiced:
        return None
    energy = sum(seconds * 10 ** (lufs / 10) for lufs, seconds in voiced) / sum(s for _, s in voiced)
    return 10 * math.log10(energy)


#: headroom under the true-peak target that the chapter path keeps: 1 dB for the AAC encoder's overshoot (as
#: the whole-book path) and 1 dB for inter-sample peaks, which it does not oversample to see
AAC_MARGIN_DB = 1.0
INTER_SAMPLE_MARGIN_DB = 1.0


@dataclass(frozen=True)
class ChapterGain:
    """What mastering does to one chapter: the book's gain, then a limiter only where the chapter's peaks
    would pass the ceiling (``limit``, a linear sample peak; None: the gain alone keeps it under)."""

    gain_db: float
    limit: float | None = None

    @property
    def filter(self) -> str:
        """The ffmpeg filter chain: ``volume``, then ``alimiter`` at the native rate when one is needed."""
        gain = f"volume={self.gain_db:.2f}dB"
        if self.limit is None:
            return gain
        return f"{gain},alimiter=limit={self.limit:.4f}:attack=1:release=50:level=disabled"


def chapter_gains(
    chapter_wavs: Sequence[Path], durations: Sequence[float], target_lufs: float | None, true_peak_db: float,
    workers: int | None = None,
) -> list[ChapterGain] | None:
    """One gain for the whole book (chapters keep their relative levels) and a limiter where peaks demand it.

    Every chapter is measured once, in parallel: integrated loudness and sample peak (ffmpeg ``ebur128``).
    A chapter whose peak after the gain stays under the ceiling (``true_peak_db`` less :data:`AAC_MARGIN_DB`
    and :data:`INTER_SAMPLE_MARGIN_DB`) gets the gain alone, and its loudness is then known without measuring
    again (gain is linear). The others get a limiter at that ceiling, at the native rate: they alone are
    measured again through it, and the gain is corrected for what the limiter took (at most three times,
    until the book is within 0.2 LU). None when no normalisation is asked, or the book is silent.
    """
    if target_lufs is None:
        return None
    levels = parallel_map(lambda wav: loudness_of(wav, peak="sample"), chapter_wavs, workers)
    measured = combined_loudness([(level.lufs, seconds) for level, seconds in zip(levels, durations, strict=True)])
    if measured is None:
        return None
    ceiling_db = true_peak_db - AAC_MARGIN_DB - INTER_SAMPLE_MARGIN_DB
    ceiling = 10 ** (ceiling_db / 20)

    def over(gain: float) -> list[int]:
        return [i for i, level in enumerate(levels) if level.peak_db is not None and level.peak_db + gain > ceiling_db]

    gain = target_lufs - measured
    for _ in range(3):
        limited = over(gain)
        if not limited:
            break  # gain alone: the book is at the target exactly
        through = ChapterGain(gain, ceiling).filter
        lufs = parallel_map(lambda i, chain=through: loudness_of(chapter_wavs[i], filters=chain).lufs, limited, workers)
        found = dict(zip(limited, lufs, strict=True))
        after = [(found[i] if i in found else (level.lufs + gain if level.lufs is not None else None), seconds)
                 for i, (level, seconds) in enumerate(zip(levels, durations, strict=True))]
        reached = combined_loudness(after)
        error = target_lufs - (reached if reached is not None else target_lufs)
        if abs(error) < 0.2:
            break
        gain += error
    limited = set(over(gain))
    return [ChapterGain(round(gain, 2), ceiling if i in limited else None) for i in range(len(levels))]


def encode_chapter(chapter_wav: Path, target: Path, samples: int, *, filters: str | None, sample_rate: int,
                   bitrate: str = DEFAULT_BITRATE, coder: str = DEFAULT_AAC_CODER) -> Path:
    """One chapter to AAC (mp4), padded with silence to whole frames (see the module docstring)."""
    chain = ",".join(f for f in (filters, f"apad=whole_len={padded_frames(samples)}") if f)
    args = ["-i", str(chapter_wav), "-vn", "-map_metadata", "-1", "-af", chain, "-ar", str(sample_rate), "-ac", "1",
            "-c:a", "aac", "-aac_coder", coder, "-b:a", bitrate]
    with atomic_output(target) as temp:
        run_tool(ffmpeg_command(*args, "-f", "ipod", str(temp)), what=f"could not encode {target.name}")
    return target


def encode_chapters(chapter_wavs: Sequence[Path], targets: Sequence[Path], samples: Sequence[int], *,
                    gains: Sequence[ChapterGain] | None, sample_rate: int, bitrate: str = DEFAULT_BITRATE,
                    coder: str = DEFAULT_AAC_CODER, workers: int | None = None) -> list[Path]:
    """:func:`encode_chapter` for every chapter at its gain (None: as it is), in parallel (one ffmpeg per core)."""
    filters = [g.filter for g in gains] if gains is not None else [None] * len(chapter_wavs)
    jobs = list(zip(chapter_wavs, targets, samples, filters, strict=True))
    return parallel_map(lambda job: encode_chapter(job[0], job[1], job[2], filters=job[3], sample_rate=sample_rate,
                                                   bitrate=bitrate, coder=coder), jobs, workers)


def join_chapters(encoded: Sequence[Path], target: Path, *, tags: Mapping[str, str | None],
                  marks: Sequence[ChapterMark], cover: Path | None) -> Path:
    """The encoded chapters joined into an m4b by stream copy (no re-encode), with marks, tags and cover."""
    listing = target.with_name(target.name + ".list")
    metadata = target.with_name(target.name + ".ffmetadata")
    write_bytes_atomic(listing, concat_list(encoded).encode())
    write_bytes_atomic(metadata, ffmetadata(tags, marks).encode())
    args = ["-f", "concat", "-safe", "0", "-i", str(listing), "-f", "ffmetadata", "-i", str(metadata)]
    if cover is not None:
        args += ["-i", str(cover)]
    args += ["-map", "0:a", "-map_metadata", "1", "-map_chapters", "1", "-c:a", "copy"]
    if cover is not None:
        args += ["-map", "2:v", "-c:v", "copy", "-disposition:v:0", "attached_pic"]
    with atomic_output(target) as temp:
        run_tool(ffmpeg_command(*args, "-movflags", "+faststart", "-f", "ipod", str(temp)),
                 what=f"could not join the chapters into {target.name}")
    listing.unlink(missing_ok=True)
    metadata.unlink(missing_ok=True)
    return target


def retag(source: Path, target: Path, *, tags: Mapping[str, str | None]) -> Path:
    """A copy of an encoded chapter with its own track tags (stream copy)."""
    args = ["-i", str(source), "-map", "0:a", "-map_metadata", "-1", "-c", "copy"]
    for key, value in tags.items():
        if value:
            args += ["-metadata", f"{key}={value}"]
    with atomic_output(target) as temp:
        run_tool(ffmpeg_command(*args, "-f", "ipod", str(temp)), what=f"could not write {target.name}")
    return target


def cut_chapter(book_m4b: Path, target: Path, mark: ChapterMark, *, tags: Mapping[str, str | None]) -> Path:
    """A chapter cut out of the encoded book without re-encoding (AAC frames are copied; ±43 ms at 24 kHz)."""
    args = ["-ss", f"{mark.start_s:.3f}", "-to", f"{mark.end_s:.3f}", "-i", str(book_m4b), "-map", "0:a",
            "-map_metadata", "-1", "-map_chapters", "-1"]
    for key, value in tags.items():
        if value:
            args += ["-metadata", f"{key}={value}"]
    with atomic_output(target) as temp:
        run_tool(ffmpeg_command(*args, "-c", "copy", "-f", "ipod", str(temp)), what=f"could not write {target.name}")
    return target


def write_chapter_file(
    chapter_wav: Path,
    target: Path,
    output_format: str,
    *,
    tags: Mapping[str, str | None],
    filters: str | None,
    sample_rate: int,
    bitrate: str | None = DEFAULT_BITRATE,
) -> Path:
    """One chapter in ``output_format`` (m4b, m4a, mp3, opus, flac…) with track tags, at the book's gain."""
    fmt = audio_format(output_format)
    args = ["-i", str(chapter_wav), "-vn", "-map_metadata", "-1"]
    for key, value in tags.items():
        if value:
            args += ["-metadata", f"{key}={value}"]
    if filters:
        args += ["-af", filters]
    args += ["-ar", str(fmt.fixed_rate or sample_rate), "-ac", "1", "-c:a", fmt.codec]
    if bitrate and fmt.lossy:
        args += ["-b:a", bitrate]
    with atomic_output(target) as temp:
        run_tool(ffmpeg_command(*args, "-f", fmt.muxer, str(temp)), what=f"could not write {target.name}")
    return target


__all__ = ["AAC_CODERS", "AAC_FRAME", "AAC_MARGIN_DB", "AAC_PRIMING", "DEFAULT_AAC_CODER", "DEFAULT_BITRATE",
           "DEFAULT_LOUDNESS_LUFS", "DEFAULT_TRUE_PEAK_DB", "INTER_SAMPLE_MARGIN_DB", "ChapterGain", "ChapterMark",
           "book_loudness_filter", "chapter_gains", "chapter_span", "combined_loudness", "concat_list", "cut_chapter",
           "encode_chapter", "encode_chapters", "ffmetadata", "join_chapters", "join_wavs", "padded_frames",
           "parallel_map", "retag", "write_chapter_file", "write_m4b"]
