"""The CLI and the flows with ``s3://`` outputs and inputs (a moto server on loopback), counted on the local
API server: synthesize into a bucket, transcribe a glob of the bucket's audio into the bucket, a round trip
from bucket to bucket. Nothing of the job is left outside the bucket but scratch."""

from __future__ import annotations

import io
import json
import subprocess

import pyarrow.parquet as pq
import pytest
from manifest_files import write_manifest
from s3_fixture import BUCKET, s3_bucket  # noqa: F401

from voxmill.cli import main
from voxmill.cli.common import EXIT_OK

pytestmark = pytest.mark.prefect


@pytest.fixture
def cli_env(monkeypatch, prefect_api, tmp_path):
    def point_at(server):
        monkeypatch.setenv("VOXMILL_API_KEY", server.token)
        monkeypatch.setenv("VOXMILL_BASE_URL", server.base_url)
        monkeypatch.setenv("VOXMILL_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv("VOXMILL_MAX_ATTEMPTS", "2")
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        monkeypatch.setenv("TMPDIR", str(scratch))
        import tempfile

        monkeypatch.setattr(tempfile, "tempdir", None)
        return scratch

    return point_at


def _table(fs, path: str):
    return pq.read_table(io.BytesIO(fs.cat_file(path))).to_pylist()


def test_cli_synthesize_then_transcribe_a_bucket_glob_into_the_bucket(s3_bucket, null_server, cli_env,  # noqa: F811
                                                                       tmp_path, capsys):
    fs = s3_bucket
    scratch = cli_env(null_server)
    manifest = write_manifest(tmp_path / "m.csv", [{"id": f"s{i}", "text": f"Bucket line {i}."} for i in range(5)])
    tts = f"s3://{BUCKET}/out/tts"
    assert main(["synthesize", str(manifest), "-o", tts + "/", "--format", "flac", "--no-progress"]) == EXIT_OK
    assert f"results: {tts}/results.parquet" in capsys.readouterr().out
    assert null_server.stats()["generations_total"] == 5
    assert sorted(r["id"] for r in _table(fs, f"{BUCKET}/out/tts/results.parquet")) == [f"s{i}" for i in range(5)]
    assert len(fs.glob(f"{BUCKET}/out/tts/audio/*.flac")) == 5
    sent = null_server.stats()["requests"]

    asr = f"s3://{BUCKET}/out/asr"
    assert main(["transcribe", f"s3://{BUCKET}/out/tts/**/*.flac", "-o", asr, "--no-progress"]) == EXIT_OK
    # the null engine's speech is the same silence for every text: one request, four identical items reused
    assert "1 done, 4 reused, 0 failed" in capsys.readouterr().out
    rows = _table(fs, f"{BUCKET}/out/asr/results.parquet")
    assert sorted(r["id"] for r in rows) == [f"audio/s{i}.flac" for i in range(5)]
    assert all(r["input"].startswith(f"s3://{BUCKET}/out/tts/audio/") for r in rows)
    assert len(fs.glob(f"{BUCKET}/out/asr/transcripts/*.srt")) == 5
    assert null_server.stats()["requests"] - sent == 1

    assert main(["transcribe", f"s3://{BUCKET}/out/tts/**/*.flac", "-o", asr, "--no-progress"]) == EXIT_OK
    assert "0 done" in capsys.readouterr().out and null_server.stats()["requests"] - sent == 1
    assert list(scratch.rglob("*.flac")) == [] and list(scratch.rglob("*.parquet")) == [], "only scratch, emptied"
    assert main(["status", asr]) == EXIT_OK
    assert f"{asr}: 5 done, 0 failed, 0 not yet sent, of 5 rows" in capsys.readouterr().out


def test_roundtrip_from_bucket_to_bucket(s3_bucket, null_server, cli_env, tmp_path):  # noqa: F811
    from flows.roundtrip import roundtrip

    fs = s3_bucket
    cli_env(null_server)
    rows = [{"id": f"r{i}", "text": f"Round trip line {i}."} for i in range(4)]
    fs.pipe_file(f"{BUCKET}/in/m.jsonl", b"".join(__import__("json").dumps(r).encode() + b"\n" for r in rows))
    state = roundtrip(manifest=f"s3://{BUCKET}/in/m.jsonl", out_dir=f"s3://{BUCKET}/out/rt", output_format="wav",
                      return_state=True)
    result = state.result(raise_on_failure=False)
    summary = getattr(result, "summary", result)
    assert (summary.tts.done, summary.asr.done + summary.asr.reused) == (4, 4), state.message
    assert len(_table(fs, f"{BUCKET}/out/rt/asr/results.parquet")) == 4
    assert fs.exists(f"{BUCKET}/out/rt/asr_manifest.parquet")
    assert null_server.stats()["requests"] == 5, "4 voices, 1 transcript (identical silence reused)"


def test_audiobooks_of_two_books_into_a_bucket(s3_bucket, null_server, cli_env, tmp_path):  # noqa: F811
    """Two books, each to its own s3:// output: the m4b, chapter files and tables land in the bucket; a rerun
    pays nothing."""
    from book_files import write_epub

    from flows.audiobook import audiobook

    fs = s3_bucket
    scratch = cli_env(null_server)
    paid = 0
    for name in ("island", "lamp"):
        state = audiobook(book=str(write_epub(tmp_path / f"{name}.epub")), out_dir=f"s3://{BUCKET}/books/{name}",
                          chapters="3,5", return_state=True)
        assert state.is_completed(), state.message
        result = state.result()
        assert result.m4b.startswith(f"s3://{BUCKET}/books/{name}/") and result.m4b.endswith(".m4b")
        local = tmp_path / f"{name}.m4b"
        fs.get_file(result.m4b, str(local))
        probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_chapters", "-of", "json", str(local)],
                                          capture_output=True, check=True, text=True).stdout)
        assert len(probe["chapters"]) == 2
        chunks = _table(fs, f"{BUCKET}/books/{name}/results.parquet")
        assert len(chunks) == result.chunks and {r["status"] for r in chunks} == {"done"}
        assert fs.exists(f"{BUCKET}/books/{name}/chapters.parquet")
        paid += result.chunks
    assert null_server.stats()["requests"] == paid
    again = audiobook(book=str(tmp_path / "island.epub"), out_dir=f"s3://{BUCKET}/books/island", chapters="3,5",
                      return_state=True)
    assert again.is_completed() and null_server.stats()["requests"] == paid, "the rerun pays nothing"
    assert list(scratch.iterdir()) == [], "scratch folders removed"


def test_cli_audiobook_job_of_two_books_into_a_bucket(s3_bucket, null_server, cli_env, tmp_path, capsys):  # noqa: F811
    from book_files import write_epub

    fs = s3_bucket
    scratch = cli_env(null_server)
    books = [str(write_epub(tmp_path / f"{name}.epub")) for name in ("harbour", "tower")]
    url = f"s3://{BUCKET}/books"
    assert main(["audiobook", *books, "-o", url, "--chapters", "3", "--no-progress"]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"→ {url}/harbour" in out and f"→ {url}/tower" in out, out
    for name in ("harbour", "tower"):
        assert len(fs.glob(f"{BUCKET}/books/{name}/*.m4b")) == 1
        rows = _table(fs, f"{BUCKET}/books/{name}/results.parquet")
        assert rows and {r["status"] for r in rows} == {"done"}
    assert list(scratch.iterdir()) == []
