"""The Prefect flows end to end against the local server: every manifest format, outputs decode with the
requested format and rate, one ledger row per item, and the flow's final state tells the truth."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from manifest_files import write_manifest

from voxmill.audio.measure import measure_file
from voxmill.jobs import JobFailed
from voxmill.ledger import LEDGER_SCHEMA
from voxmill.options import RunOptions
from voxmill.progress import ProgressBoard, watching

TEXTS = [
    # plain words: tiny.en writes numbers as digits and spells the US way, which WER would count
    "She poured a cup of green tea and opened the morning newspaper.",
    "The quick brown fox jumps over the lazy dog near the old stone bridge.",
]


@pytest.fixture
def api_env(monkeypatch, prefect_api):
    def point_at(server):
        monkeypatch.setenv("VOXMILL_API_KEY", server.token)
        monkeypatch.setenv("VOXMILL_BASE_URL", server.base_url)
        monkeypatch.setenv("VOXMILL_CACHE_DIR", "/tmp/voxmill-test-cache")

    return point_at




@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_tts_and_asr_flows_every_manifest_format(real_server, api_env, tmp_path, fmt):
    from flows.synthesize import synthesize
    from flows.transcribe import transcribe

    api_env(real_server)
    models = ["higgs2p5", "qwen3-tts"]
    rows = [{"id": f"{fmt}-{i}", "text": t, "model": m} for i, (t, m) in enumerate(zip(TEXTS, models))]
    manifest = write_manifest(tmp_path / f"tts.{fmt}", rows)
    out = tmp_path / "tts"
    state = synthesize(manifest=str(manifest), out_dir=str(out), output_format="opus", params={}, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.done == 2 and summary.ok
    table = pq.read_table(out / "results.parquet")
    assert table.schema.names == LEDGER_SCHEMA.names and table.num_rows == 2
    audio_paths = []
    for row in table.to_pylist():
        info = measure_file(out / row["output_path"])
        assert info.format in ("opus", "ogg") and info.sample_rate == 48000 and info.channels == 1
        assert 0.2 * len(row["text"].split()) < info.duration_s < 0.8 * len(row["text"].split())
        assert row["flow_run_id"] == str(state.state_details.flow_run_id)
        assert row["engine"].startswith("piper:")
        audio_paths.append({"id": row["id"], "audio": str(out / row["output_path"]), "reference_text": row["text"]})

    asr_manifest = write_manifest(tmp_path / f"asr.{fmt}", audio_paths)
    asr_out = tmp_path / "asr"
    state = transcribe(manifest=str(asr_manifest), out_dir=str(asr_out), language="en", return_state=True)
    assert state.is_completed(), state.message
    asr_rows = pq.read_table(asr_out / "results.parquet").to_pylist()
    assert len(asr_rows) == 2
    for row in asr_rows:
        assert row["status"] == "done" and row["engine"].startswith("faster-whisper")
        assert row["wer"] <= 0.15, row
        assert row["language"] == "en"
        srt = (asr_out / "transcripts" / f"{row['id']}.srt").read_text()
        assert srt.startswith("1\n00:00:0")


def test_flow_with_failures_ends_failed_with_counts(null_server, api_env, tmp_path):
    from flows.synthesize import synthesize

    api_env(null_server)
    rows = [{"id": "ok1", "text": "Fine."}, {"id": "bad", "text": ""}, {"id": "ok2", "text": "Also fine."}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    state = synthesize(manifest=str(manifest), out_dir=str(tmp_path / "out"), return_state=True)
    assert state.is_failed()
    assert "2 done" in state.message and "1 failed" in state.message
    failure = state.result(raise_on_failure=False)
    assert isinstance(failure, JobFailed) and "validation 1" in str(failure)
    summary = failure.summary
    assert summary.failures_by_kind == {"validation": 1} and summary.done == 2
    assert null_server.stats()["generations_total"] == 2
    # the rerun sends nothing new for done items and fails the bad row again
    state = synthesize(manifest=str(manifest), out_dir=str(tmp_path / "out"), return_state=True)
    assert state.is_failed() and null_server.stats()["generations_total"] == 2
    assert state.result(raise_on_failure=False).summary.skipped_done == 2


def test_flow_batches_are_prefect_tasks(null_server, api_env, tmp_path):
    """Big manifests are cut into batches (≤ 200 items each), not one task per item."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.synthesize import synthesize

    api_env(null_server)
    rows = [{"id": f"i{i}", "text": f"Item number {i}."} for i in range(400)]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    state = synthesize(manifest=str(manifest), out_dir=str(tmp_path / "out"), options=RunOptions(max_concurrent=16),
                       return_state=True)
    assert state.is_completed()
    assert null_server.stats()["generations_total"] == 400

    async def task_runs():
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )

    runs = asyncio.run(task_runs())
    batch_runs = [r for r in runs if r.name.startswith("batch-")]
    assert 2 <= len(batch_runs) <= 40


