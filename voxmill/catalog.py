"""The model catalogue: the one place that knows every model of the API and every parameter.

The client validates with it before any request, the local server validates with it on arrival, the CLI
help and the README's model table are generated from it. Ranges marked "upstream" come from the open
models' own code; the provider documents defaults but not ranges, so a range here is a sanity bound, and
an explicit setting can still be checked by the live API.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from voxmill.errors import ForbiddenCharacter, UnspeakableText, ValidationError

#: WAV/PCM from every TTS model: 24 kHz, mono, 16-bit
TTS_SAMPLE_RATE = 24000
#: what Whisper works on: 16 kHz mono (inputs are resampled to it, long files split at it)
ASR_SAMPLE_RATE = 16000
#: the longest audio sent in one ASR request by default (seconds); longer files are split on silence
ASR_MAX_SECONDS = 600.0
#: the TTS model of rows and books that name none
DEFAULT_TTS_MODEL = "higgs2p5"

ParamType = Literal["str", "int", "float", "bool", "json", "file"]
ModelKind = Literal["tts", "asr"]


@dataclass(frozen=True)
class Param:
    """One request parameter: its type, default and the values it may take."""

    name: str
    type: ParamType
    description: str
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: file parameters: accepted extensions (lower case, no dot)
    file_types: tuple[str, ...] = ()
    #: json parameters: the keys the object may hold
    json_keys: tuple[Param, ...] = ()
    #: send the default even when the caller left it out (the API's default differs from what we want)
    send_default: bool = False
    #: str parameters holding a URL: the schemes allowed
    url_schemes: tuple[str, ...] = ()

    def coerce(self, value: Any, model: str) -> Any:
        """Turn a manifest value (often a string) into this parameter's type, or raise ValidationError."""
        where = f"{model}: parameter {self.name!r}"
        if self.type == "str":
            if not isinstance(value, str):
                value = str(value)
            if self.url_schemes:
                scheme = value.split("://", 1)[0].lower() if "://" in value else ""
                if scheme not in self.url_schemes:
                    raise ValidationError(
                        f"{where} = {value!r} must be a {'/'.join(self.url_schemes)} URL", param=self.name
                    )
            if self.choices is not None:
                match = {c.lower(): c for c in self.choices}.get(value.strip().lower())
                if match is None:
                    raise ValidationError(
                        f"{where} = {value!r} is not one of {', '.join(self.choices)}", param=self.name
                    )
                value = match
            return value
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes"):
                return True
            if text in ("false", "0", "no"):
                return False
            raise ValidationError(f"{where} = {value!r} is not a boolean (true/false)", param=self.name)
        if self.type in ("int", "float"):
            return self._number(value, where)
        if self.type == "json":
            return self._json(value, model)
        if self.type == "file":
            return self._file(value, where)
        raise AssertionError(self.type)

    def _number(self, value: Any, where: str) -> int | float:
        if isinstance(value, bool):
            raise ValidationError(f"{where} = {value!r} must be a number, not a boolean", param=self.name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValidationError(f"{where} = {value!r} is not a number", param=self.name) from None
        if math.isnan(number) or math.isinf(number):
            raise ValidationError(f"{where} = {value!r} is not a finite number", param=self.name)
        if self.type == "int":
            if number != int(number):
                raise ValidationError(f"{where} = {value!r} must be a whole number", param=self.name)
            number = int(number)
        if self.minimum is not None and number < self.minimum or self.maximum is not None and number > self.maximum:
            raise ValidationError(
                f"{where} = {value!r} is out of range [{_fmt(self.minimum)}, {_fmt(self.maximum)}]",
                param=self.name,
            )
        return number

    def _json(self, value: Any, model: str) -> dict[str, Any]:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValidationError(
                    f"{model}: parameter {self.name!r} is not valid JSON ({exc.msg}); "
                    f"expected an object like {self.example()}",
                    param=self.name,
                ) from None
        if not isinstance(value, Mapping):
            raise ValidationError(
                f"{model}: parameter {self.name!r} must be a JSON object like {self.example()}, "
                f"got {type(value).__name__}",
                param=self.name,
            )
        known = {k.name: k for k in self.json_keys}
        result: dict[str, Any] = {}
        for key, inner in value.items():
            if key not in known:
                raise ValidationError(
                    f"{model}: parameter {self.name!r} has unknown key {key!r}; known keys: {', '.join(known)}",
                    param=f"{self.name}.{key}",
                )
            if inner is not None:
                # errors inside the object name it: "parameter 'sampling.top_k'"
                result[key] = replace(known[key], name=f"{self.name}.{key}").coerce(inner, model)
        return result

    def _file(self, value: Any, where: str) -> Any:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        name = getattr(value, "name", value)
        suffix = Path(str(name)).suffix.lower().lstrip(".")
        if self.file_types and suffix not in self.file_types:
            raise ValidationError(
                f"{where}: file {str(name)!r} has type {suffix or '(none)'!r}; accepted: "
                f"{', '.join(self.file_types)} (convert it first)",
                param=self.name,
            )
        return value

    def example(self) -> str:
        """A JSON example of this object parameter built from its keys' defaults."""
        return json.dumps({k.name: k.default for k in self.json_keys})

    def summary(self) -> str:
        """One line for help texts and docs: type, default, allowed values."""
        parts = [self.type]
        if self.choices:
            parts.append("one of " + "/".join(self.choices))
        if self.minimum is not None or self.maximum is not None:
            parts.append(f"{_fmt(self.minimum)}..{_fmt(self.maximum)}")
        if self.file_types:
            parts.append("/".join(self.file_types))
        if self.json_keys:
            parts.append(self.example())
        if self.default is not None and not self.json_keys:
            parts.append(f"default {self.default}")
        if self.required:
            parts.append("required")
        return ", ".join(parts)


Rule = Callable[[Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class ModelSpec:
    """A model of the API: its parameters, the rules between them and what it returns."""

    name: str
    kind: ModelKind
    description: str
    params: tuple[Param, ...]
    rules: tuple[tuple[str, Rule], ...] = ()
    #: default output format (TTS: audio container; ASR: response format)
    output_format: str = "wav"
    sample_rate: int | None = None
    #: text length above which a warning is given (the provider's recommendation)
    text_soft_limit: int | None = None
    #: text length above which the item fails (configurable per run)
    text_hard_limit: int | None = None
    #: safe chunk size for text splitting, in words (per-call audio ceiling, upstream)
    chunk_words: int | None = None
    max_audio_seconds: float | None = None
    param_by_name: Mapping[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_by_name", {p.name: p for p in self.params})

    @property
    def file_params(self) -> tuple[str, ...]:
        """Names of the parameters that travel as files."""
        return tuple(p.name for p in self.params if p.type == "file")

    def output_format_for(self, params: Mapping[str, Any]) -> str:
        """The format the API returns for these parameters (qwen3-tts honours ``response_format``)."""
        if self.kind == "tts" and "response_format" in self.param_by_name:
            return str(params.get("response_format") or self.output_format)
        if self.kind == "asr":
            return str(params.get("response_format") or self.output_format)
        return self.output_format


@dataclass(frozen=True)
class ValidatedRequest:
    """Parameters checked against the catalogue, coerced to their types; ready to send."""

    model: ModelSpec
    params: Mapping[str, Any]
    warnings: tuple[str, ...] = ()

    def form_fields(self) -> dict[str, str]:
        """Multipart text fields: JSON objects as JSON strings, booleans as true/false, the model included."""
        fields = {"model": self.model.name}
        for name, value in self.params.items():
            kind = self.model.param_by_name[name].type
            if kind == "file":
                continue
            if kind == "json":
                fields[name] = json.dumps(value, separators=(",", ":"), sort_keys=True)
            elif kind == "bool":
                fields[name] = "true" if value else "false"
            else:
                fields[name] = str(value)
        return fields

    def files(self) -> dict[str, Any]:
        """File parameters (paths or bytes) by field name."""
        return {n: v for n, v in self.params.items() if self.model.param_by_name[n].type == "file"}

    @property
    def output_format(self) -> str:
        return self.model.output_format_for(self.params)


# --- rules -------------------------------------------------------------------------------------------


def _not_together(first: str, others: tuple[str, ...]) -> tuple[str, Rule]:
    def rule(params: Mapping[str, Any]) -> str | None:
        clash = [o for o in others if params.get(o) is not None]
        if params.get(first) is not None and clash:
            return (
                f"{first!r} (a preset voice) cannot be combined with {', '.join(repr(c) for c in clash)} "
                f"(cloning mode): keep one of them"
            )
        return None

    return f"{first} excludes {'/'.join(others)}", rule


# --- the models --------------------------------------------------------------------------------------

_TEXT = Param("text", "str", "The text to speak.", required=True)
_STREAM = Param("stream", "bool", "Stream the audio (SSE); batch work uses false.", default=False)
_SPEED = Param("speed", "float", "Speaking rate multiplier.", default=1.0, minimum=0.25, maximum=4.0)
_VOICE_ID = Param("voice_id", "str", "A voice uploaded with /api/v1/generate/upload for this model.")
_VOICE_URL = Param(
    "voice_url", "str", "URL of a reference voice file (public http/https only).", url_schemes=("http", "https")
)
_VOICE_SETTINGS = Param("voice_settings", "json", "Voice settings object.", json_keys=(_SPEED,))

HIGGS = ModelSpec(
    name=DEFAULT_TTS_MODEL,
    kind="tts",
    description="Higgs Audio V2.5 text-to-speech (presets, cloning from a reference or a voice_id).",
    params=(
        _TEXT,
        Param("voice", "str", "Preset voice name, e.g. Linda or Jack."),
        Param("voice_reference_file", "file", "Reference audio to clone.", file_types=("wav", "mp3")),
        _VOICE_ID,
        _VOICE_URL,
        Param("voice_name", "str", "A saved voice's name."),
        _VOICE_SETTINGS,
        Param(
            "sampling",
            "json",
            "Sampling object.",
            json_keys=(
                Param("temperature", "float", "Sampling temperature.", default=1.0, minimum=0.0, maximum=2.0),
                Param("top_p", "float", "Nucleus sampling mass.", default=0.95, minimum=0.0, maximum=1.0),
                Param("top_k", "int", "Top-k sampling.", default=50, minimum=1, maximum=1000),
            ),
        ),
        _STREAM,
    ),
    output_format="wav",
    sample_rate=TTS_SAMPLE_RATE,
    text_soft_limit=1200,
    text_hard_limit=4000,
    chunk_words=200,
    max_audio_seconds=80.0,
)

CHATTERBOX = ModelSpec(
    name="chatterbox",
    kind="tts",
    description="ChatterBox Voice Twin: 23 languages, cloning from a short prompt.",
    params=(
        _TEXT,
        Param(
            "language_id",
            "str",
            "Language code.",
            default="en",
            choices=tuple(
                "ar da de el en es fi fr he hi it ja ko ms nl no pl pt ru sv sw tr zh".split()
            ),
        ),
        Param(
            "audio_prompt_file",
            "file",
            "Reference audio, ≤ 30 s (only the first ~10 s matter).",
            file_types=("wav", "mp3", "m4a", "ogg"),
        ),
        _VOICE_ID,
        Param("preset_url", "str", "URL of a preset voice (public http/https only).", url_schemes=("http", "https")),
        Param("exaggeration", "float", "Emotion exaggeration.", default=0.5, minimum=0.0, maximum=2.0),
        Param("temperature", "float", "Sampling temperature.", default=0.8, minimum=0.05, maximum=5.0),
        Param("diffusion_steps", "int", "Diffusion steps.", default=5, minimum=1, maximum=100),
        Param("max_tokens", "int", "Maximum speech tokens.", default=3000, minimum=1, maximum=10000),
        Param("top_p", "float", "Nucleus sampling mass.", default=1.0, minimum=0.0, maximum=1.0),
        Param("min_p", "float", "Min-p sampling.", default=0.05, minimum=0.0, maximum=1.0),
        Param("repetition_penalty", "float", "Repetition penalty.", default=1.2, minimum=1.0, maximum=2.0),
        Param("seed", "int", "Random seed (unset: random).", minimum=0, maximum=2**32 - 1),
        _STREAM,
    ),
    output_format="wav",
    sample_rate=TTS_SAMPLE_RATE,
    text_soft_limit=1000,
    text_hard_limit=3000,
    chunk_words=150,
)

QWEN3_VOICES = ("Vivian", "Serena", "Uncle_Fu", "Dylan", "Eric", "Ryan", "Aiden", "Ono_Anna", "Sohee")

QWEN3 = ModelSpec(
    name="qwen3-tts",
    kind="tts",
    description="Qwen3-TTS: preset voices with style instructions, or cloning; several output formats.",
    params=(
        _TEXT,
        Param("voice", "str", "Preset voice (CustomVoice mode).", choices=QWEN3_VOICES),
        _VOICE_ID,
        _VOICE_URL,
        _VOICE_SETTINGS,
        Param(
            "language",
            "str",
            "Language.",
            default="Auto",
            choices=(
                "Auto Chinese English French German Italian Japanese Korean Portuguese Russian Spanish".split()
            ),
        ),
        Param("instructions", "str", "Speaking style, e.g. 'speak cheerfully' (CustomVoice voices)."),
        Param(
            "response_format",
            "str",
            "Audio format returned.",
            default="wav",
            choices=("wav", "pcm", "mp3", "flac", "aac", "opus"),
        ),
        _STREAM,
    ),
    rules=(_not_together("voice", ("voice_id", "voice_url")),),
    output_format="wav",
    sample_rate=TTS_SAMPLE_RATE,
    text_soft_limit=2400,
    text_hard_limit=6000,
    chunk_words=350,
    max_audio_seconds=164.0,
)

WHISPER = ModelSpec(
    name="whisper_v3_turbo",
    kind="asr",
    description="Whisper large-v3-turbo speech recognition.",
    params=(
        Param(
            "file",
            "file",
            "Audio to transcribe.",
            required=True,
            file_types=("mp3", "wav", "m4a", "ogg", "webm"),
        ),
        Param("language", "str", "Language code (the API defaults to en, not auto-detect).", default="en",
              send_default=True),
        Param("response_format", "str", "Response format.", default="json", choices=("json", "text"),
              send_default=True),
    ),
    output_format="json",
    sample_rate=ASR_SAMPLE_RATE,
)

MODELS: Mapping[str, ModelSpec] = {m.name: m for m in (HIGGS, CHATTERBOX, QWEN3, WHISPER)}
TTS_MODELS = tuple(n for n, m in MODELS.items() if m.kind == "tts")
ASR_MODELS = tuple(n for n, m in MODELS.items() if m.kind == "asr")
#: models that accept /api/v1/generate/upload (Base mode) and the reference types it takes
UPLOAD_MODELS = TTS_MODELS
UPLOAD_FILE_TYPES = ("wav", "mp3")


def get_model(name: str) -> ModelSpec:
    """The spec of a model by name, or a ValidationError listing the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValidationError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}", param="model"
        ) from None


def validate(
    model: str, params: Mapping[str, Any], *, text_hard_limit: int | None = None, speakable: bool = True
) -> ValidatedRequest:
    """Check and coerce ``params`` for ``model``; raise ValidationError naming parameter, value and rule.

    Empty values (None, "", NaN) count as absent, so manifest columns may be blank. Defaults marked
    ``send_default`` are filled in; other defaults are left to the API. ``speakable=False`` skips the
    has-letters check (the local server answers such texts as the API does: with empty audio); control
    characters are always refused.
    """
    spec = get_model(model)
    coerced: dict[str, Any] = {}
    for name, value in params.items():
        param = spec.param_by_name.get(name)
        if _is_empty(value):
            if param is not None and param.required and value is not None:
                raise ValidationError(f"{model}: parameter {name!r} is empty", param=name)
            continue
        if param is None:
            raise ValidationError(
                f"{model}: unknown parameter {name!r}; {model} accepts: {', '.join(spec.param_by_name)}",
                param=name,
            )
        coerced[name] = param.coerce(value, model)
    for param in spec.params:
        if param.name not in coerced:
            if param.required:
                raise ValidationError(f"{model}: parameter {param.name!r} is required", param=param.name)
            if param.send_default:
                coerced[param.name] = param.default
    warnings: tuple[str, ...] = ()
    if spec.kind == "tts":
        warnings = check_text(spec, coerced["text"], text_hard_limit=text_hard_limit, speakable=speakable)
    for rule_name, rule in spec.rules:
        problem = rule(coerced)
        if problem:
            raise ValidationError(f"{model}: {problem} (rule: {rule_name})", param=rule_name.split()[0])
    return ValidatedRequest(spec, coerced, warnings)


def check_text(
    spec: ModelSpec, text: str, *, text_hard_limit: int | None = None, speakable: bool = True
) -> tuple[str, ...]:
    """The checks :func:`validate` makes on a TTS model's (coerced, non-empty) ``text``: raise for text that
    cannot be sent; the warnings for text that can. (The rules between parameters never look at the text, so a
    manifest reader may validate a row's other parameters once for many rows and check each text with this.)"""
    model = spec.name
    if not text.strip():
        raise UnspeakableText(f"{model}: parameter 'text' is empty (only whitespace); nothing to speak",
                              param="text")
    check_control_characters(text, model)
    if speakable:
        check_speakable(text, model)
    hard = text_hard_limit if text_hard_limit is not None else spec.text_hard_limit
    if hard is not None and len(text) > hard:
        raise ValidationError(
            f"{model}: parameter 'text' has {len(text)} characters, over the limit of {hard} "
            f"(split it into chunks of ≤ {spec.chunk_words} words, or raise the limit)",
            param="text",
        )
    if spec.text_soft_limit is not None and len(text) > spec.text_soft_limit:
        return (f"{model}: text has {len(text)} characters, over the recommended {spec.text_soft_limit}",)
    return ()


#: C0 and C1 control characters and DEL, except tab, newline and carriage return
_FORBIDDEN_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: the same characters for Arrow's RE2 (which a manifest reader runs on a whole column of texts at once)
FORBIDDEN_CONTROL_RE2 = r"[\x{00}-\x{08}\x{0b}\x{0c}\x{0e}-\x{1f}\x{7f}-\x{9f}]"
#: a letter or digit of any script (``\w`` without the underscore)
_SPEAKABLE = re.compile(r"[^\W_]")


def check_control_characters(text: str, model: str) -> None:
    """Raise ForbiddenCharacter if ``text`` holds NUL, another C0/C1 control or DEL (tab, newline and
    return are fine)."""
    control = _FORBIDDEN_CONTROL.search(text)
    if control is not None:
        raise ForbiddenCharacter(
            f"{model}: parameter 'text' holds the control character U+{ord(control.group()):04X} at position "
            f"{control.start()}; remove it from the text (only tab, newline and return are allowed)",
            param="text",
        )


def check_speakable(text: str, model: str) -> None:
    """Raise UnspeakableText unless ``text`` has at least one letter or digit (not only punctuation,
    symbols or zero-width characters)."""
    if _SPEAKABLE.search(text) is None:
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise UnspeakableText(
            f"{model}: parameter 'text' = {shown!r} has no letters or digits, so nothing can be spoken "
            f"(only punctuation, symbols, spaces or invisible characters); fix or drop the row",
            param="text",
        )


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str) and value == "":
        return True
    return isinstance(value, float) and math.isnan(value)


def _fmt(number: float | None) -> str:
    if number is None:
        return "…"
    return str(int(number)) if float(number).is_integer() else str(number)


def model_table_markdown() -> str:
    """The README's model table, generated (a test keeps README and catalogue in step)."""
    lines = ["| model | kind | parameters | output |", "|---|---|---|---|"]
    for spec in MODELS.values():
        params = "<br>".join(f"`{p.name}`: {p.summary()}" for p in spec.params)
        output = spec.output_format + (f", {spec.sample_rate // 1000} kHz mono" if spec.kind == "tts" else "")
        if spec.chunk_words:
            output += f"; chunks ≤ {spec.chunk_words} words"
        lines.append(f"| `{spec.name}` | {spec.kind} | {params} | {output} |")
    return "\n".join(lines)


__all__ = [
    "ASR_MODELS",
    "MODELS",
    "ModelSpec",
    "Param",
    "TTS_MODELS",
    "TTS_SAMPLE_RATE",
    "UPLOAD_FILE_TYPES",
    "UPLOAD_MODELS",
    "ValidatedRequest",
    "FORBIDDEN_CONTROL_RE2",
    "check_control_characters",
    "check_text",
    "check_speakable",
    "get_model",
    "model_table_markdown",
    "validate",
]
