"""The audiobook flow under Prefect: chunks run as batch tasks, the book is written, the state tells the truth."""

from __future__ import annotations

import json
import subprocess

import pyarrow.parquet as pq
import pytest
from book_files import write_epub

from voxmill.audio.measure import measure_file
from voxmill.options import RunOptions


def test_audiobook_flow_writes_the_book_and_ends_completed(null_server, prefect_api, tmp_path, monkeypatch):
    from flows.audiobook import audiobook

    monkeypatch.setenv("VOXMILL_API_KEY", null_server.token)
    book = write_epub(tmp_path / "island.epub")
    out = tmp_path / "out"
    state = audiobook(book=str(book), out_dir=str(out), chapters="3,5",
                      options=RunOptions(base_url=null_server.base_url), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.ok and result.chapters == 2
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert {row["flow_run_id"] for row in rows} == {str(state.state_details.flow_run_id)}
    assert len(rows) == result.chunks == null_server.stats()["generations_total"]
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_chapters", "-of", "json", result.m4b],
                                      capture_output=True, check=True, text=True).stdout)
    assert [c["tags"]["title"] for c in probe["chapters"]] == ["Chapter 1: The Keeper", "Chapter 2: The Map"]
    # chapter files (m4b by default) are cut from the book's AAC: same spans as the chapter marks
    for chapter in (c for c in pq.read_table(out / "chapters.parquet").to_pylist() if c["selected"]):
        info = measure_file(out / f"{chapter['file']}.m4b", loudness=False)
        assert info.format == "m4a" and abs(info.duration_s - chapter["duration_s"]) < 0.1


def test_audiobook_flow_ends_failed_when_a_chunk_fails(make_server, prefect_api, tmp_path, monkeypatch):
    from flows.audiobook import audiobook

    server = make_server(error_rate=1.0)
    monkeypatch.setenv("VOXMILL_API_KEY", server.token)
    monkeypatch.setenv("VOXMILL_MAX_ATTEMPTS", "1")
    state = audiobook(book=str(write_epub(tmp_path / "island.epub")), out_dir=str(tmp_path / "out"), chapters="5",
                      options=RunOptions(base_url=server.base_url), return_state=True)
    assert state.is_failed() and "not done" in state.message


def test_audiobook_flow_ends_failed_naming_the_chunks_still_bad_after_the_retakes(null_server, prefect_api,
                                                                                   tmp_path, monkeypatch):
    """QC that runs out of retakes fails the flow run: its message and its table artifact name the chunks."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.audiobook import AudiobookFailed, audiobook

    # the null engine speaks silence and transcribes "null engine transcript": every chunk stays bad
    monkeypatch.setenv("VOXMILL_API_KEY", null_server.token)
    out = tmp_path / "out"
    state = audiobook(book=str(write_epub(tmp_path / "island.epub")), out_dir=str(out), model="chatterbox",
                      chapters="5", loudness_lufs=None, qc=True, retakes=1,
                      options=RunOptions(base_url=null_server.base_url), return_state=True)
    assert state.is_failed(), state.message
    chunks = [row["id"] for row in pq.read_table(out / "chunks.parquet").to_pylist()]
    assert len(chunks) == 2 and all(row["qc_bad"] for row in pq.read_table(out / "chunks.parquet").to_pylist())
    assert "2 chunks still bad after 2 retakes" in state.message and all(c in state.message for c in chunks)
    with pytest.raises(AudiobookFailed) as failed:  # the persisted result: the exception, with its counts
        state.result()
    assert list(failed.value.result.qc_failed) == chunks and failed.value.result.m4b  # the best takes, assembled
    # each chunk paid twice (the take and its retake, another seed) and each take's audio transcribed once
    assert null_server.stats()["generations_total"] == 2 * len(chunks) + 2

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))

    (table,) = [a for a in asyncio.run(artifacts()) if (a.key or "").startswith("voxmill-audiobook-")]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    values = {row["measure"]: row["value"] for row in rows if row["measure"] != "QC"}
    assert values["chunks still bad after QC"] == 2
    still = [row["value"] for row in rows if row["measure"] == "QC" and "STILL BAD" in str(row["value"])]
    assert [line.split()[2].rstrip(":") for line in still] == chunks, still
