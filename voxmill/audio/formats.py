"""Audio formats: what each one is called by ffmpeg, how to recognise it by its bytes, WAV in and out.

The one table of formats. The client checks response bodies with :func:`check_audio_body`; the local
server and the transcoder convert with :func:`convert_bytes` / :func:`convert_file`.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxmill.catalog import TTS_SAMPLE_RATE
from voxmill.errors import BadResponse, ConfigError, DiskFull, EmptyAudio, InvalidItem


@dataclass(frozen=True)
class AudioFormat:
    """How ffmpeg writes a format, and which file extension it gets."""

    name: str
    extension: str
    muxer: str
    codec: str
    #: opus only runs at 48 kHz; None: any rate
    fixed_rate: int | None = None
    lossy: bool = True


FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat("wav", "wav", "wav", "pcm_s16le", lossy=False),
    "pcm": AudioFormat("pcm", "pcm", "s16le", "pcm_s16le", lossy=False),
    "flac": AudioFormat("flac", "flac", "flac", "flac", lossy=False),
    "mp3": AudioFormat("mp3", "mp3", "mp3", "libmp3lame"),
    "aac": AudioFormat("aac", "aac", "adts", "aac"),
    # pydub/ffmpeg have no "m4a" muxer: ipod writes .m4a
    "m4a": AudioFormat("m4a", "m4a", "ipod", "aac"),
    # an audiobook: the same container as m4a, the extension players look for
    "m4b": AudioFormat("m4b", "m4b", "ipod", "aac"),
    "opus": AudioFormat("opus", "ogg", "ogg", "libopus", fixed_rate=48000),
    "ogg": AudioFormat("ogg", "ogg", "ogg", "libopus", fixed_rate=48000),
    "webm": AudioFormat("webm", "webm", "webm", "libopus", fixed_rate=48000),
}


def audio_format(name: str) -> AudioFormat:
    """The format called ``name`` (case-insensitive), or a ConfigError listing the known ones."""
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown audio format {name!r}; known: {', '.join(FORMATS)}") from None


def detect_format(data: bytes) -> str | None:
    """Recognise an audio container by its magic bytes; None when it is none of ours."""
    head = data[:12]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:  # ADTS: sync word, layer 00
            return "aac"
        if head[1] & 0xE0 == 0xE0:  # MPEG audio frame sync
            return "mp3"
    return None


#: what a requested format's bytes are recognised as
_EXPECTED_MAGIC = {"opus": "ogg", "ogg": "ogg", "m4a": "m4a", "webm": "webm"}


def check_audio_body(data: bytes, expected_format: str, *, total: int | None = None) -> None:
    """Raise BadResponse unless a body is complete audio in ``expected_format``.

    ``data`` is the whole body, or its first bytes (at least the header: :data:`AUDIO_HEAD_BYTES`) with
    ``total`` the whole body's size. WAV is checked for a data chunk whose declared size the body actually
    holds, so a body cut short in transit is caught; raw PCM must be a non-empty whole number of 16-bit samples.
    """
    fmt = expected_format.lower()
    size = len(data) if total is None else total
    if not size:
        raise EmptyAudio(f"empty body where {fmt} audio was expected")
    if fmt == "pcm":
        if size % 2:
            raise BadResponse(f"PCM body of {size} bytes is not whole 16-bit samples (truncated?)")
        if detect_format(data) is not None:
            raise BadResponse(f"PCM was asked for but the body is {detect_format(data)}")
        return
    found = detect_format(data)
    wanted = _EXPECTED_MAGIC.get(fmt, fmt)
    if found != wanted:
        preview = data[:32].decode("utf-8", "replace").replace("\n", " ")
        raise BadResponse(f"expected {fmt} audio but the body is {found or 'not audio'}: {preview!r}")
    if fmt == "wav":
        _check_wav_complete(data, size)


#: how much of a body :func:`check_audio_body` needs to see: any header voxmill or the API writes
AUDIO_HEAD_BYTES = 64 * 1024


def _check_wav_complete(head: bytes, size: int) -> None:
    offset = 12
    while offset + 8 <= len(head):
        chunk_id, declared = struct.unpack("<4sI", head[offset : offset + 8])
        if chunk_id == b"data":
            have = size - offset - 8
            # 0 and 0xFFFFFFFF are used by streaming writers that did not know the size
            if declared not in (0, 0xFFFFFFFF) and have < declared:
                raise BadResponse(f"WAV body is truncated: data chunk declares {declared} bytes, {have} arrived")
            if have == 0 and declared in (0, 0xFFFFFFFF):
                raise EmptyAudio("WAV body holds no audio samples (the text may have nothing to speak)")
            return
        offset += 8 + declared + (declared & 1)
    raise BadResponse("WAV body has no data chunk (truncated?)")


def wav_bytes(samples: np.ndarray, sample_rate: int, channels: int = 1) -> bytes:
    """16-bit PCM WAV from int16 samples (interleaved when ``channels`` > 1)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return buffer.getvalue()


