"""Per-voice statistics and the per-voice IQR rule (a slow voice's normal rows, rejected by one rule over all
rows, are kept; its real outlier is not), speaker balance against the spec's targets, and dedup of normalised
texts (dropped before any call) and identical clips (flagged, then dropped), counted on the server side."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from voxmill.dataset import DatasetSpec, PublishGates, QcThresholds, build_dataset
from voxmill.dataset.dedup import normalise_text
from voxmill.dataset.qc import judge
from voxmill.dataset.rows import DatasetRow, rows_table
from voxmill.dataset.spec import Dedup
from voxmill.dataset.stats import dataset_stats
from voxmill.settings import ApiKey, RateLimit, Settings

TEXT = "a sentence of exactly forty characters.."


def row(row_id: str, voice: str, seconds: float) -> DatasetRow:
    return DatasetRow(id=row_id, text=TEXT, audio_file=None, audio_path=None, duration=seconds, sample_rate=24000,
                      model="higgs2p5", engine="test", params=json.dumps({"voice": voice}), key=row_id,
                      chars_per_s=len(TEXT) / seconds, s_per_char=seconds / len(TEXT), lufs=-20.0, wer=0.05)


def voices_table():
    rng = np.random.default_rng(7)
    fast = [row(f"jack{i}", "Jack", s) for i, s in enumerate(rng.uniform(2.0, 2.4, 30))]
    slow = [row(f"linda{i}", "Linda", s) for i, s in enumerate(rng.uniform(3.6, 4.0, 8))]
    outlier = row("linda-stuck", "Linda", 9.0)  # far too long even for Linda
    return rows_table([*fast, *slow, outlier], with_audio=False)


def test_iqr_rule_per_voice_keeps_a_slow_voices_normal_rows():
    table = voices_table()
    ids = table["id"].to_pylist()
    everyone = judge(table, QcThresholds(iqr_by="all"))
    rejected_globally = {i for i, r in zip(ids, everyone.reasons, strict=True) if r}
    assert {f"linda{i}" for i in range(8)} <= rejected_globally, "one rule for all rejects Linda's normal rows"

    per_voice = judge(table, QcThresholds())
    rejected = {i: r for i, r in zip(ids, per_voice.reasons, strict=True) if r}
    assert set(rejected) == {"linda-stuck"}, rejected
    assert "outside the IQR bounds of voice 'Linda'" in rejected["linda-stuck"][0]
    assert set(per_voice.s_per_char_bounds) == {"Jack", "Linda"}
    low, high = per_voice.s_per_char_bounds["Linda"]
    linda = [v for i, v in zip(ids, table["s_per_char"].to_pylist(), strict=True) if i.startswith("linda")]
    assert low <= min(linda) and max(linda[:-1]) <= high < 9.0 / 40


def test_statistics_per_voice_and_balance():
    table = voices_table()
    accepted = np.array(judge(table, QcThresholds()).accepted)
    stats = dataset_stats(table, accepted, language="en", targets={"Jack": 0.5, "Linda": 0.4, "Ava": 0.1},
                          tolerance=0.05)
    by_voice = {g.group: g for g in stats.by_voice}
    assert {v: g.rows for v, g in by_voice.items()} == {"Jack": 30, "Linda": 8}
    durations = table["duration"].to_numpy()
    assert by_voice["Jack"].hours == pytest.approx(durations[:30].sum() / 3600, abs=1e-6)
    assert 2.0 < by_voice["Jack"].distributions["duration"]["p50"] < 2.4
    assert 40 / 4.0 <= by_voice["Linda"].distributions["chars_per_s"]["p10"] <= 40 / 3.6
    assert by_voice["Linda"].distributions["wer"]["mean"] == pytest.approx(0.05)
    assert [(g.group, g.rows) for g in stats.by_language] == [("en", 38)]
    balance = {b.voice: b for b in stats.balance}
    jack_share = durations[:30].sum() / durations[:38].sum()
    assert balance["Jack"].share == pytest.approx(jack_share, abs=1e-4) and balance["Jack"].off_target
    assert balance["Ava"].hours == 0 and balance["Ava"].deviation == pytest.approx(-0.1)


def test_normalised_text():
    assert normalise_text("Hello,  WORLD!") == normalise_text("hello world") == "hello world"
    assert normalise_text("Ｈｅｌｌｏ—world") == "hello world"


def test_dedup_texts_dropped_before_any_call_and_clips_flagged_then_dropped(null_server, tmp_path):
    # the null engine says every text with the same silence: identical clips
    source = tmp_path / "texts.csv"
    source.write_text('id,text\nr0,Hello world.\nr1,"hello,  WORLD"\nr2,Another line.\nr3,A third line.\n')
    dest = tmp_path / "dest"
    spec = DatasetSpec(name="dups", kind="tts", source=str(source), dest=str(dest), model="higgs2p5",
                       qc=QcThresholds(min_duration_s=0.05), dedup=Dedup(text="drop", audio="flag"))
    settings = Settings(api_key=ApiKey(null_server.token), base_url=null_server.base_url,
                        rate_limit=RateLimit(max_concurrent=2), cache_dir=tmp_path / "cache")
    first = build_dataset(spec, settings)
    assert null_server.stats()["generations_total"] == 3, "the duplicate text was never sent"
    folder = dest / "versions" / first.version
    kept = {r["id"]: r for r in pq.read_table(next((folder / "data").glob("*.parquet"))).to_pylist()}
    assert kept["r0"]["duplicate_of"] is None and kept["r2"]["duplicate_of"] == kept["r3"]["duplicate_of"] == "r0"
    rejects = pq.read_table(folder / "rejects.parquet").to_pylist()
    assert [(r["id"], r["reasons"]) for r in rejects] == [("r1", ["duplicate: same normalised text as 'r0'"])]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["duplicates"] == {"text": 1, "audio": 2}
    card = (folder / "README.md").read_text()
    assert "| text | 1 | drop |" in card and "| audio | 2 | flag |" in card
    assert "| default | 3 |" in card, "the per-voice table"
    # the card's plots: PNGs in the version folder, linked from README.md, checksummed
    sums = (folder / "SHA256SUMS").read_text()
    plots = sorted(p.relative_to(folder).as_posix() for p in (folder / "plots").glob("*.png"))
    assert plots == ["plots/chars_per_s_by_voice.png", "plots/duration.png", "plots/hours_by_voice.png",
                     "plots/rejects_by_reason.png", "plots/wer.png"]
    for plot in plots:
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({plot})" in card and plot in sums

    null_server.reset_stats()
    # dropping the 2 duplicate clips loses 2 of 3 rows: a deliberate drop, so the drop gates are opened for it
    spec = replace(spec, dedup=Dedup(text="drop", audio="drop"),
                   publish=PublishGates(max_rows_drop=None, max_hours_drop=None))
    second = build_dataset(spec, settings)
    assert null_server.stats()["generations_total"] == 0 and second.published
    assert (second.rows, second.rejected) == (1, 3), "duplicates do not count against the reject gate"
    rejects = {r["id"]: r["reasons"] for r in
               pq.read_table(dest / "versions" / second.version / "rejects.parquet").to_pylist()}
    assert rejects["r2"] == ["duplicate: same audio as 'r0'"] and set(rejects) == {"r1", "r2", "r3"}
