"""Measure audio files: what ffprobe says they are, how loud they are, and whether they are usable at all.

Also home of the one small ffmpeg/ffprobe runner the other audio modules (``transcode``, ``split``) reuse,
so every external call fails the same way: an :class:`~voxmill.errors.InvalidItem` naming the file and
ffmpeg's own last words.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from voxmill.audio.formats import ffmpeg_path
from voxmill.audio.loudness import LoudnessMeter
from voxmill.errors import ConfigError, DiskFull, InvalidItem, TooShortAudio, TruncatedAudio
from voxmill.identity import content_hasher, file_hash
from voxmill.limits import InputLimits, InputTooLarge

#: BS.1770 gates 400 ms blocks: shorter clips have no integrated loudness
MIN_LOUDNESS_SECONDS = 0.4


@dataclass(frozen=True)
class ProbeResult:
    """What ffprobe found in a file: its container and its first audio stream."""

    path: Path
    #: our name for the format where we know it (wav, mp3, opus, m4a, ...), else ffprobe's first name
    format: str
    codec: str
    duration_s: float
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class AudioInfo:
    """Measurements of one written audio file (what the ledger records about an output)."""

    format: str
    duration_s: float
    sample_rate: int
    channels: int
    bytes: int
    sha256: str
    #: integrated loudness (BS.1770); None for clips under 0.4 s, silence, or when not measured
    lufs: float | None
    #: sample peak in dBFS; None for digital silence or when not measured
    peak_dbfs: float | None


# --- the runner -----------------------------------------------------------------------------------------


def ffprobe_path() -> str:
    """The ffprobe binary (ships with ffmpeg), or a ConfigError telling how to install it."""
    path = shutil.which("ffprobe")
    if path is None:
        raise ConfigError("ffprobe is not installed: `apt-get install ffmpeg` (or `make setup`)")
    return path


def ffmpeg_command(*args: str, loglevel: str = "error") -> list[str]:
    """An ffmpeg command line with our fixed preamble (no stdin, no banner, quiet unless asked)."""
    return [ffmpeg_path(), "-nostdin", "-hide_banner", "-nostats", "-loglevel", loglevel, *args]


def run_tool(cmd: Sequence[str], *, what: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg/ffprobe; on failure raise InvalidItem ``"{what}: <ffmpeg's last lines>"``."""
    result = subprocess.run(list(cmd), input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        if b"No space left on device" in result.stderr or b"Disk quota exceeded" in result.stderr:
            raise DiskFull.writing(f"an output ({what})", _stderr_tail(result.stderr))
        raise InvalidItem(f"{what}: {_stderr_tail(result.stderr)}")
    return result


def _stderr_tail(stderr: bytes) -> str:
    lines = [line for line in stderr.decode("utf-8", "replace").strip().splitlines() if line.strip()]
    return " ".join(lines[-3:])[:500] or "(no message)"


# --- probing --------------------------------------------------------------------------------------------

#: ffprobe format_name -> our format name (ogg depends on the codec, see _our_format)
_FORMAT_NAMES = {
    "wav": "wav",
    "mp3": "mp3",
    "flac": "flac",
    "aac": "aac",
    "matroska,webm": "webm",
    "mov,mp4,m4a,3gp,3g2,mj2": "m4a",
    "aiff": "aiff",
}


def _our_format(format_name: str, codec: str) -> str:
    if format_name == "ogg":
        return "opus" if codec == "opus" else "ogg"
    return _FORMAT_NAMES.get(format_name, format_name.split(",")[0])


def probe(path: Path) -> ProbeResult:
    """Check that ``path`` is decodable audio and describe it; InvalidItem (naming file and fix) otherwise.

    Catches a missing file, a zero-length file, bytes ffmpeg cannot parse, and a container without an
    audio stream. It reads headers only: a file corrupt past its header passes here and fails at decode.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidItem(f"audio file {str(path)!r} does not exist; check the path in the manifest")
    if path.stat().st_size == 0:
        raise InvalidItem(f"audio file {str(path)!r} is empty (0 bytes); re-export it or drop the row")
    cmd = [
        ffprobe_path(), "-v", "error", "-of", "json",
        "-show_entries", "format=format_name,duration:stream=codec_type,codec_name,sample_rate,channels,duration",
        str(path),
    ]
    try:
        result = run_tool(cmd, what=f"audio file {str(path)!r} is not readable audio")
    except InvalidItem as exc:
        raise InvalidItem(f"{exc.message}; re-export it or convert it with ffmpeg") from None
    found = json.loads(result.stdout or b"{}")
    audio = [s for s in found.get("streams", []) if s.get("codec_type") == "audio"]
    if not audio:
        raise InvalidItem(f"audio file {str(path)!r} has no audio stream; extract the audio track first")
    stream = audio[0]
    container = found.get("format", {})
    duration = _float(container.get("duration")) or _float(stream.get("duration"))
    rate = int(stream.get("sample_rate") or 0)
    if duration is None or rate <= 0:
        raise InvalidItem(
            f"audio file {str(path)!r} has no usable duration or sample rate (corrupt?); re-export it"
        )
    codec = str(stream.get("codec_name", ""))
    return ProbeResult(
        path=path,
        format=_our_format(str(container.get("format_name", "")), codec),
        codec=codec,
        duration_s=duration,
        sample_rate=rate,
        channels=int(stream.get("channels") or 1),
    )


def _float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


#: shortest ASR input worth a request, seconds
MIN_ASR_SECONDS = 0.1
#: a file may hold this much less than its header says (seconds, or a fraction of the declared duration,
#: whichever is more: a header's estimate is not exact) before it counts as truncated
_TRUNCATION_TOLERANCE_S = 0.1
_TRUNCATION_TOLERANCE_SHARE = 0.01


def check_complete(probed: ProbeResult, *, min_seconds: float = MIN_ASR_SECONDS) -> None:
    """Raise unless the file holds what its header declares and lasts ``min_seconds`` or more.

    WAV: the data chunk's declared size against the bytes the file holds. MP3: the duration ffprobe reads
    from the header (Xing/Info frame count) against the frames actually there. TruncatedAudio or
    TooShortAudio, naming the file, both durations and the fix.
    """
    where = f"audio file {str(probed.path)!r}"
    limits = InputLimits.from_env()
    if probed.duration_s > limits.audio_hours * 3600:  # checked before anything reads the frames
        raise InputTooLarge(
            f"{where} declares {probed.duration_s / 3600:,.1f} h of audio, over the limit of {limits.audio_hours:g} h "
            f"(audio_hours): a corrupt or hostile header; {limits.fix('audio_hours')}"
        )
    actual = probed.duration_s
    declared = None
    if probed.format == "wav":
        declared = _wav_declared_seconds(probed.path)
    elif probed.codec == "mp3":
        actual = _mp3_frames_seconds(probed)
        declared = probed.duration_s
    if probed.codec == "mp3":
        cut = mp3_cut_frame(probed.path)
        if cut is not None:
            raise TruncatedAudio(
                f"{where} is truncated: its last MP3 frame starts at byte {cut[0]:,} and needs {cut[1]:,} bytes, but "
                f"the file ends {cut[2]:,} bytes in; copy or download it again"
            )
    if declared is not None and actual < declared - max(_TRUNCATION_TOLERANCE_S,
                                                        _TRUNCATION_TOLERANCE_SHARE * declared):
        raise TruncatedAudio(
            f"{where} is truncated: its header declares {declared:.3f} s but it holds {actual:.3f} s; "
            f"copy or download it again"
        )
    if actual < min_seconds:
        raise TooShortAudio(
            f"{where} lasts {actual:.3f} s, under the minimum of {min_seconds} s; drop the row or re-export it"
        )


def _wav_declared_seconds(path: Path) -> float | None:
    """Seconds the WAV header's data chunk declares (None if unknown: streaming size, not PCM-like)."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, byte_rate = 12, 0
    while offset + 8 <= len(head):
        chunk_id, size = struct.unpack_from("<4sI", head, offset)
        if chunk_id == b"fmt " and offset + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, offset + 16)[0]
        elif chunk_id == b"data":
            return size / byte_rate if byte_rate and size not in (0, 0xFFFFFFFF) else None
        offset += 8 + size + (size & 1)
    return None


