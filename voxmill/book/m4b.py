"""The whole book with ffmpeg, streamed from the chapter WAVs (never in memory): join, loudness, m4b, files.

Loudness follows EBU R128 measurement (ITU-R BS.1770 integrated loudness, true peak) with a spoken-word
target: −18 LUFS integrated, true peak ≤ −3 dBTP by default — inside ACX's −23…−18 dB RMS window and
under its −3 dB peak ceiling. It is measured over the joined book (ffmpeg ``ebur128``, streaming) and
the same gain and true-peak limiter are applied to the m4b and to every per-chapter file, so chapters
keep their relative levels.

The m4b carries a chapter mark per chapter (an FFMETADATA file with ``[CHAPTER]`` blocks in
milliseconds), the cover as an attached picture, and title/album/artist/composer (narrator) tags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from voxmill.audio.formats import audio_format
from voxmill.audio.measure import ffmpeg_command, integrated_loudness_of, run_tool
from voxmill.audio.transcode import atomic_output, write_bytes_atomic

#: the spoken-word defaults (see the module docstring)
DEFAULT_LOUDNESS_LUFS = -18.0
DEFAULT_TRUE_PEAK_DB = -3.0
DEFAULT_BITRATE = "64k"


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


__all__ = ["DEFAULT_BITRATE", "DEFAULT_LOUDNESS_LUFS", "DEFAULT_TRUE_PEAK_DB", "ChapterMark",
           "book_loudness_filter", "concat_list", "cut_chapter", "ffmetadata", "join_wavs", "write_chapter_file",
           "write_m4b"]
