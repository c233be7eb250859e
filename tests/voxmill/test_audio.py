"""Audio file layer against real ffmpeg: transcoding, loudness, atomic writes, probing, silence splitting."""

from __future__ import annotations

import hashlib
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from voxmill.audio.formats import read_wav, wav_bytes
from voxmill.audio.measure import decode_float32, loudness_lufs, measure_file, probe
from voxmill.audio.split import Piece, plan_cuts, split_on_silence, stitch_transcripts
from voxmill.audio.transcode import OutputSpec, atomic_output, prepare_asr_input, transcode_file
from voxmill.errors import ConfigError, InvalidItem
from voxmill.subtitles import TimedText

#: silences in the 25 s split fixture (seconds)
SILENCES = [(6.0, 7.0), (13.5, 14.5), (19.0, 20.0)]


def lavfi(target: Path, source: str, *extra: str) -> Path:
    """Generate test audio with an ffmpeg lavfi source."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", source, *extra, str(target)], check=True
    )
    return target


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    lavfi(folder / "tone.wav", "sine=f=440:sample_rate=24000:d=3", "-af", "volume=-12dB", "-ac", "1")
    # pink noise at a low level: a peaky signal for loudness normalisation
    lavfi(folder / "quiet.wav", "anoisesrc=color=pink:amplitude=0.05:seed=7:sample_rate=24000:d=6")
    silent = "+".join(f"between(t,{a},{b})" for a, b in SILENCES)
    lavfi(folder / "long.wav", f"aevalsrc='if({silent},0,0.5*sin(2*PI*440*t))':s=16000:d=25")
    lavfi(folder / "steady.wav", "sine=f=300:sample_rate=16000:d=25")
    lavfi(folder / "tone.aiff", "sine=f=440:sample_rate=44100:d=1")
    lavfi(folder / "tone.flac", "sine=f=440:sample_rate=44100:d=1", "-ac", "2")
    lavfi(folder / "tone.mp3", "sine=f=440:sample_rate=44100:d=1")
    lavfi(folder / "video.mkv", "color=c=black:s=16x16:d=0.5", "-c:v", "ffv1")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "noise.wav").write_bytes(np.random.default_rng(1).bytes(4096))
    return folder


def true_peak_db(samples: np.ndarray) -> float:
    """4x-oversampled peak (the BS.1770 true-peak method, near enough for a test)."""
    return 20 * math.log10(float(np.max(np.abs(resample_poly(samples, 4, 1, axis=0)))))


# --- measure / probe ------------------------------------------------------------------------------------


def test_measure_file_describes_a_wav(media: Path) -> None:
    info = measure_file(media / "tone.wav")
    assert (info.format, info.sample_rate, info.channels) == ("wav", 24000, 1)
    assert info.duration_s == pytest.approx(3.0, abs=0.001)
    assert info.bytes == (media / "tone.wav").stat().st_size
    assert info.sha256 == hashlib.sha256((media / "tone.wav").read_bytes()).hexdigest()
    # a sine at -12 dB of ffmpeg's 1/8 amplitude: peak = 20*log10(0.125) - 12
    assert info.peak_dbfs == pytest.approx(20 * math.log10(0.125) - 12, abs=0.1)
    assert info.lufs is not None and -40 < info.lufs < -20


def test_measure_file_without_loudness_skips_decode(media: Path) -> None:
    info = measure_file(media / "tone.wav", loudness=False)
    assert info.lufs is None and info.peak_dbfs is None and info.duration_s == pytest.approx(3.0, abs=0.001)


def test_loudness_is_none_for_short_clips_and_silence(tmp_path: Path) -> None:
    short = tmp_path / "short.wav"
    short.write_bytes(wav_bytes((np.sin(np.arange(4800) / 5) * 8000).astype(np.int16), 24000))
    assert measure_file(short).lufs is None  # 0.2 s < one 400 ms block
    silence = tmp_path / "silence.wav"
    silence.write_bytes(wav_bytes(np.zeros(24000, dtype=np.int16), 24000))
    info = measure_file(silence)
    assert info.lufs is None and info.peak_dbfs is None


@pytest.mark.parametrize(("rate", "channels", "seconds"), [(24000, 1, 7.3), (16000, 2, 3.0), (48000, 1, 0.45)])
def test_loudness_in_pieces_matches_pyloudnorm_on_the_whole_clip(rate: int, channels: int, seconds: float) -> None:
    import pyloudnorm

    from voxmill.audio.loudness import LoudnessMeter

    frames = int(rate * seconds)
    envelope = np.abs(np.sin(np.linspace(0, 9, frames)))[:, None]  # loud and quiet stretches: both gates act
    samples = (np.random.default_rng(4).standard_normal((frames, channels)) * 0.2 * envelope).astype(np.float32)
    expected = pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64))
    for piece in (frames, 65536, 999, 7):
        meter = LoudnessMeter(rate, channels, frames)
        for start in range(0, frames, piece):
            meter.add(samples[start : start + piece])
        assert meter.integrated() == pytest.approx(expected, abs=1e-9)


def test_a_long_wav_is_measured_in_pieces_like_the_whole_decode(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    pcm = (rng.standard_normal(24000 * 20) * 4000 * np.abs(np.sin(np.arange(24000 * 20) / 40000))).astype(np.int16)
    path = tmp_path / "long.wav"
    path.write_bytes(wav_bytes(pcm, 24000))
    info = measure_file(path)
    decoded = decode_float32(path)  # ffmpeg's whole-clip decode
    assert info.lufs == pytest.approx(loudness_lufs(decoded, 24000), abs=1e-6)
    assert info.peak_dbfs == pytest.approx(20 * math.log10(float(np.max(np.abs(decoded)))), abs=1e-6)
    assert info.duration_s == 20.0 and info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_wav_whose_frames_straddle_the_read_pieces_is_measured_whole(tmp_path: Path) -> None:
    # stereo, with a 6-byte chunk before the samples: the pieces read cut frames in two, which must be carried
    rng = np.random.default_rng(6)
    pcm = (rng.standard_normal((24000 * 9, 2)) * 3000).astype(np.int16)
    plain = wav_bytes(pcm.reshape(-1), 24000, 2)
    data_at = plain.index(b"data")
    extra = b"note" + (6).to_bytes(4, "little") + b"voxmil"
    riff_size = int.from_bytes(plain[4:8], "little") + len(extra)
    path = tmp_path / "stereo.wav"
    path.write_bytes(plain[:4] + riff_size.to_bytes(4, "little") + plain[8:data_at] + extra + plain[data_at:])
    info = measure_file(path)
    decoded = decode_float32(path)
    assert decoded.shape == (24000 * 9, 2)
    assert info.lufs == pytest.approx(loudness_lufs(decoded, 24000), abs=1e-6)
    assert info.peak_dbfs == pytest.approx(20 * math.log10(float(np.max(np.abs(decoded)))), abs=1e-6)
    assert (info.channels, info.duration_s) == (2, 9.0)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("missing.wav", "does not exist"),
        ("empty.wav", "empty (0 bytes)"),
        ("noise.wav", "not readable audio"),
        ("video.mkv", "no audio stream"),
    ],
)
def test_probe_rejects_unusable_files_naming_file_and_fix(media: Path, name: str, fragment: str) -> None:
    with pytest.raises(InvalidItem) as caught:
        probe(media / name)
    assert fragment in caught.value.message and name in caught.value.message
    assert any(fix in caught.value.message for fix in ("check the path", "re-export", "extract"))


# --- transcode ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "rate", "expected_rate"),
    [("wav", 16000, 16000), ("mp3", 22050, 22050), ("opus", None, 48000), ("flac", 44100, 44100),
     ("m4a", 32000, 32000)],
)
def test_transcode_writes_the_requested_format_rate_and_channels(
    media: Path, tmp_path: Path, fmt: str, rate: int | None, expected_rate: int
) -> None:
    target = tmp_path / f"out.{fmt}"
    spec = OutputSpec(format=fmt, sample_rate=rate, channels=2, bitrate="96k")
    info = transcode_file(media / "tone.wav", "wav", target, spec, keep_source=True)
    found = probe(target)
    assert (found.format, found.sample_rate, found.channels) == (fmt, expected_rate, 2)
    assert (info.format, info.sample_rate, info.channels) == (fmt, expected_rate, 2)
    lossy = fmt in ("mp3", "opus", "m4a")
    assert found.duration_s == pytest.approx(3.0, abs=0.1 if lossy else 0.05)
    assert info.sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_transcode_takes_raw_pcm_at_its_rate(tmp_path: Path) -> None:
    pcm = tmp_path / "body.part"
    pcm.write_bytes((np.sin(np.arange(24000) / 3) * 8000).astype("<i2").tobytes())
    info = transcode_file(pcm, "pcm", tmp_path / "out.wav", OutputSpec(sample_rate=16000))
    assert (info.sample_rate, info.channels) == (16000, 1)
    assert info.duration_s == pytest.approx(1.0, abs=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]  # the body and the WAV made of it are gone


def test_raw_pcm_kept_as_wav_is_moved_into_place(tmp_path: Path) -> None:
    samples = (np.sin(np.arange(36000) / 5) * 9000).astype("<i2")
    pcm = tmp_path / "body.part"
    pcm.write_bytes(samples.tobytes())
    info = transcode_file(pcm, "pcm", tmp_path / "out.wav", OutputSpec())
    assert (tmp_path / "out.wav").read_bytes() == wav_bytes(samples, 24000)
    assert (info.duration_s, info.sample_rate) == (1.5, 24000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_wav_to_wav_without_changes_writes_the_bytes_as_they_are(media: Path, tmp_path: Path) -> None:
    data = (media / "tone.wav").read_bytes()
    transcode_file(media / "tone.wav", "wav", tmp_path / "same.wav", OutputSpec(sample_rate=24000, channels=1),
                   keep_source=True)
    assert (tmp_path / "same.wav").read_bytes() == data and (media / "tone.wav").is_file()
    body = tmp_path / ".moved.wav.1234.part"
    body.write_bytes(data)
    info = transcode_file(body, "wav", tmp_path / "moved.wav", OutputSpec())
    assert not body.exists() and (tmp_path / "moved.wav").read_bytes() == data
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.bytes == len(data)


def test_loudness_normalisation_hits_target_under_true_peak_ceiling(media: Path, tmp_path: Path) -> None:
    source = media / "quiet.wav"
    before = loudness_lufs(decode_float32(source), 24000)
    assert before is not None and before < -30
    target = tmp_path / "loud.wav"
    info = transcode_file(source, "wav", target, OutputSpec(loudness_lufs=-16, true_peak_db=-1.5), keep_source=True)
    assert info.sample_rate == 24000  # not loudnorm's internal 192 kHz
    samples = decode_float32(target)
    assert loudness_lufs(samples, 24000) == pytest.approx(-16, abs=1.0)
    assert info.lufs == pytest.approx(-16, abs=1.0)
    assert true_peak_db(samples) <= -1.5 + 0.5


def test_loudness_normalisation_into_a_lossy_format(media: Path, tmp_path: Path) -> None:
    info = transcode_file(
        media / "tone.wav", "wav", tmp_path / "loud.mp3",
        OutputSpec(format="mp3", bitrate="128k", loudness_lufs=-20), keep_source=True,
    )
    assert info.lufs == pytest.approx(-20, abs=1.0) and info.sample_rate == 24000


def test_mp3_defaults_to_128k_not_ffmpegs_low_rate_default(media: Path, tmp_path: Path) -> None:
    transcode_file(media / "tone.wav", "wav", tmp_path / "o.mp3", OutputSpec(format="mp3"), keep_source=True)
    found = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=bit_rate", "-of", "csv=p=0", str(tmp_path / "o.mp3")],
        capture_output=True, text=True, check=True,
    )
    assert int(found.stdout.strip()) == 128000


def test_silence_is_left_alone_by_loudness_normalisation(tmp_path: Path) -> None:
    silence = tmp_path / "silence.part"
    silence.write_bytes(wav_bytes(np.zeros(48000, dtype=np.int16), 24000))
    info = transcode_file(silence, "wav", tmp_path / "s.wav", OutputSpec(loudness_lufs=-16))
    assert info.lufs is None and info.duration_s == pytest.approx(2.0, abs=0.01)


def test_failed_conversion_leaves_no_partial_or_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.mp3"
    target.write_bytes(b"previous good output")
    garbage = tmp_path / "body.part"
    garbage.write_bytes(np.random.default_rng(2).bytes(2048))
    with pytest.raises(InvalidItem):
        transcode_file(garbage, "mp3", target, OutputSpec(format="mp3"))
    assert target.read_bytes() == b"previous good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["body.part", "out.mp3"]  # the source is the caller's
    with pytest.raises(InvalidItem):
        transcode_file(garbage, "m4a", tmp_path / "new.wav", OutputSpec())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["body.part", "out.mp3"]


def test_atomic_output_removes_the_temp_file_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "x.wav") as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"format": "aiff"},
        {"format": "pcm"},
        {"format": "opus", "sample_rate": 24000},
        {"format": "mp3", "sample_rate": 96000},
        {"sample_rate": 100},
        {"channels": 0},
        {"format": "mp3", "channels": 6},
        {"bitrate": "128"},
        {"bitrate": "2000k"},
        {"loudness_lufs": 3.0},
        {"true_peak_db": 2.0},
    ],
)
def test_output_spec_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        OutputSpec(**kwargs)


def test_output_spec_normalises_the_format_name() -> None:
    assert OutputSpec(format="MP3").format == "mp3"


# --- ASR inputs -----------------------------------------------------------------------------------------

ACCEPTED = ("mp3", "wav", "m4a", "ogg", "webm")


def test_prepare_asr_input_returns_accepted_files_unchanged(media: Path) -> None:
    assert prepare_asr_input(media / "tone.mp3", ACCEPTED) == media / "tone.mp3"


@pytest.mark.parametrize("name", ["tone.aiff", "tone.flac"])
def test_prepare_asr_input_converts_other_formats_to_16k_mono_wav(media: Path, tmp_path: Path, name: str) -> None:
    converted = prepare_asr_input(media / name, ACCEPTED, cache_dir=tmp_path)
    assert converted.parent == tmp_path and converted.suffix == ".wav"
    _, rate, channels = read_wav(converted.read_bytes())
    assert (rate, channels) == (16000, 1)
    assert probe(converted).duration_s == pytest.approx(1.0, abs=0.01)
    assert prepare_asr_input(media / name, ACCEPTED, cache_dir=tmp_path) == converted  # cached by content


def test_prepare_asr_input_validates_first(media: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidItem, match="not readable audio"):
        prepare_asr_input(media / "noise.wav", ACCEPTED, cache_dir=tmp_path)


# --- splitting ------------------------------------------------------------------------------------------


def test_short_file_is_one_piece_the_original(media: Path, tmp_path: Path) -> None:
    assert split_on_silence(media / "tone.wav", 10, tmp_path) == [Piece(media / "tone.wav", 0.0, 3.0)]
    assert list(tmp_path.iterdir()) == []


def test_split_cuts_inside_silences(media: Path, tmp_path: Path) -> None:
    pieces = split_on_silence(media / "long.wav", 10, tmp_path)
    assert len(pieces) == 4
    assert pieces[0].start_s == 0 and pieces[-1].end_s == pytest.approx(25.0, abs=0.01)
    for before, after in zip(pieces, pieces[1:]):
        assert before.end_s == after.start_s
        assert any(a < before.end_s < b for a, b in SILENCES), before.end_s
    durations = [probe(p.path).duration_s for p in pieces]
    assert all(d <= 10.0 for d in durations)
    assert sum(durations) == pytest.approx(25.0, abs=0.1)
    for piece, duration in zip(pieces, durations):
        assert duration == pytest.approx(piece.end_s - piece.start_s, abs=0.01)
        assert (probe(piece.path).sample_rate, probe(piece.path).channels) == (16000, 1)


def test_split_without_silence_cuts_hard_at_the_limit(media: Path, tmp_path: Path) -> None:
    pieces = split_on_silence(media / "steady.wav", 10, tmp_path)
    assert [(p.start_s, p.end_s) for p in pieces] == [(0.0, 10.0), (10.0, 20.0), (20.0, pytest.approx(25.0))]
    assert sum(probe(p.path).duration_s for p in pieces) == pytest.approx(25.0, abs=0.1)


def test_plan_cuts_prefers_the_last_silence_in_reach_and_straddling_silences() -> None:
    assert plan_cuts(25, [(3, 4), (8, 9), (15, 16)], 10) == [8.5, 15.5]
    assert plan_cuts(25, [(9, 12)], 10) == [10.0, 20.0]  # the straddling silence is cut at its reachable end
    assert plan_cuts(8, [(1, 2)], 10) == []


def test_stitch_offsets_piece_segments_by_piece_start() -> None:
    first, second = Piece(Path("a.wav"), 0.0, 6.5), Piece(Path("b.wav"), 6.5, 14.0)
    text, segments = stitch_transcripts(
        [
            (second, " world ", [TimedText(0.2, 1.0, "world"), TimedText(7.0, 9.0, "overrun")]),
            (first, "hello", [TimedText(0.0, 1.5, "hello")]),
        ]
    )
    assert text == "hello world"
    assert segments == [
        TimedText(0.0, 1.5, "hello"),
        TimedText(pytest.approx(6.7), pytest.approx(7.5), "world"),
        TimedText(pytest.approx(13.5), 14.0, "overrun"),
    ]


@pytest.mark.parametrize("keep", [0.6, 0.35, 0.9])
def test_truncated_mp3_without_a_xing_header_is_caught(tmp_path, keep):
    """ffmpeg's MP3 with no Xing/Info frame (nothing declares the duration), cut mid-frame: TruncatedAudio; the
    whole file and a cut at a frame boundary (a shorter valid file) pass."""
    from voxmill.audio.measure import check_complete, mp3_cut_frame, probe
    from voxmill.errors import TruncatedAudio

    whole = tmp_path / "whole.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=f=440:d=3",
                    "-ar", "24000", "-c:a", "libmp3lame", "-b:a", "64k", "-write_xing", "0", str(whole)], check=True)
    data = whole.read_bytes()
    assert b"Xing" not in data and b"Info" not in data
    check_complete(probe(whole))
    cut = tmp_path / "cut.mp3"
    size = int(len(data) * keep)
    cut.write_bytes(data[:size])
    frame = mp3_cut_frame(cut)
    if frame is None:  # the cut fell on a frame boundary: move it into the next frame
        cut.write_bytes(data[:size + 7])
        frame = mp3_cut_frame(cut)
    assert frame is not None
    with pytest.raises(TruncatedAudio, match=r"cut\.mp3' is truncated: its last MP3 frame starts at byte"):
        check_complete(probe(cut))
    boundary = tmp_path / "boundary.mp3"
    boundary.write_bytes(data[:frame[0]])
    assert mp3_cut_frame(boundary) is None
    check_complete(probe(boundary))
