"""The dataset flow under Prefect (test harness API): it builds and publishes, and leaves a summary artifact;
the ``dataset-build`` deployment entry is scheduled nightly (off by default), one run at a time."""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path

import pytest
import yaml

from voxmill.dataset import DatasetStore

REPO = Path(__file__).resolve().parents[2]


def test_dataset_flow_publishes_and_leaves_a_summary_artifact(null_server, prefect_api, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.dataset import build_dataset

    monkeypatch.setenv("VOXMILL_API_KEY", null_server.token)
    monkeypatch.setenv("VOXMILL_BASE_URL", null_server.base_url)
    monkeypatch.setenv("VOXMILL_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "texts.csv").write_text("id,text\na,First line.\nb,Second line.\nc,Third line.\n")
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "flow"\nkind = "tts"\nsource = "texts.csv"\ndest = "dest"\n[qc]\nmin_duration_s = 0.05\n')
    state = build_dataset(spec=str(spec), return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert report.rows == 3 and report.billed_requests == 3 and null_server.stats()["generations_total"] == 3
    assert DatasetStore(str(tmp_path / "dest")).latest_id() == report.version

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))

    everything = asyncio.run(artifacts())
    found = [a for a in everything if (a.key or "").startswith("voxmill-dataset-") and a.type == "table"]
    assert len(found) == 1
    (card,) = [a for a in everything if a.type == "markdown" and (a.key or "").endswith("-card")]
    assert "## By voice" in card.data and "| default | 3 |" in card.data and "## Rejects by reason" in card.data
    for name in ("duration", "wer", "hours_by_voice", "chars_per_s_by_voice", "rejects_by_reason"):
        link = f"({tmp_path / 'dest' / 'versions' / report.version / 'plots' / name}.png)"
        assert link in card.data and Path(link[1:-1]).exists(), card.data
    data = json.loads(found[0].data) if isinstance(found[0].data, str) else found[0].data
    table = {row["measure"]: row["value"] for row in data}
    assert table["added"] == 3 and table["removed"] == 0 and table["rejected"] == 0
    assert table["version"] == report.version and "hours" in table and "cost" in table


def test_dataset_build_deployment_entry():
    from flows.dataset import build_dataset

    config = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    entry = {d["name"]: d for d in config["deployments"]}["dataset-build"]
    assert entry["entrypoint"] == "flows/dataset.py:build_dataset"
    assert entry["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    (schedule,) = entry["schedules"]
    assert schedule["active"] is False and len(schedule["cron"].split()) == 5
    assert set(entry["parameters"]) <= set(inspect.signature(build_dataset.fn).parameters)
    assert (REPO / entry["parameters"]["spec"]).exists()


@pytest.mark.prefect
def test_dataset_flow_fails_naming_the_gate_and_force_publishes(make_server, prefect_api, tmp_path, monkeypatch):
    from flows.dataset import build_dataset

    server = make_server(garbage_audio_rate=1.0)
    monkeypatch.setenv("VOXMILL_API_KEY", server.token)
    monkeypatch.setenv("VOXMILL_BASE_URL", server.base_url)
    monkeypatch.setenv("VOXMILL_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "texts.csv").write_text("id,text\na,First line.\nb,Second line.\n")
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "garbage"\nkind = "tts"\nsource = "texts.csv"\ndest = "dest"\n'
                    '[qc]\nmin_duration_s = 0.05\n')
    state = build_dataset(spec=str(spec), return_state=True)
    assert state.is_failed()
    assert "min_rows: 0 accepted rows < 1" in state.message and "max_reject_fraction" in state.message, state.message
    assert server.stats()["generations_total"] == 2
    store = DatasetStore(str(tmp_path / "dest"))
    assert store.latest_id() is None
    forced = build_dataset(spec=str(spec), force=True, return_state=True)
    assert forced.is_completed(), forced.message
    report = forced.result()
    assert report.published and report.rows == 0 and store.latest_id() == report.version
    assert server.stats()["generations_total"] == 2, "forcing paid nothing again"