def read_wav(data: bytes) -> tuple[np.ndarray, int, int]:
    """(int16 samples, sample rate, channels) of a 16-bit PCM WAV body: the whole frames that are there
    (a truncated body gives fewer than its header claims); BadResponse if it is not 16-bit PCM WAV."""
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            if reader.getsampwidth() != 2:
                raise BadResponse(f"WAV sample width is {8 * reader.getsampwidth()} bits, expected 16")
            frames = reader.readframes(reader.getnframes())
            channels = reader.getnchannels()
            usable = len(frames) - len(frames) % (2 * channels)
            return np.frombuffer(frames[:usable], dtype="<i2"), reader.getframerate(), channels
    except (wave.Error, EOFError) as exc:
        raise BadResponse(f"not a PCM WAV body ({exc or type(exc).__name__})") from None


def ffmpeg_path() -> str:
    """The ffmpeg binary, or a ConfigError telling how to install it."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise ConfigError("ffmpeg is not installed: `apt-get install ffmpeg` (or `make setup`)")
    return path


def convert_file(
    source: Path,
    target: Path,
    output_format: str,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    bitrate: str | None = None,
    input_format: str | None = None,
    filters: str | None = None,
) -> None:
    """Transcode ``source`` into ``target`` with ffmpeg; InvalidItem with ffmpeg's reason if it fails."""
    fmt = audio_format(output_format)
    cmd = [ffmpeg_path(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    if input_format == "pcm":
        cmd += ["-f", "s16le", "-ar", str(sample_rate or TTS_SAMPLE_RATE), "-ac", "1"]
    cmd += ["-i", str(source), "-vn", "-map_metadata", "-1"]
    if filters:
        cmd += ["-af", filters]
    rate = fmt.fixed_rate or sample_rate
    if rate:
        cmd += ["-ar", str(rate)]
    if channels:
        cmd += ["-ac", str(channels)]
    cmd += ["-c:a", fmt.codec]
    if bitrate and fmt.lossy:
        cmd += ["-b:a", bitrate]
    cmd += ["-f", fmt.muxer, str(target)]
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").strip().splitlines()
        if "No space left on device" in result.stderr.decode("utf-8", "replace"):
            raise DiskFull.writing(str(target))
        raise InvalidItem(f"ffmpeg could not convert {source.name} to {fmt.name}: {' '.join(reason[-3:])[:500]}")


def convert_bytes(
    data: bytes,
    output_format: str,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    bitrate: str | None = None,
    input_format: str | None = None,
) -> bytes:
    """Transcode an in-memory clip (through temp files: mp4 muxers need a seekable output)."""
    fmt = audio_format(output_format)
    with tempfile.TemporaryDirectory(prefix="voxmill-") as tmp:
        source = Path(tmp) / f"in.{input_format or detect_format(data) or 'bin'}"
        target = Path(tmp) / f"out.{fmt.extension}"
        source.write_bytes(data)
        convert_file(
            source, target, output_format,
            sample_rate=sample_rate, channels=channels, bitrate=bitrate, input_format=input_format,
        )
        return target.read_bytes()


__all__ = [
    "AUDIO_HEAD_BYTES",
    "FORMATS",
    "AudioFormat",
    "audio_format",
    "check_audio_body",
    "convert_bytes",
    "convert_file",
    "detect_format",
    "ffmpeg_path",
    "read_wav",
    "wav_bytes",
]
