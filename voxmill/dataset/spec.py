"""The dataset spec: one TOML file saying what to build, how to check it and where to publish it.

```toml
name = "demo-speech"
kind = "tts"                      # tts: texts → speech; asr: audio → transcripts
source = "demo_tts.csv"           # a manifest (path or fsspec URL), or for asr a folder / glob of audio
dest = "../out/datasets/demo"     # a local folder or an fsspec URL (s3://bucket/prefix)
shard_rows = 500                  # rows per Parquet shard
keep_versions = 5                 # published versions kept (the oldest beyond are removed)

[model]
name = "higgs2p5"
params = { voice = "Linda" }

[output]
format = "flac"
sample_rate = 16000

[qc]
roundtrip = true                  # tts: transcribe every new clip back and score its WER
max_wer = 0.3

[publish]                         # gates checked before `latest` moves (see PublishGates)
min_rows = 1
max_reject_fraction = 0.5
```

Relative local paths are resolved against the spec file's folder, so a spec runs from anywhere.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from voxmill.audio.transcode import OutputSpec
from voxmill.catalog import ASR_MODELS, TTS_MODELS
from voxmill.errors import ConfigError
from voxmill.manifests import JobKind


@dataclass(frozen=True)
class QcThresholds:
    """Per-row filters (None: not applied) and the interquartile outlier rule on seconds per character."""

    min_duration_s: float | None = 0.3
    max_duration_s: float | None = 30.0
    min_chars_per_s: float | None = None
    max_chars_per_s: float | None = None
    max_leading_silence_s: float | None = None
    max_trailing_silence_s: float | None = None
    #: sample peak ceiling (dBFS); off by default: TTS engines normalise peaks to full scale
    max_peak_dbfs: float | None = None
    #: largest share of samples at full scale (clipping)
    max_clipped_fraction: float | None = 0.001
    min_lufs: float | None = None
    max_lufs: float | None = None
    max_wer: float | None = None
    #: tts: transcribe each new clip back through the ASR model and score its WER
    roundtrip: bool = False
    #: k of the IQR rule on seconds per character (Emilia-Pipe uses 1.5); None turns it off
    iqr_k: float | None = 1.5
    #: the IQR rule needs this many rows (of a group) to say anything
    iqr_min_rows: int = 8
    #: the IQR rule's groups: ``voice`` (each voice against itself), ``model``, or ``all`` rows at once
    iqr_by: str = "voice"

    def __post_init__(self) -> None:
        if self.iqr_by not in ("voice", "model", "all"):
            raise ConfigError(f"[qc] iqr_by must be 'voice', 'model' or 'all', got {self.iqr_by!r}")


@dataclass(frozen=True)
class PublishGates:
    """Checks a built version must pass before ``latest`` moves to it (None: that gate is off).

    The defaults refuse a build whose rows were all (or mostly) rejected, or that lost half the dataset.
    """

    #: accepted rows the version must hold
    min_rows: int | None = 1
    #: largest share of the version's rows that QC may reject
    max_reject_fraction: float | None = 0.5
    #: largest drop in accepted rows against the previous version, as a fraction of its rows
    max_rows_drop: float | None = 0.5
    #: largest drop in accepted hours against the previous version, as a fraction of its hours
    max_hours_drop: float | None = 0.5
    #: largest mean WER of the accepted rows (rows without a WER are left out)
    max_mean_wer: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_reject_fraction", "max_rows_drop", "max_hours_drop"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"[publish] {name} must be a fraction in [0, 1], got {value}")
        if self.min_rows is not None and self.min_rows < 0:
            raise ConfigError(f"[publish] min_rows must be ≥ 0, got {self.min_rows}")
        if self.max_mean_wer is not None and self.max_mean_wer < 0:
            raise ConfigError(f"[publish] max_mean_wer must be ≥ 0, got {self.max_mean_wer}")


@dataclass(frozen=True)
class Balance:
    """Speaker balance: the share of the accepted hours each voice should have (the card compares)."""

    #: voice → target share of the hours (shares sum to at most 1)
    target: dict[str, float] = field(default_factory=dict)
    #: a voice whose share is further than this from its target is flagged
    tolerance: float = 0.05

    def __post_init__(self) -> None:
        if any(not 0.0 <= v <= 1.0 for v in self.target.values()) or sum(self.target.values()) > 1.0 + 1e-9:
            raise ConfigError(f"[balance] target shares must be fractions summing to at most 1, got {self.target}")
        if not 0.0 <= self.tolerance <= 1.0:
            raise ConfigError(f"[balance] tolerance must be a fraction, got {self.tolerance}")


@dataclass(frozen=True)
class Dedup:
    """What to do with duplicates: ``off``, ``flag`` (kept, ``duplicate_of`` names the first) or ``drop``
    (rejected with the reason ``duplicate: …``; a duplicate text is never sent)."""

    #: source rows whose normalised text (case, punctuation and spacing ignored) repeats an earlier row's
    text: str = "off"
    #: clips whose audio bytes repeat an earlier row's
    audio: str = "off"

    def __post_init__(self) -> None:
        for name in ("text", "audio"):
            if getattr(self, name) not in ("off", "flag", "drop"):
                raise ConfigError(f"[dedup] {name} must be 'off', 'flag' or 'drop', got {getattr(self, name)!r}")


@dataclass(frozen=True)
class DatasetSpec:
    """A validated dataset spec (see the module docstring for the file format)."""

    name: str
    kind: JobKind
    source: str
    dest: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    output: OutputSpec = field(default_factory=OutputSpec)
    qc: QcThresholds = field(default_factory=QcThresholds)
    publish: PublishGates = field(default_factory=PublishGates)
    balance: Balance = field(default_factory=Balance)
    dedup: Dedup = field(default_factory=Dedup)
    shard_rows: int = 500
    keep_versions: int = 5
    #: ASR model of the TTS round trip
    asr_model: str = ASR_MODELS[0]
    language: str = "en"
    #: where the build's ledgers live (a local folder); default DEST/.work locally, ~/.cache otherwise
    work_dir: str | None = None

    def with_overrides(self, *, source: str | None = None, dest: str | None = None) -> DatasetSpec:
        """The same spec pointed at another source and/or destination (the CLI's --source/--dest)."""
        return replace(self, source=source or self.source, dest=dest or self.dest)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (for the version manifest and the card)."""
        return {
            "name": self.name, "kind": self.kind, "source": self.source, "dest": self.dest, "model": self.model,
            "params": self.params, "output": {f.name: getattr(self.output, f.name) for f in fields(OutputSpec)},
            "qc": {f.name: getattr(self.qc, f.name) for f in fields(QcThresholds)},
            "publish": {f.name: getattr(self.publish, f.name) for f in fields(PublishGates)},
            "balance": {"target": dict(self.balance.target), "tolerance": self.balance.tolerance},
            "dedup": {"text": self.dedup.text, "audio": self.dedup.audio},
            "shard_rows": self.shard_rows, "keep_versions": self.keep_versions, "asr_model": self.asr_model,
            "language": self.language,
        }


_TOP_KEYS = {"name", "kind", "source", "dest", "shard_rows", "keep_versions", "work_dir", "language",
             "model", "output", "qc", "publish", "balance", "dedup"}


def _resolve(value: str, base: Path) -> str:
    if "://" in value or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def _section(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return section


def _off(section: dict[str, Any], keep: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The section with ``false`` values (but those of boolean keys in ``keep``) as None: that check is off."""
    return {k: None if v is False and k not in keep else v for k, v in section.items()}


def parse_spec(data: dict[str, Any], *, base: Path, where: str = "dataset spec") -> DatasetSpec:
    """A DatasetSpec from parsed TOML; ConfigError naming the key and the fix for anything wrong."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    for key in ("name", "kind", "source", "dest"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ConfigError(f"{where}: '{key}' is required (a string)")
    kind = data["kind"]
    if kind not in ("tts", "asr"):
        raise ConfigError(f"{where}: kind must be 'tts' or 'asr', got {kind!r}")
    model_section = _section(data, "model", where)
    model = model_section.get("name", TTS_MODELS[0] if kind == "tts" else ASR_MODELS[0])
    allowed_models = TTS_MODELS if kind == "tts" else ASR_MODELS
    if model not in allowed_models:
        raise ConfigError(f"{where}: [model] name {model!r} is not a {kind} model; use one of {list(allowed_models)}")
    params = model_section.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: [model] params must be a table")
    asr_model = model_section.get("asr_model", ASR_MODELS[0])
    try:
        output = OutputSpec(**_section(data, "output", where))
    except TypeError as exc:
        raise ConfigError(f"{where}: [output]: {exc}") from None
    try:
        # TOML has no null: `false` turns a filter (or a gate) off
        qc = QcThresholds(**_off(_section(data, "qc", where), keep=frozenset({"roundtrip"})))
    except TypeError as exc:
        raise ConfigError(f"{where}: [qc]: {exc}; see docs/datasets.md for the filters") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    try:
        gates = PublishGates(**_off(_section(data, "publish", where)))
    except TypeError as exc:
        raise ConfigError(f"{where}: [publish]: {exc}; see docs/datasets.md for the gates") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    try:
        balance = Balance(**_section(data, "balance", where))
        dedup = Dedup(**_section(data, "dedup", where))
    except TypeError as exc:
        raise ConfigError(f"{where}: [balance]/[dedup]: {exc}; see docs/datasets.md") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    if qc.roundtrip and kind != "tts":
        raise ConfigError(f"{where}: [qc] roundtrip is for tts builds; asr builds score WER against reference_text")
    if kind == "tts" and qc.max_wer is not None and not qc.roundtrip:
        raise ConfigError(f"{where}: [qc] max_wer needs roundtrip = true in a tts build (the WER comes from it)")
    shard_rows = int(data.get("shard_rows", 500))
    keep = int(data.get("keep_versions", 5))
    if shard_rows < 1 or keep < 1:
        raise ConfigError(f"{where}: shard_rows and keep_versions must be ≥ 1")
    work_dir = data.get("work_dir")
    return DatasetSpec(
        name=data["name"], kind=kind, source=_resolve(data["source"], base), dest=_resolve(data["dest"], base),
        model=model, params=dict(params), output=output, qc=qc, publish=gates, balance=balance, dedup=dedup,
        shard_rows=shard_rows,
        keep_versions=keep,
        asr_model=asr_model, language=str(data.get("language", "en")),
        work_dir=_resolve(work_dir, base) if work_dir else None,
    )


def load_spec(path: str | Path, *, source: str | None = None, dest: str | None = None) -> DatasetSpec:
    """Read a spec file; ``source``/``dest`` override the file's (so one spec serves a test and production)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"dataset spec {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"dataset spec {str(path)!r} is not valid TOML: {exc}") from None
    spec = parse_spec(data, base=path.resolve().parent, where=f"dataset spec {str(path)!r}")
    return spec.with_overrides(source=source, dest=dest)


__all__ = ["Balance", "DatasetSpec", "Dedup", "PublishGates", "QcThresholds", "load_spec", "parse_spec"]
