"""Typed flow parameters: a bad format, model or runner is refused when the run is created, not an hour in."""

from __future__ import annotations

from typing import Literal

from tasks.rate import RateScope
from tasks.runners import RunnerKind
from voxmill.audio.formats import FORMATS
from voxmill.catalog import ASR_MODELS, TTS_MODELS
from voxmill.local_api import LocalEngine

OutputFormat = Literal[tuple(FORMATS)]  # type: ignore[valid-type]
TtsModel = Literal[TTS_MODELS]  # type: ignore[valid-type]
AsrModel = Literal[ASR_MODELS]  # type: ignore[valid-type]

__all__ = ["AsrModel", "LocalEngine", "OutputFormat", "RateScope", "RunnerKind", "TtsModel"]