COMPARED = ["id", "key", "row", "status", "error_kind", "output_path", "output_format", "duration_s", "sample_rate",
            "bytes", "sha256"]


@pytest.mark.slow
def test_thread_process_and_dask_runners_write_the_same_table(make_server, api_env, tmp_path):
    """The engine is built per worker process from picklable settings: every runner gives the same table."""
    from flows.synthesize import synthesize

    null_server = make_server(fail_first_n=1)  # each text's first request is a 503: one retry per item
    api_env(null_server)
    rows = [{"id": f"r{i:02d}", "text": f"Sentence number {i}."} for i in range(24)] + [{"id": "bad", "text": ""}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    tables = {}
    for runner in ("thread", "process", "dask"):
        out = tmp_path / runner
        board = ProgressBoard()  # the caller's display: counts come home from worker processes too
        null_server.reset_stats()  # fault memory too: every runner meets the same first failures
        with watching(board):
            state = synthesize(manifest=str(manifest), out_dir=str(out), batch_size=5,
                               options=RunOptions(runner=runner, workers=2), return_state=True)
        assert state.is_failed() and "24 done" in state.message and "1 failed" in state.message, state.message
        assert (board.done, board.failed, board.retries) == (24, 1, 24), runner
        assert null_server.stats()["generations_total"] == 24
        leftover = [p for p in (out / "ledger").glob("journal-*") if p.stat().st_size]
        assert not leftover, "every worker journal is folded into results.parquet"
        tables[runner] = pq.read_table(out / "results.parquet").select(COMPARED).sort_by("id").to_pylist()
    assert tables["process"] == tables["thread"] == tables["dask"]
    assert len(tables["thread"]) == 25


def test_failed_run_result_reads_back_from_another_process(null_server, api_env, tmp_path, prefect_api):
    """The flow's result is persisted: another process reads the Failed run's exception and its counts."""
    import os
    import subprocess
    import sys

    from flows.synthesize import synthesize

    api_env(null_server)
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "ok", "text": "Fine."}, {"id": "bad", "text": ""}])
    state = synthesize(manifest=str(manifest), out_dir=str(tmp_path / "out"), return_state=True)
    assert state.is_failed()
    reader = (
        "import sys, asyncio\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as client:\n"
        "        run = await client.read_flow_run(sys.argv[1])\n"
        "    failure = await run.state.aresult(raise_on_failure=False)\n"
        "    print(type(failure).__name__, failure.summary.done, failure.summary.failed, run.state.name)\n"
        "asyncio.run(main())\n"
    )
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    env = {**os.environ, "PREFECT_API_URL": prefect_api, "DO_NOT_TRACK": "1",
           "PREFECT_LOCAL_STORAGE_PATH": str(PREFECT_LOCAL_STORAGE_PATH.value())}
    done = subprocess.run([sys.executable, "-c", reader, str(state.state_details.flow_run_id)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.stdout.split() == ["JobFailed", "1", "1", "Failed"], done.stderr[-2000:]


def test_bad_parameter_refused_when_the_run_is_created(api_env, null_server, tmp_path):
    from prefect.exceptions import ParameterTypeError

    from flows.synthesize import synthesize

    api_env(null_server)
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "text": "Hello."}])
    for bad in ({"output_format": "wma"}, {"options": {"runner": "threads"}}, {"model": "no-such-model"}):
        with pytest.raises(ParameterTypeError):
            synthesize(manifest=str(manifest), out_dir=str(tmp_path / "out"), **bad)
    assert null_server.stats()["requests"] == 0 and not (tmp_path / "out").exists()


