"""Typed flow parameters: a bad format or model is refused when the run is created, not an hour in (the run's
own options are typed in :class:`voxmill.options.RunOptions`)."""

from __future__ import annotations

from typing import Literal

from voxmill.audio.formats import FORMATS
from voxmill.catalog import ASR_MODELS, TTS_MODELS

OutputFormat = Literal[tuple(FORMATS)]  # type: ignore[valid-type]
TtsModel = Literal[TTS_MODELS]  # type: ignore[valid-type]
AsrModel = Literal[ASR_MODELS]  # type: ignore[valid-type]

__all__ = ["AsrModel", "OutputFormat", "TtsModel"]
