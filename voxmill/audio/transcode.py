"""Write audio outputs: transcode a clip into the requested format, optionally loudness-normalised.

Every file is written atomically (a temp name beside the target, then ``os.replace``), so a crash or a
failed conversion never leaves a partial output where a finished one is expected. Formats and the
ffmpeg conversion itself come from :mod:`voxmill.audio.formats`.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import tempfile
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from voxmill.audio.formats import FORMATS, audio_format, convert_file
from voxmill.audio.measure import (
    AudioInfo,
    check_complete,
    ffmpeg_command,
    measure_file,
    pcm16_wav_layout,
    probe,
    run_tool,
)
from voxmill.catalog import ASR_SAMPLE_RATE, TTS_SAMPLE_RATE
from voxmill.errors import ConfigError, InvalidItem
from voxmill.identity import file_hash

#: raw PCM from the API: 16-bit little-endian mono at this rate unless told otherwise
PCM_RATE = TTS_SAMPLE_RATE
#: ffmpeg loudnorm's own default loudness range target
DEFAULT_LRA = 7.0
#: used when OutputSpec.bitrate is None
DEFAULT_BITRATES = {"mp3": "128k"}
_MP3_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})
_BITRATE = re.compile(r"^(\d{1,3})k$")
#: how much of a WAV is read to find its layout, and the piece size of copies
_WAV_HEAD = _COPY_BYTES = 64 * 1024


@dataclass(frozen=True)
class OutputSpec:
    """How an output file should come out. Validated on creation: a bad value is a ConfigError."""

    format: str = "wav"
    #: None keeps the source rate (opus is always 48 kHz: leave it None or say 48000)
    sample_rate: int | None = None
    channels: int | None = None
    #: lossy formats only, like "128k"; ignored for wav/flac. None: 128k for mp3 (ffmpeg's own mp3 default
    #: drops to 24-32 kbps at TTS rates), the encoder's default (~55-65 kbps mono) for aac/opus
    bitrate: str | None = None
    #: integrated loudness target (two-pass ffmpeg loudnorm); None leaves the level alone
    loudness_lufs: float | None = None
    #: true-peak ceiling (dBTP) for loudness normalisation
    true_peak_db: float = -1.5

    def __post_init__(self) -> None:
        fmt = audio_format(self.format)  # ConfigError for unknown names
        if fmt.name == "pcm":
            raise ConfigError("output format 'pcm' has no header to measure or play; use 'wav'")
        object.__setattr__(self, "format", fmt.name)
        if self.sample_rate is not None:
            if not 8000 <= self.sample_rate <= 192000:
                raise ConfigError(f"sample_rate {self.sample_rate} is outside 8000–192000 Hz")
            if fmt.fixed_rate and self.sample_rate != fmt.fixed_rate:
                raise ConfigError(
                    f"{fmt.name} is always {fmt.fixed_rate} Hz; drop sample_rate or set it to {fmt.fixed_rate}"
                )
            if fmt.name == "mp3" and self.sample_rate not in _MP3_RATES:
                raise ConfigError(
                    f"mp3 cannot be {self.sample_rate} Hz; use one of {', '.join(map(str, sorted(_MP3_RATES)))}"
                )
        if self.channels is not None:
            limit = 2 if fmt.name == "mp3" else 8
            if not 1 <= self.channels <= limit:
                raise ConfigError(f"channels {self.channels} is outside 1–{limit} for {fmt.name}")
        if self.bitrate is not None:
            match = _BITRATE.match(self.bitrate)
            if match is None or not 8 <= int(match.group(1)) <= 512:
                raise ConfigError(f"bitrate {self.bitrate!r} should look like '128k' (8k–512k)")
        if self.loudness_lufs is not None and not -70 <= self.loudness_lufs <= -5:
            raise ConfigError(f"loudness_lufs {self.loudness_lufs} is outside -70 to -5 LUFS (speech: -16 to -23)")
        if not -9 <= self.true_peak_db <= 0:
            raise ConfigError(f"true_peak_db {self.true_peak_db} is outside -9 to 0 dBTP")


def partial_path(target: Path) -> Path:
    """A fresh temp name beside ``target`` (``.name.<hex>.part``), swept by :func:`remove_partial_outputs`."""
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")


@contextmanager
def atomic_output(target: Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success it replaces ``target``, on any error it is removed.

    The temp name is not created here (ffmpeg creates it), so the file gets normal permissions.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = partial_path(target)
    try:
        yield temp
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def remove_partial_outputs(folder: Path) -> int:
    """Delete the temp files :func:`atomic_output` leaves when a process is killed mid-write; how many.

    Only safe while no other process writes into ``folder`` (the ledger's lock guarantees that).
    """
    removed = 0
    for partial in Path(folder).rglob(".*.part"):
        partial.unlink(missing_ok=True)
        removed += 1
    return removed


def write_bytes_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_output`)."""
    with atomic_output(target) as temp:
        with open(temp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def transcode_file(
    source: Path,
    source_format: str,
    target: Path,
    spec: OutputSpec,
    *,
    source_rate: int = PCM_RATE,
    keep_source: bool = False,
) -> AudioInfo:
    """Write the audio in ``source`` (a file in ``source_format``) to ``target`` as ``spec`` asks; measure it.

    ``source_format="pcm"`` means raw 16-bit mono at ``source_rate``. A 16-bit WAV that needs no change
    becomes ``target`` as it is: moved there (``source`` beside ``target``, on the same filesystem: one
    atomic rename) or, with ``keep_source``, copied. Anything else goes through ffmpeg, and ``source`` is
    then removed unless ``keep_source``. Loudness targets use two-pass ffmpeg loudnorm (linear gain when the
    true-peak ceiling allows it, ffmpeg's dynamic mode otherwise); silence and clips too short to measure are
    left as they are. The clip is read from disk in pieces, never held whole. Raises InvalidItem (nothing
    written, ``source`` left as it was) when ffmpeg cannot read or write the clip.
    """
    source, target = Path(source), Path(target)
    source_fmt = audio_format(source_format).name
    size = source.stat().st_size if source.is_file() else 0
    if source_fmt == "pcm" and (not size or size % 2):
        raise InvalidItem(f"{target.name}: raw PCM of {size} bytes is not whole 16-bit samples")
    if not size:
        raise InvalidItem(f"{target.name}: no audio bytes to write")
    wav = _pcm_as_wav(source, target, source_rate) if source_fmt == "pcm" else None
    try:
        info = _write_output(wav or source, target, spec, move=wav is not None or not keep_source)
    finally:
        if wav is not None:
            wav.unlink(missing_ok=True)  # moved to target already, unless it failed
    if not keep_source:
        source.unlink(missing_ok=True)
    return info


def _write_output(source: Path, target: Path, spec: OutputSpec, *, move: bool) -> AudioInfo:
    """:func:`transcode_file` of a file that ffmpeg can read: moved or copied as it is, or converted."""
    size = source.stat().st_size
    if spec.format == "wav" and spec.loudness_lufs is None:
        with open(source, "rb") as handle:
            layout = pcm16_wav_layout(handle.read(_WAV_HEAD), size)
        if layout is not None and (spec.sample_rate or layout.sample_rate) == layout.sample_rate and (
            spec.channels or layout.channels
        ) == layout.channels:
            target.parent.mkdir(parents=True, exist_ok=True)
            if move:
                os.replace(source, target)
            else:
                with atomic_output(target) as temp:
                    shutil.copyfile(source, temp)
            return measure_file(target)
    filters, rate = None, spec.sample_rate
    if spec.loudness_lufs is not None:
        filters = loudnorm_filter(source, spec.loudness_lufs, spec.true_peak_db)
        # loudnorm works at 192 kHz: without an explicit rate the output would stay there
        rate = rate or probe(source).sample_rate
    with atomic_output(target) as temp:
        convert_file(
            source, temp, spec.format,
            sample_rate=rate, channels=spec.channels, bitrate=spec.bitrate or DEFAULT_BITRATES.get(spec.format),
            filters=filters,
        )
        return measure_file(temp)


def _pcm_as_wav(source: Path, target: Path, rate: int) -> Path:
    """Raw 16-bit mono PCM in ``source`` as a WAV beside ``target`` (a temp name), copied in pieces."""
    wav = partial_path(target)
    try:
        with open(source, "rb") as raw, wave.open(str(wav), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            while piece := raw.read(_COPY_BYTES):
                out.writeframesraw(piece)
    except BaseException:
        wav.unlink(missing_ok=True)
        raise
    return wav


def loudnorm_filter(source: Path, target_lufs: float, true_peak_db: float) -> str | None:
    """Measure ``source`` (loudnorm pass one) and return the pass-two filter; None if it cannot be measured.

    The LRA target is raised to the measured LRA so that loudnorm can stay linear (pure gain); it only
    switches to dynamic compression when that gain would break the true-peak ceiling.
    """
    first = f"loudnorm=I={target_lufs}:TP={true_peak_db}:LRA={DEFAULT_LRA}:print_format=json"
    cmd = ffmpeg_command("-i", str(source), "-vn", "-af", first, "-f", "null", "-", loglevel="info")
    stderr = run_tool(cmd, what=f"could not measure loudness of {source.name}").stderr.decode("utf-8", "replace")
    start = stderr.rfind("{")
    end = stderr.rfind("}")
    if start < 0 or end < start:
        raise InvalidItem(f"ffmpeg loudnorm printed no measurement for {source.name}")
    measured = {k: float(v) for k, v in json.loads(stderr[start : end + 1]).items() if _is_number(v)}
    input_i = measured.get("input_i", -math.inf)
    if not math.isfinite(input_i) or input_i <= -70:
        return None  # silence or too short: there is no loudness to correct
    lra = min(50.0, max(DEFAULT_LRA, math.ceil(measured.get("input_lra", 0.0) * 10) / 10))
    return (
        f"loudnorm=I={target_lufs}:TP={true_peak_db}:LRA={lra}"
        f":measured_I={input_i}:measured_TP={measured['input_tp']}:measured_LRA={measured['input_lra']}"
        f":measured_thresh={measured['input_thresh']}:offset={measured['target_offset']}:linear=true"
    )


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def prepare_asr_input(path: Path, accepted: tuple[str, ...], *, cache_dir: Path | None = None) -> Path:
    """Return a file the ASR API accepts: ``path`` itself, or a 16 kHz mono WAV converted from it.

    ``path`` is validated with :func:`probe` first (InvalidItem for missing, empty, corrupt, no audio), then
    :func:`check_complete` (TruncatedAudio, TooShortAudio).
    Converted copies are named by content hash in ``cache_dir`` (default: a voxmill folder in the system
    temp dir), so a rerun reuses them; the caller owns cleaning that folder.
    """
    path = Path(path)
    check_complete(probe(path))
    accepted = tuple(a.lower().lstrip(".") for a in accepted)
    if path.suffix.lower().lstrip(".") in accepted:
        return path
    out_format = "wav" if "wav" in accepted else next((a for a in accepted if a in FORMATS), None)
    if out_format is None:
        raise ConfigError(f"none of the accepted file types ({', '.join(accepted)}) is a format voxmill can write")
    folder = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "voxmill-asr-inputs"
    digest = file_hash(path)[:16]
    converted = folder / f"{path.stem}-{digest}.{FORMATS[out_format].extension}"
    if converted.is_file() and converted.stat().st_size > 0:
        return converted
    with atomic_output(converted) as temp:
        convert_file(path, temp, out_format, sample_rate=ASR_SAMPLE_RATE, channels=1)
    return converted


__all__ = [
    "OutputSpec",
    "atomic_output",
    "partial_path",
    "loudnorm_filter",
    "prepare_asr_input",
    "remove_partial_outputs",
    "transcode_file",
    "write_bytes_atomic",
]