def test_progress_lines_and_a_summary_artifact_per_job(make_server, api_env, tmp_path):
    """Retries reach the job's board (and so its log lines); each output dir keeps its own summary artifact."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.synthesize import synthesize
    from tasks.job import artifact_key

    server = make_server(fail_first_n=1)  # every item's first try is a 503: one retry each
    api_env(server)
    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"i{i}", "text": f"Line {i}."} for i in range(24)])
    out = tmp_path / "job-a"
    board = ProgressBoard()
    with watching(board):
        state = synthesize(manifest=str(manifest), out_dir=str(out), options=RunOptions(max_concurrent=4),
                           return_state=True)
    assert state.is_completed(), state.message
    line = board.snapshot().log_line()
    assert "24/24 accounted for" in line and "24 retries (0 after 429)" in line
    assert artifact_key("tts", out) != artifact_key("tts", tmp_path / "job-b")

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key("tts", out)])))

    artifacts = asyncio.run(read())
    assert len(artifacts) == 1 and "24 done" in artifacts[0].description


def test_progress_is_logged_every_few_seconds_not_per_request():
    import threading
    import time

    from tasks.job import _log_progress

    class Lines:
        def __init__(self):
            self.lines = []

        def info(self, message):
            self.lines.append(message)

    board, logger, stop = ProgressBoard(total=1000), Lines(), threading.Event()
    reporter = threading.Thread(target=_log_progress, args=(board, logger, stop, 0.2))
    reporter.start()
    for _ in range(1000):  # a thousand items finish within ~1 s
        board.add(done=1, retries=1)
        time.sleep(0.001)
    time.sleep(0.3)
    stop.set()
    reporter.join()
    assert 2 <= len(logger.lines) <= 12, logger.lines
    assert logger.lines[-1].startswith("1000/1000 accounted for") and "1000 retries" in logger.lines[-1]


def test_roundtrip_fails_with_the_childs_own_message(null_server, api_env, tmp_path):
    from flows.roundtrip import roundtrip

    api_env(null_server)
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "text": ""}, {"id": "b", "text": ""}])
    state = roundtrip(manifest=str(manifest), out_dir=str(tmp_path / "rt"), return_state=True)
    assert state.is_failed()
    assert "synthesize made no speech to transcribe" in state.message
    assert "0 done" in state.message and "2 failed" in state.message, state.message
    assert null_server.stats()["requests"] == 0


def test_a_flow_batch_waiting_on_one_slow_item_holds_back_no_other_batch(make_server, prefect_api, tmp_path):
    """The thread runner's tasks wait on the one engine: a task waiting on a slow item holds back no other batch
    (one worker, batches of 4; the server counts the other items generated long before the slow one)."""
    from prefect import flow
    from slow_items import BATCH, ITEMS, MS_PER_CHAR, SLOW_S, watch_generations, write_slow_first_manifest

    from tasks.job import run_job_in_flow
    from voxmill.jobs import JobRequest
    from voxmill.settings import ApiKey, RateLimit, Settings

    server = make_server(tts_ms_per_char=MS_PER_CHAR)
    manifest = write_slow_first_manifest(tmp_path / "m.csv")
    request = JobRequest("tts", str(manifest), tmp_path / "out", batch_size=BATCH, workers=1)
    # a fixed rate (none) and 8 in flight: neither slow start nor the learned in-flight limit paces the short items
    settings = Settings(api_key=ApiKey(server.token), base_url=server.base_url, cache_dir=tmp_path / "cache",
                        rate_limit=RateLimit(max_concurrent=8, adaptive=False))

    @flow(name="voxmill-test-slow-item")
    def job_flow() -> None:
        run_job_in_flow(request, settings, runner="thread")

    watched = watch_generations(server.stats, job_flow)
    assert server.stats()["generations_total"] == ITEMS
    assert watched.ended_s >= SLOW_S
    assert watched.ended_s - watched.others_done_s >= 0.5 * SLOW_S, watched


def test_the_progress_reporter_runs_in_the_flows_context(null_server, prefect_api, tmp_path, monkeypatch):
    """The CLI's own Prefect API is a temporary setting of the flow's context: a reporter thread started in an empty
    context sent its lines to a log worker of no API, which started an ephemeral Prefect server mid-run."""
    import contextvars

    from prefect import flow

    import tasks.job as job_module
    from tasks.job import run_job_in_flow
    from voxmill.jobs import JobRequest
    from voxmill.settings import ApiKey, Settings

    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    seen: list[str] = []
    monkeypatch.setattr(job_module, "_log_progress", lambda *args: seen.append(marker.get()))
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "text": "One short item."}])
    request = JobRequest("tts", str(manifest), tmp_path / "out", workers=1)
    settings = Settings(api_key=ApiKey(null_server.token), base_url=null_server.base_url, cache_dir=tmp_path / "c")

    @flow(name="voxmill-test-reporter-context")
    def job_flow() -> None:
        marker.set("the flow's")
        run_job_in_flow(request, settings, runner="thread")

    job_flow()
    assert seen == ["the flow's"]
