"""A voice's fingerprint: median pitch and spectral centroid of the voiced frames of a take.

Enough to tell voices apart and to notice a chunk whose voice drifted from its chapter's (a cloned or
emotion-tagged voice that changed after the first chunk). Pitch per 40 ms frame, 50–400 Hz, over frames loud
enough to be speech, from the normalised cross-correlation of the frame with itself at each lag (each lag
divided by the energy of the samples it overlaps, so long lags, i.e. low voices, are not penalised as they are
by the plain autocorrelation, which read a voice six semitones down as three or four); numpy only.
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_FRAME_S, _MIN_HZ, _MAX_HZ = 0.04, 50.0, 400.0


@dataclass(frozen=True)
class VoicePrint:
    """Median pitch (Hz) and spectral centroid (Hz) of a take's voiced frames; NaN when none are voiced."""

    pitch_hz: float
    centroid_hz: float

    def distance(self, other: VoicePrint) -> float:
        """How far apart two prints are: pitch in semitones, plus the centroid's log-ratio in the same units."""
        if math.isnan(self.pitch_hz) or math.isnan(other.pitch_hz):
            return math.inf
        pitch = 12 * abs(math.log2(self.pitch_hz / other.pitch_hz))
        centroid = 12 * abs(math.log2(max(self.centroid_hz, 1.0) / max(other.centroid_hz, 1.0)))
        return pitch + 0.5 * centroid


def voiceprint(samples: np.ndarray, rate: int) -> VoicePrint:
    """The print of mono ``samples`` (int16 or float) at ``rate``."""
    signal = samples.astype(np.float64)
    if samples.dtype == np.int16:
        signal /= 32768.0
    size = int(rate * _FRAME_S)
    frames = [signal[i:i + size] for i in range(0, signal.size - size, size // 2)]
    if not frames:
        return VoicePrint(math.nan, math.nan)
    energies = np.array([float(np.sqrt(np.mean(f * f))) for f in frames])
    loud = energies >= 0.3 * float(np.percentile(energies, 90))
    pitches, centroids = [], []
    low, high = int(rate / _MAX_HZ), int(rate / _MIN_HZ)
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    window = np.hanning(size)
    for frame, keep in zip(frames, loud, strict=True):
        if not keep:
            continue
        frame = frame - frame.mean()
        spectrum = np.abs(np.fft.rfft(frame * window))
        if spectrum.sum() > 0:
            centroids.append(float((freqs * spectrum).sum() / spectrum.sum()))
        corr = np.correlate(frame, frame, "full")[size - 1:]
        if corr[0] <= 0 or high >= corr.size:
            continue
        lags = _normalised(frame, corr)[low:high]
        best = float(lags.max())
        if best < 0.45:  # not clearly periodic: unvoiced
            continue
        # the shortest lag nearly as good as the best, climbed to its peak: no sub-harmonic (octave) errors
        lag = int(np.nonzero(lags >= 0.85 * best)[0][0])
        while lag + 1 < lags.size and lags[lag + 1] > lags[lag]:
            lag += 1
        pitches.append(rate / (low + lag))
    return VoicePrint(float(np.median(pitches)) if pitches else math.nan,
                      float(np.median(centroids)) if centroids else math.nan)


def _normalised(frame: np.ndarray, corr: np.ndarray) -> np.ndarray:
    """``corr[lag]`` (the frame's autocorrelation) over the geometric mean energy of ``frame[:n - lag]`` and
    ``frame[lag:]``: 1.0 at every lag for a perfectly periodic frame of that period."""
    energy = np.cumsum(frame * frame)
    lag = np.arange(corr.size)
    head = energy[frame.size - 1 - lag]  # frame[:n - lag]
    tail = energy[-1] - np.concatenate(([0.0], energy[:-1]))[lag]  # frame[lag:]
    return corr / np.sqrt(np.maximum(head * tail, 1e-20))


def voiceprint_file(path: Path) -> VoicePrint:
    """The print of an audio file: 16-bit PCM WAV read directly, anything else decoded by ffmpeg."""
    try:
        with wave.open(str(path), "rb") as reader:
            if reader.getsampwidth() == 2:
                frames = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
                channels = reader.getnchannels()
                return voiceprint(frames[::channels] if channels > 1 else frames, reader.getframerate())
    except (wave.Error, EOFError):
        pass
    from voxmill.audio.measure import decode_float32

    return voiceprint(decode_float32(Path(path), sample_rate=24000, channels=1)[:, 0], 24000)


def semitones(pitch_hz: float, reference_hz: float) -> float:
    """How far ``pitch_hz`` is from ``reference_hz``, in semitones (NaN when either is unknown)."""
    if math.isnan(pitch_hz) or math.isnan(reference_hz) or pitch_hz <= 0 or reference_hz <= 0:
        return math.nan
    return 12 * math.log2(pitch_hz / reference_hz)


__all__ = ["VoicePrint", "semitones", "voiceprint", "voiceprint_file"]
