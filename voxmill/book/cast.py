"""Casting: a narrator voice, a dialogue voice and a voice per character, from a TOML cast file.

::

    [narrator]                 # the narration (default: the run's --model/--voice)
    model = "qwen3-tts"
    voice = "Ryan"

    [dialogue]                 # quotes with no attributed speaker, and characters not in the cast
    voice = "Aiden"            # (default: the narrator)

    [characters.Mara]
    voice = "Vivian"
    instructions = "warm, a little impatient"   # any parameter the model takes

    [characters.Tom]
    model = "higgs2p5"
    voice = "Jack"

A role without ``model`` takes the narrator's. With a cast, a chapter is chunked at every change of voice
(:func:`cast_chunks`), so one request never mixes two voices; each chunk's ``role`` names its voice.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxmill.book.chunking import ChunkLimits, chunk_paragraph
from voxmill.book.dialogue import attribute
from voxmill.book.model import Chapter, Chunk
from voxmill.catalog import TTS_MODELS, get_model
from voxmill.errors import ConfigError

NARRATOR, DIALOGUE = "narrator", "dialogue"


@dataclass(frozen=True)
class Voice:
    """A model and its parameters (voice, instructions…): everything one request's sound depends on."""

    model: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items() if k != "voice")
        return f"{self.model} {self.params.get('voice', '(default voice)')}" + (f" ({extra})" if extra else "")


@dataclass(frozen=True)
class Cast:
    """Who reads what: the narrator, the dialogue voice and the characters' voices, by name."""

    narrator: Voice
    dialogue: Voice
    characters: Mapping[str, Voice] = field(default_factory=dict)
    source: str | None = None

    def role_of(self, speaker: str | None, quoted: bool) -> str:
        """The role that reads a segment: the speaker when cast, else ``dialogue`` for quotes, ``narrator``."""
        if not quoted:
            return NARRATOR
        return speaker if speaker in self.characters else DIALOGUE

    def voice(self, role: str | None) -> Voice:
        """The voice of a role (None: the narrator)."""
        if role in (None, NARRATOR):
            return self.narrator
        if role == DIALOGUE:
            return self.dialogue
        return self.characters[role]

    @property
    def models(self) -> set[str]:
        return {self.narrator.model, self.dialogue.model, *(v.model for v in self.characters.values())}

    def limits(self) -> ChunkLimits:
        """The strictest chunk limits of the cast's models: every chunk fits whichever voice reads it."""
        limits = [ChunkLimits.for_model(m) for m in sorted(self.models)]
        return ChunkLimits(words=min(x.words for x in limits), chars=min(x.chars for x in limits))


def load_cast(path: str | Path, model: str, params: Mapping[str, Any]) -> Cast:
    """A cast file; the run's ``model``/``params`` are the narrator's defaults. ConfigError naming the role."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise ConfigError(f"cast {name!r} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cast {name!r} is not valid TOML ({exc})") from None
    unknown = set(data) - {NARRATOR, DIALOGUE, "characters"}
    if unknown:
        raise ConfigError(f"cast {name!r}: unknown table(s) {', '.join(sorted(unknown))}; use [narrator], "
                          "[dialogue] and [characters.NAME]")
    narrator = _voice(name, NARRATOR, data.get(NARRATOR, {}), Voice(model, dict(params)))
    dialogue = _voice(name, DIALOGUE, data[DIALOGUE], narrator) if DIALOGUE in data else narrator
    characters = data.get("characters", {})
    if not isinstance(characters, dict):
        raise ConfigError(f"cast {name!r}: 'characters' must be tables like [characters.Mara]")
    return Cast(narrator, dialogue,
                {who: _voice(name, f"characters.{who}", table, narrator) for who, table in characters.items()},
                source=name)


def _voice(source: str, role: str, table: object, base: Voice) -> Voice:
    if not isinstance(table, dict):
        raise ConfigError(f"cast {source!r}: [{role}] must be a table (model, voice, other parameters)")
    model = str(table.get("model") or base.model)
    if model not in TTS_MODELS:
        raise ConfigError(f"cast {source!r} [{role}]: model {model!r} is not a TTS model ({', '.join(TTS_MODELS)})")
    params = {k: v for k, v in table.items() if k != "model"}
    if "model" not in table and role != NARRATOR:
        params = {**{k: v for k, v in base.params.items() if k not in ("voice", "instructions")}, **params}
    elif role == NARRATOR:
        params = {**base.params, **params}
    known = get_model(model).param_by_name
    bad = sorted(set(params) - set(known))
    if bad:
        raise ConfigError(f"cast {source!r} [{role}]: {model} takes no parameter {', '.join(map(repr, bad))} "
                          f"(it takes {', '.join(sorted(known))})")
    return Voice(model, params)


def cast_chunks(chapter: Chapter, limits: ChunkLimits, cast: Cast, language: str | None = None) -> list[Chunk]:
    """A chapter's chunks, cut wherever the voice changes: each chunk is one role's words, never two."""
    chunks: list[Chunk] = []
    for number, segments in enumerate(attribute(chapter.paragraphs, language)):
        pieces = [(cast.role_of(s.speaker, s.quoted), text)
                  for s in segments for text in chunk_paragraph(s.text, limits)]
        for position, (role, text) in enumerate(pieces):
            chunks.append(Chunk(chapter.index, len(chunks), number, text, ends_paragraph=position == len(pieces) - 1,
                                role=role))
    return chunks


__all__ = ["DIALOGUE", "NARRATOR", "Cast", "Voice", "cast_chunks", "load_cast"]
