"""Publish gates: a build whose engine returns garbage (the server's ``garbage_audio_rate`` fault: valid WAVs of
clipped noise) is refused by the default gates — the command exits non-zero naming them, ``latest`` stays —
and ``--force`` publishes it without paying again; the gates' own arithmetic; the ``[publish]`` table."""

from __future__ import annotations

import io

import pytest
import soundfile

from voxmill.cli import main
from voxmill.dataset import DatasetStore, PublishGates, load_spec
from voxmill.dataset.gates import check_gates
from voxmill.dataset.publish import BuildDiff, VersionManifest
from voxmill.errors import ConfigError

SPEC = 'name = "nightly"\nkind = "tts"\nsource = "texts.csv"\ndest = "dest"\n[qc]\nmin_duration_s = 0.05\n'


def write_texts(folder, texts: list[str]) -> None:
    lines = "".join(f"r{i},{text}\n" for i, text in enumerate(texts))
    (folder / "texts.csv").write_text("id,text\n" + lines)


def test_garbage_engine_is_refused_and_force_publishes(make_server, tmp_path, monkeypatch, capsys):
    server = make_server()
    monkeypatch.setenv("VOXMILL_API_KEY", server.token)
    monkeypatch.setenv("VOXMILL_BASE_URL", server.base_url)
    monkeypatch.setenv("VOXMILL_CACHE_DIR", str(tmp_path / "cache"))
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    write_texts(tmp_path, ["First line.", "Second line.", "Third line."])
    assert main(["dataset", "build", str(spec)]) == 0
    store = DatasetStore(str(tmp_path / "dest"))
    good = store.latest_id()
    assert good is not None and store.manifest(good).rows == 3
    capsys.readouterr()

    # the engine breaks: every TTS answer is a valid WAV of clipped noise, and tonight's texts are new
    server.set_faults(garbage_audio_rate=1.0)
    server.reset_stats()
    write_texts(tmp_path, ["First line edited.", "Second line edited.", "Third line edited."])
    assert main(["dataset", "build", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert server.stats()["generations_total"] == 3, "the garbage was paid for"
    assert "NOT PUBLISHED" in out and "min_rows: 0 accepted rows < 1" in err
    assert "max_reject_fraction: 3 of 3 rows rejected (100%)" in err and "--force" in err
    assert store.latest_id() == good and store.version_ids() == [good]
    refused = sorted(p.name for p in (tmp_path / "dest" / "versions").iterdir() if p.name != good)
    assert len(refused) == 1, "the refused version stays for inspection"
    rejects = store.read_file(refused[0], next(e for e in store.manifest(refused[0]).files
                                                if e.path == "rejects.parquet")).to_pylist()
    assert {r["id"] for r in rejects} == {"r0", "r1", "r2"}
    assert all(any(x.startswith("clipped_fraction") for x in r["reasons"]) for r in rejects), rejects
    noise, rate = soundfile.read(io.BytesIO(rejects[0]["audio"]["bytes"]))
    assert rate == 24000 and len(noise) >= 12000  # a valid WAV: the garbage got through HTTP, QC caught it

    # --force publishes the same rows without paying again (the build's ledger holds them)
    server.reset_stats()
    assert main(["dataset", "build", str(spec), "--force"]) == 0
    out, _ = capsys.readouterr()
    assert server.stats()["generations_total"] == 0
    forced = store.latest_id()
    assert forced != good and store.manifest(forced).rows == 0 and store.manifest(forced).rejected == 3
    assert "published with --force despite" in out and "min_rows" in store.manifest(forced).gate_failures[0]
    card = (tmp_path / "dest" / "versions" / forced / "README.md").read_text()
    assert "Published with --force despite failed publish gates" in card

    # the engine is fixed: a plain rerun has nothing to do (the garbage is paid for and published), while
    # --remake-rejected makes the rejected rows again, and only those
    server.clear_faults()
    server.reset_stats()
    assert main(["dataset", "build", str(spec)]) == 0
    assert server.stats()["generations_total"] == 0 and store.latest_id() == forced
    assert main(["dataset", "build", str(spec), "--remake-rejected", "--plan"]) == 0
    assert "generate              3" in capsys.readouterr().out
    assert main(["dataset", "build", str(spec), "--remake-rejected"]) == 0
    assert server.stats()["generations_total"] == 3
    fixed = store.manifest(store.latest_id())
    assert (fixed.rows, fixed.rejected, fixed.previous) == (3, 0, forced)


def manifest(rows: int, hours: float) -> VersionManifest:
    return VersionManifest(id="v00001-x", name="t", created_at="now", previous=None, rows=rows, rejected=0,
                           hours=hours, diff=BuildDiff(), filters_effect={}, models=[], engines=[],
                           billed_requests=0, cost=None, spec={})


def test_gate_arithmetic():
    gates = PublishGates(max_mean_wer=0.2)
    assert check_gates(gates, rows=90, rejected=10, hours=0.9, mean_wer=0.1, previous=manifest(100, 1.0)) == []
    failures = check_gates(gates, rows=40, rejected=60, hours=0.3, mean_wer=0.25, previous=manifest(100, 1.0))
    assert [f.gate for f in failures] == ["max_reject_fraction", "max_rows_drop", "max_hours_drop", "max_mean_wer"]
    assert str(failures[1]) == "max_rows_drop: accepted rows fell from 100 (v00001-x) to 40 (-60%) > -50%"
    off = PublishGates(min_rows=None, max_reject_fraction=None, max_rows_drop=None, max_hours_drop=None)
    assert check_gates(off, rows=0, rejected=5, hours=0.0, mean_wer=None, previous=manifest(100, 1.0)) == []


def test_publish_table_in_the_spec(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('name="a"\nkind="tts"\nsource="x.csv"\ndest="d"\n[publish]\nmin_rows=100\nmax_mean_wer=0.1\n')
    loaded = load_spec(spec)
    assert loaded.publish.min_rows == 100 and loaded.publish.max_mean_wer == 0.1
    assert loaded.publish.max_reject_fraction == 0.5
    spec.write_text('name="a"\nkind="tts"\nsource="x.csv"\ndest="d"\n[publish]\nmax_rows_drop=2\n')
    with pytest.raises(ConfigError, match=r"spec.toml.*max_rows_drop must be a fraction"):
        load_spec(spec)
    spec.write_text('name="a"\nkind="tts"\nsource="x.csv"\ndest="d"\n[publish]\nmin_row=2\n')
    with pytest.raises(ConfigError, match=r"\[publish\].*min_row"):
        load_spec(spec)
