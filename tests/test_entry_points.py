"""Every entry point takes its settings from the one path (RunOptions + environment → Settings).

The rate switches are read once, by ``Settings.from_env``; each command and flow must hand them to the engine
that sends its requests. The check sits where every request's pace is decided: the limiter each engine builds
(``voxmill.limiter.build_limiter``) is recorded with the settings it was built from, while the command runs
for real against a local null-engine server.
"""

from __future__ import annotations

import pytest
from manifest_files import write_manifest

from voxmill import limiter
from voxmill.cli import main
from voxmill.settings import RateLimit

SWITCHES = {"VOXMILL_ADAPTIVE_RATE": "0", "VOXMILL_SHARED_RATE": "0", "VOXMILL_RPS": "40", "VOXMILL_CONCURRENCY": "3"}

SPEC = """
name = "switches"
kind = "tts"
source = "{source}"
dest = "{dest}"

[model]
name = "higgs2p5"

[output]
format = "wav"

[qc]
roundtrip = false
"""


@pytest.fixture
def built_limits(monkeypatch, null_server, tmp_path) -> list[RateLimit]:
    """The rate limit of every limiter built while the test runs; the environment set to the switches."""
    built: list[RateLimit] = []
    real_build = limiter.build_limiter

    def recording_build(settings):
        built.append(settings.rate_limit)
        return real_build(settings)

    for module in ("voxmill.limiter", "voxmill.batch", "voxmill.http.client"):
        monkeypatch.setattr(f"{module}.build_limiter", recording_build)
    for name, value in SWITCHES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VOXMILL_API_KEY", null_server.token)
    monkeypatch.setenv("VOXMILL_BASE_URL", null_server.base_url)
    monkeypatch.setenv("VOXMILL_CACHE_DIR", str(tmp_path / "cache"))
    return built


def _assert_switched(built: list[RateLimit]) -> None:
    assert built, "no request engine was built"
    for limit in built:
        assert (limit.adaptive, limit.shared, limit.requests_per_second, limit.max_concurrent) == (False, False, 40, 3)


def test_audiobook_takes_the_rate_switches(built_limits, null_server, tmp_path):
    book = tmp_path / "book.md"
    book.write_text("# Chapter One\n\nThe first line of a short book.\n\n# Chapter Two\n\nAnd its second line.\n")
    assert main(["audiobook", str(book), "-o", str(tmp_path / "out"), "--format", "mp3", "--loudness", "off",
                 "--no-progress"]) == 0
    assert null_server.stats()["generations_total"] >= 2
    _assert_switched(built_limits)


def test_dataset_build_takes_the_rate_switches(built_limits, null_server, tmp_path):
    source = write_manifest(tmp_path / "rows.csv", [{"id": f"r{i}", "text": f"Dataset line number {i}."}
                                                    for i in range(3)])
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(source=source, dest=tmp_path / "dest"))
    assert main(["dataset", "build", str(spec), "--force"]) == 0  # the null engine's clips fail QC: publish anyway
    assert null_server.stats()["generations_total"] == 3
    _assert_switched(built_limits)


def test_roundtrip_flow_takes_the_rate_switches(built_limits, null_server, prefect_api, tmp_path):
    from flows.roundtrip import roundtrip

    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"t{i}", "text": f"Round trip line {i}."}
                                                   for i in range(3)])
    state = roundtrip(manifest=str(manifest), out_dir=str(tmp_path / "out"), output_format="wav", return_state=True)
    assert state.is_completed(), state.message
    assert null_server.stats()["generations_total"] >= 4  # 3 clips spoken, then transcribed (identical ones once)
    _assert_switched(built_limits)


def test_synthesize_flags_beat_the_environment(built_limits, null_server, prefect_api, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"s{i}", "text": f"Flag line {i}."} for i in range(3)])
    assert main(["synthesize", str(manifest), "-o", str(tmp_path / "out"), "--rps", "5", "--concurrency", "9",
                 "--no-progress"]) == 0
    assert null_server.stats()["generations_total"] == 3
    assert built_limits
    for limit in built_limits:  # the flags win; the switches still hold where no flag speaks
        assert (limit.adaptive, limit.shared, limit.requests_per_second, limit.max_concurrent) == (False, False, 5, 9)