#: MPEG audio layer III bitrates (kbit/s) by bitrate index: MPEG-1, and MPEG-2/2.5
_MP3_BITRATES = {
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
#: sample rates by version bits (0: MPEG-2.5, 2: MPEG-2, 3: MPEG-1) and rate index
_MP3_RATES = {0: (11025, 12000, 8000), 2: (22050, 24000, 16000), 3: (44100, 48000, 32000)}


def _mp3_frame_length(header: bytes) -> int | None:
    """Bytes of the layer III frame whose 4-byte header this is; None when it is no such header."""
    if header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer = (header[1] >> 3) & 0x3, (header[1] >> 1) & 0x3
    bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 0x3, (header[2] >> 1) & 0x1
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    bitrate = _MP3_BITRATES[1 if version == 3 else 2][bitrate_index] * 1000
    rate = _MP3_RATES[version][rate_index]
    return (144 if version == 3 else 72) * bitrate // rate + padding


def mp3_cut_frame(path: Path) -> tuple[int, int, int] | None:
    """(start, length, file size) of an MP3's last frame when the file ends inside it, else None.

    Walks the frame headers from the first one (after any ID3v2 tag): a file cut mid-frame (a copy or a
    download that stopped) ends in a frame its header says is longer, whether or not a Xing/Info header
    declares the duration. A cut exactly at a frame boundary leaves a shorter valid file: only a Xing
    header (see :func:`check_complete`) can tell that one.
    """
    import mmap

    size = path.stat().st_size
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position = 0
        if data[:3] == b"ID3" and size >= 10:
            tag = data[6] << 21 | data[7] << 14 | data[8] << 7 | data[9]
            position = 10 + tag + (10 if data[5] & 0x10 else 0)
        first = data.find(b"\xff", position)
        while first != -1 and first + 4 <= size and _mp3_frame_length(data[first:first + 4]) is None:
            first = data.find(b"\xff", first + 1)
        if first == -1:
            return None
        position = first
        while position + 4 <= size:
            length = _mp3_frame_length(data[position:position + 4])
            if length is None:
                return None  # a tag or trailing bytes after the last whole frame
            if position + length > size:
                return position, length, size
            position += length
        return None


def _mp3_frames_seconds(probed: ProbeResult) -> float:
    """Seconds of the MP3 frames actually in the file (counted by ffprobe without decoding)."""
    cmd = [ffprobe_path(), "-v", "error", "-count_packets", "-select_streams", "a:0", "-of", "json",
           "-show_entries", "stream=nb_read_packets", str(probed.path)]
    found = json.loads(run_tool(cmd, what=f"audio file {str(probed.path)!r} is not readable audio").stdout or b"{}")
    streams = found.get("streams") or [{}]
    packets = int(streams[0].get("nb_read_packets") or 0)
    samples_per_frame = 1152 if probed.sample_rate >= 32000 else 576  # MPEG-1 vs MPEG-2/2.5 layer III
    return packets * samples_per_frame / probed.sample_rate


# --- measuring ------------------------------------------------------------------------------------------


def decode_float32(path: Path, *, sample_rate: int | None = None, channels: int | None = None) -> np.ndarray:
    """Decode a whole file to float32 samples shaped (frames, channels), natively or at the asked rate.

    Holds the whole clip in memory (4 bytes per sample): fine for outputs and ASR inputs, not for hours.
    """
    if sample_rate is None or channels is None:
        info = probe(path)
        sample_rate = sample_rate or info.sample_rate
        channels = channels or info.channels
    rate, chans = sample_rate, channels
    cmd = ffmpeg_command("-i", str(path), "-vn", "-f", "f32le", "-ac", str(chans), "-ar", str(rate), "-")
    result = run_tool(cmd, what=f"could not decode {str(path)!r}")
    samples = np.frombuffer(result.stdout, dtype="<f4")
    return samples[: len(samples) - len(samples) % chans].reshape(-1, chans)


def loudness_lufs(samples: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness (BS.1770, pyloudnorm's filters and gates) of (frames, channels) or (frames,) float
    samples; None if unmeasurable."""
    if len(samples) < MIN_LOUDNESS_SECONDS * sample_rate:
        return None  # (not even importing scipy.signal, ~1 s, for short clips)
    samples = samples.reshape(len(samples), -1)
    meter = LoudnessMeter(sample_rate, samples.shape[1], len(samples))
    meter.add(samples)
    value = meter.integrated()
    return value if value is not None and math.isfinite(value) else None


def file_peak_dbfs(path: Path) -> float | None:
    """Sample peak of a whole file in dBFS, streamed through ffmpeg's volumedetect (constant memory, unlike
    :func:`decode_float32`: fine for hours of ASR input); None for digital silence."""
    cmd = ffmpeg_command("-i", str(path), "-vn", "-af", "volumedetect", "-f", "null", "-", loglevel="info")
    result = run_tool(cmd, what=f"could not decode {str(path)!r}")
    found = re.search(rb"max_volume: (-?[0-9.]+|-inf) dB", result.stderr)
    if found is None or found.group(1) == b"-inf":
        return None
    return float(found.group(1))


def peak_dbfs(samples: np.ndarray) -> float | None:
    """Sample peak in dBFS; None for digital silence."""
    if samples.size == 0:
        return None
    peak = float(np.max(np.abs(samples)))
    return 20 * math.log10(peak) if peak > 0 else None


@dataclass(frozen=True)
class Pcm16Wav:
    """Where the samples of a 16-bit PCM WAV are: rate, channels and the data chunk's bounds."""

    sample_rate: int
    channels: int
    data_offset: int
    data_bytes: int

    @property
    def duration_s(self) -> float:
        # ffprobe prints durations to the microsecond
        return round(self.data_bytes / (2 * self.channels * self.sample_rate), 6)

    def probe_result(self, path: Path) -> ProbeResult:
        """What :func:`probe` says about such a file."""
        return ProbeResult(path=path, format="wav", codec="pcm_s16le", duration_s=self.duration_s,
                           sample_rate=self.sample_rate, channels=self.channels)

    def samples(self, data: bytes) -> np.ndarray:
        """(frames, channels) float32, scaled like ffmpeg's s16 → f32 decode (x / 32768)."""
        pcm = np.frombuffer(data, dtype="<i2", count=self.data_bytes // 2, offset=self.data_offset)
        return (pcm.astype(np.float32) / np.float32(32768.0)).reshape(-1, self.channels)


_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_PCM_SUBFORMAT_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def pcm16_wav_layout(head: bytes, total_bytes: int | None = None) -> Pcm16Wav | None:
    """The layout of a complete, non-empty 16-bit PCM WAV from its first bytes; None for anything else.

    ``head`` holds at least the header (the whole file, or its first few KB with ``total_bytes`` the file
    size). A data chunk shorter than declared, an unknown size (streaming writers) or another encoding
    gives None, so callers fall back to ffprobe/ffmpeg.
    """
    total = len(head) if total_bytes is None else total_bytes
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, fmt = 12, None
    while offset + 8 <= len(head):
        chunk_id, size = struct.unpack_from("<4sI", head, offset)
        body = offset + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + size > len(head):
                return None
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", head, body)
            if tag == _WAVE_FORMAT_EXTENSIBLE and size >= 40:
                # the sub-format GUID: a format code, then the fixed KSDATAFORMAT tail
                known = head[body + 26 : body + 40] == _PCM_SUBFORMAT_TAIL
                tag = struct.unpack_from("<H", head, body + 24)[0] if known else 0
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None or fmt[0] != _WAVE_FORMAT_PCM or fmt[3] != 16 or fmt[1] < 1 or fmt[2] <= 0:
                return None
            frame = 2 * fmt[1]
            if size in (0, 0xFFFFFFFF) or size % frame or body + size > total:
                return None
            return Pcm16Wav(sample_rate=fmt[2], channels=fmt[1], data_offset=body, data_bytes=size)
        offset = body + size + (size & 1)
    return None


#: how much of a WAV is read to find its data chunk when only the header is needed
_WAV_HEAD = 64 * 1024


def measure_file(path: Path, *, loudness: bool = True) -> AudioInfo:
    """Describe a written audio file; ``loudness=False`` skips the decode (no LUFS, no peak).

    Duration, rate and channels are ffprobe's; loudness and peak come from one float32 decode at the
    file's own rate. A 16-bit PCM WAV (every WAV voxmill writes) is measured in-process with the same
    results: ffprobe + ffmpeg cost ~100 ms of CPU per file, far more than the request that made it.
    """
    path = Path(path)
    size = path.stat().st_size if path.is_file() else 0
    if size:
        with open(path, "rb") as handle:
            head = handle.read(_WAV_HEAD)
            layout = pcm16_wav_layout(head, size)
            if layout is not None:
                return _measure_pcm16(path, handle, head, size, layout, loudness=loudness)
    info = probe(path)
    lufs = peak = None
    if loudness:
        samples = decode_float32(path, sample_rate=info.sample_rate, channels=info.channels)
        lufs = loudness_lufs(samples, info.sample_rate)
        peak = peak_dbfs(samples)
    return AudioInfo(
        format=info.format,
        duration_s=info.duration_s,
        sample_rate=info.sample_rate,
        channels=info.channels,
        bytes=path.stat().st_size,
        sha256=file_hash(path),
        lufs=lufs,
        peak_dbfs=peak,
    )


#: bytes per read when a WAV is measured in pieces (~2.7 s of 24 kHz mono; ~1.5 MB of float64 work arrays)
_MEASURE_BYTES = 1 << 17


def _measure_pcm16(
    path: Path, handle: BinaryIO, head: bytes, size: int, layout: Pcm16Wav, *, loudness: bool
) -> AudioInfo:
    """:func:`measure_file` of a 16-bit PCM WAV open at ``handle`` (``head`` already read from it): one pass
    in pieces for the hash, the loudness and the peak, in constant memory however long the clip."""
    digest = content_hasher()
    frame = 2 * layout.channels
    frames = layout.data_bytes // frame
    meter = None
    if loudness and frames >= MIN_LOUDNESS_SECONDS * layout.sample_rate:
        meter = LoudnessMeter(layout.sample_rate, layout.channels, frames)
    start, end = layout.data_offset, layout.data_offset + layout.data_bytes
    peak, position, carry, piece = 0.0, 0, b"", head
    while piece:
        digest.update(piece)
        low, high = max(start, position), min(end, position + len(piece))
        if loudness and high > low:
            pcm = carry + piece[low - position : high - position]
            whole = len(pcm) - len(pcm) % frame
            carry = pcm[whole:]
            if whole:
                samples = np.frombuffer(pcm, dtype="<i2", count=whole // 2).astype(np.float32) / np.float32(32768.0)
                peak = max(peak, float(np.max(np.abs(samples))))
                if meter is not None:
                    meter.add(samples.reshape(-1, layout.channels))
        position += len(piece)
        piece = handle.read(_MEASURE_BYTES)
    if position != size:
        raise InvalidItem(f"{str(path)!r} changed while it was measured ({size} bytes, then {position})")
    lufs = meter.integrated() if meter is not None else None
    return AudioInfo(
        format="wav",
        duration_s=layout.duration_s,
        sample_rate=layout.sample_rate,
        channels=layout.channels,
        bytes=size,
        sha256=digest.hexdigest(),
        lufs=lufs if lufs is not None and math.isfinite(lufs) else None,
        peak_dbfs=(20 * math.log10(peak) if peak > 0 else None) if loudness else None,
    )


_INTEGRATED = re.compile(r"I:\s+(-?\d+(?:\.\d+)?) LUFS")
_PEAKS = {"sample": re.compile(r"Sample peak:\s+Peak:\s+(-?(?:\d+(?:\.\d+)?|inf)) dBFS"),
          "true": re.compile(r"True peak:\s+Peak:\s+(-?(?:\d+(?:\.\d+)?|inf)) dBFS")}


@dataclass(frozen=True)
class Loudness:
    """A file's integrated loudness (LUFS; None for silence) and its peak (dBFS; None for digital silence or
    when not asked for)."""

    lufs: float | None
    peak_db: float | None = None


def loudness_of(path: Path, *, filters: str | None = None, peak: Literal["sample", "true"] | None = None) -> Loudness:
    """Integrated loudness (BS.1770, gated) of a file of any length after ``filters``, and its ``peak``: the
    sample peak (nearly free) or the true peak (ffmpeg oversamples 4×: about 3× the cost of the pass).

    ffmpeg's ``ebur128`` streams the file (nothing is held in memory), ~10× faster than a loudnorm pass.
    """
    options = "framelog=verbose" + (f":peak={peak}" if peak else "")
    chain = f"{filters},ebur128={options}" if filters else f"ebur128={options}"
    cmd = ffmpeg_command("-i", str(path), "-vn", "-af", chain, "-f", "null", "-", loglevel="info")
    stderr = run_tool(cmd, what=f"could not measure loudness of {Path(path).name}").stderr.decode("utf-8", "replace")
    found = _INTEGRATED.findall(stderr)
    peaks = _PEAKS[peak].findall(stderr) if peak else [None]
    if not found or not peaks:
        raise InvalidItem(f"ffmpeg ebur128 printed no integrated loudness for {Path(path).name}")
    value = float(found[-1])
    top = float(peaks[-1]) if peaks[-1] is not None else None
    return Loudness(value if value > -70 else None, top if top is not None and math.isfinite(top) else None)


def integrated_loudness_of(path: Path, *, filters: str | None = None) -> float | None:
    """Integrated loudness (BS.1770, gated) of a file of any length, after ``filters``; None for silence."""
    return loudness_of(path, filters=filters).lufs


__all__ = [
    "AudioInfo",
    "integrated_loudness_of",
    "Loudness",
    "loudness_of",
    "ProbeResult",
    "MIN_ASR_SECONDS",
    "check_complete",
    "mp3_cut_frame",
    "decode_float32",
    "ffmpeg_command",
    "file_peak_dbfs",
    "ffprobe_path",
    "loudness_lufs",
    "measure_file",
    "peak_dbfs",
    "probe",
    "run_tool",
]
