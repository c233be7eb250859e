"""``voxmill audiobook``: --list sends nothing and prices the book; a manifest of books makes a folder each."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from book_files import write_epub, write_gutenberg_txt

from voxmill.cli import main


def test_list_prints_chapters_skips_and_cost_and_sends_nothing(tmp_path, capsys, null_server, monkeypatch):
    monkeypatch.setenv("VOXMILL_API_KEY", null_server.token)
    monkeypatch.setenv("VOXMILL_BASE_URL", null_server.base_url)
    book = write_epub(tmp_path / "island.epub")
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"higgs2p5": {"per_1k_chars": 10.0, "per_request": 0.5}}))
    assert main(["audiobook", str(book), "--list", "--prices", str(prices), "--chapters", "3-5"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("The Island Beyond the Fog — Ada Writer")
    assert any(line.split()[:2] == ["2", "Copyright"] and line.endswith("skipped (licence)") for line in lines)
    assert any(line.split()[:4] == ["3", "Chapter", "1:", "The"] and "skipped" not in line for line in lines)
    assert any(line.split()[:2] == ["6", "Chapter"] and line.endswith("skipped (not selected)") for line in lines)
    assert "selected: 3 chapters" in lines[-1] and "unknown" not in lines[-1]
    assert null_server.stats()["requests"] == 0


def test_manifest_of_books_makes_one_folder_each(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VOXMILL_API_KEY", raising=False)
    write_epub(tmp_path / "island.epub")
    write_gutenberg_txt(tmp_path / "harbour.txt")
    manifest = tmp_path / "books.csv"
    manifest.write_text("path,title,model,voice\nisland.epub,Island (abridged),qwen3-tts,Ryan\nharbour.txt,,,\n")
    out = tmp_path / "out"
    code = main(["audiobook", str(manifest), "-o", str(out), "--local", "--local-engine", "null", "--format", "flac",
                 "--loudness", "off", "--no-progress"])
    assert code == 0, capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["harbour", "island"]
    assert (out / "island" / "Island abridged.m4b").exists()
    assert (out / "harbour" / "The Harbour.m4b").exists()
    island = pq.read_table(out / "island" / "results.parquet").to_pylist()
    assert {row["model"] for row in island} == {"qwen3-tts"}
    assert {json.loads(row["params"]).get("voice") for row in island} == {"Ryan"}
    harbour = pq.read_table(out / "harbour" / "chapters.parquet").to_pylist()
    assert [c["title"] for c in harbour if c["selected"]] == ["CHAPTER I. The Keeper", "Chapter 2"]
    assert len(list((out / "harbour" / "chapters").glob("*.flac"))) == 2


def test_usage_errors_exit_2_and_name_the_problem(tmp_path, capsys):
    book = write_epub(tmp_path / "island.epub")
    assert main(["audiobook", str(book)]) == 2
    assert "-o/--out" in capsys.readouterr().err
    assert main(["audiobook", str(book), "--list", "--chapters", "12"]) == 2
    assert "outside 1–7" in capsys.readouterr().err


def test_a_refused_key_exits_3_and_sends_no_speech(tmp_path, null_server, monkeypatch, capsys):
    monkeypatch.setenv("VOXMILL_API_KEY", "not-the-token")
    monkeypatch.setenv("VOXMILL_BASE_URL", null_server.base_url)
    book = write_epub(tmp_path / "island.epub")
    assert main(["audiobook", str(book), "-o", str(tmp_path / "out"), "--no-progress"]) == 3
    assert "not done" in capsys.readouterr().out
    assert null_server.stats()["generations_total"] == 0
