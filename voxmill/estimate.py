"""What a manifest will take before it is run: items, characters or audio minutes, duration, cost."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from voxmill.audio.measure import measure_file
from voxmill.errors import ConfigError, VoxmillError
from voxmill.manifests import JobKind, ManifestReader, RunDefaults, iter_record_batches
from voxmill.settings import Settings

#: speaking rate used to predict TTS output length (words per second; ~150 words per minute)
WORDS_PER_SECOND = 2.5


@dataclass(frozen=True)
class PriceTable:
    """Prices per model: ``per_1k_chars`` (TTS), ``per_minute`` (audio in or out), ``per_request``.

    The provider publishes no prices, so the table is the user's (a JSON file); absent prices are unknown.
    """

    prices: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> PriceTable:
        """Read a JSON price table; ConfigError naming the file when it is malformed."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"price table {path}: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ConfigError(f"price table {path}: expected {{model: {{per_1k_chars|per_minute|per_request: n}}}}")
        return cls({m: {k: float(v) for k, v in p.items()} for m, p in data.items()})

    @classmethod
    def resolve(cls, path: Path | None = None, settings: Settings | None = None) -> PriceTable:
        """The table at ``path``, else at ``settings.prices_path`` (VOXMILL_PRICES); empty (costs unknown) else."""
        chosen = path or (settings or Settings.from_env()).prices_path
        return cls.load(chosen) if chosen else cls()

    def cost(self, model: str, *, chars: int, minutes: float, requests: int) -> float | None:
        """Cost of this much work on ``model``, or None when the table has no price for it."""
        price = self.prices.get(model)
        if not price:
            return None
        return (
            price.get("per_1k_chars", 0.0) * chars / 1000
            + price.get("per_minute", 0.0) * minutes
            + price.get("per_request", 0.0) * requests
        )


@dataclass
class ModelEstimate:
    """Totals for one model."""

    items: int = 0
    chars: int = 0
    words: int = 0
    audio_minutes: float = 0.0


@dataclass
class Estimate:
    """A manifest's estimate, per model, with unusable rows counted apart."""

    manifest: str
    kind: JobKind
    by_model: dict[str, ModelEstimate]
    invalid_rows: int
    prices: PriceTable

    def text(self) -> str:
        """A readable table."""
        lines = [f"{self.manifest} ({self.kind.upper()})"]
        total_cost: float | None = 0.0
        for model, est in sorted(self.by_model.items()):
            cost = self.prices.cost(model, chars=est.chars, minutes=est.audio_minutes, requests=est.items)
            total_cost = None if cost is None or total_cost is None else total_cost + cost
            what = (f"{est.chars} chars, {est.words} words, ~{est.audio_minutes:.1f} min of speech"
                    if self.kind == "tts" else f"{est.audio_minutes:.1f} min of audio")
            shown = f"{cost:.2f}" if cost is not None else "unknown (give --prices)"
            lines.append(f"  {model}: {est.items} items, {what}; cost {shown}")
        if self.invalid_rows:
            lines.append(f"  {self.invalid_rows} rows are invalid and would fail (see `voxmill synthesize` output)")
        if total_cost is not None and self.by_model:
            lines.append(f"  total cost: {total_cost:.2f}")
        return "\n".join(lines)


def estimate_manifest(
    manifest: str, *, kind: JobKind | None = None, model: str | None = None, prices: PriceTable | None = None
) -> Estimate:
    """Read ``manifest`` once and add up what it asks for (ASR files are probed for their duration)."""
    if kind is None:
        first = next(iter_record_batches(manifest), None)
        names = first.schema.names if first is not None else []
        kind = "tts" if "text" in names else "asr" if "audio" in names else None
        if kind is None:
            raise ConfigError(f"{manifest}: neither a 'text' nor an 'audio' column; give --kind")
    by_model: dict[str, ModelEstimate] = defaultdict(ModelEstimate)
    invalid = 0
    for item in ManifestReader(manifest, kind, RunDefaults(model=model)):
        if item.problem is not None:
            invalid += 1
            continue
        est = by_model[item.model]
        est.items += 1
        if kind == "tts":
            text = str(item.params.get("text", ""))
            words = len(text.split())
            est.chars += len(text)
            est.words += words
            est.audio_minutes += words / WORDS_PER_SECOND / 60
        else:
            try:
                est.audio_minutes += measure_file(Path(str(item.audio)), loudness=False).duration_s / 60
            except (VoxmillError, OSError):
                invalid += 1
                est.items -= 1
    return Estimate(manifest, kind, dict(by_model), invalid, prices or PriceTable())


__all__ = ["Estimate", "ModelEstimate", "PriceTable", "WORDS_PER_SECOND", "estimate_manifest"]
