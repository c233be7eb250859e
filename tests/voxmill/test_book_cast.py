"""Casting: dialogue found by quotation marks, speakers attributed by rules, ``--cast`` listing them, a cast
file giving each role its voice (one voice per request), and the local server's voices told apart by
measuring them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from book_files import DIALOGUE_PARAGRAPHS, write_dialogue_md

from voxmill.audio.measure import decode_float32
from voxmill.book.dialogue import attribute, split_quotes
from voxmill.book.pipeline import AudiobookRequest, make_audiobook
from voxmill.book.voiceprint import voiceprint
from voxmill.cli import main
from voxmill.errors import ConfigError
from voxmill.ledger import read_results
from voxmill.settings import ApiKey, Settings

CAST = """
[narrator]            # the model's default voice

[dialogue]
voice = "Sohee"

[characters.Mara]
voice = "Vivian"
instructions = "anxious, quick"

[characters.Tom]
voice = "Eric"

[characters.Ben]
voice = "Uncle_Fu"
"""


def test_speakers_are_attributed_by_rule_with_a_confidence():
    said = [[(s.speaker, s.rule, s.confidence) for s in segments if s.quoted]
            for segments in attribute(DIALOGUE_PARAGRAPHS, "en")]
    assert said == [
        [], [("Mara", "said", 0.9), ("Mara", "said", 0.8)], [("Tom", "said", 0.9)],
        [("Mara", "alternation", 0.5)], [("Tom", "vocative", 0.6)], [("Ben", "pronoun", 0.7)],
        [("Ben", "said", 0.9)], [("Tom", "said", 0.9)], [], [(None, None, 0.0)],
    ]


@pytest.mark.parametrize(("language", "paragraph", "quotes"), [
    ("de", "„Komm her“, sagte Anna. »Jetzt!«", ["„Komm her“", "»Jetzt!«"]),
    ("fr", "« Viens ici », dit Anna.", ["« Viens ici »"]),
    ("ja", "「来て」とアンナは言った。", ["「来て」"]),
    ("en", "‘Don’t go,’ she said, ‘it’s late.’", ["‘Don’t go,’", "‘it’s late.’"]),
    ("en", 'He shouted "Run!" and ran.', ['"Run!"']),
])
def test_quotes_by_each_languages_marks(language, paragraph, quotes):
    assert [s.text for s in split_quotes(paragraph, language) if s.quoted] == quotes


def test_cast_lists_the_three_speakers_and_sends_nothing(tmp_path, capsys):
    book = write_dialogue_md(tmp_path / "harbour.md")
    assert main(["audiobook", str(book), "--cast"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("Three at the Harbour: 3 characters in 9 quotes (1 with no speaker found: read by the "
                      "dialogue voice)")
    assert [line.split()[:2] for line in out[2:5]] == [["Mara", "3"], ["Tom", "3"], ["Ben", "2"]]
    assert any("“The boats are late,”" in line for line in out)


def _settings(server) -> Settings:
    return Settings.from_env().with_(api_key=ApiKey(server.token), base_url=server.base_url)


def test_a_cast_file_gives_every_chunk_its_roles_voice_and_never_mixes_two(null_server, tmp_path):
    book = write_dialogue_md(tmp_path / "harbour.md")
    cast = tmp_path / "cast.toml"
    cast.write_text(CAST)
    out = tmp_path / "out" / "harbour"
    result = make_audiobook(AudiobookRequest(book=str(book), out_dir=out, model="qwen3-tts", cast=str(cast),
                                             loudness_lufs=None), _settings(null_server))
    assert result.ok and null_server.stats()["generations_total"] == result.chunks
    chunks = pq.read_table(out / "chunks.parquet").to_pylist()
    ledger = {row["id"]: json.loads(row["params"]) for row in read_results(out).to_pylist()}
    voices = {"narrator": None, "dialogue": "Sohee", "Mara": "Vivian", "Tom": "Eric", "Ben": "Uncle_Fu"}
    for chunk in chunks:
        assert ledger[chunk["id"]].get("voice") == voices[chunk["role"]]
        quoted = chunk["text"][0] in "“\"" and chunk["text"].rstrip()[-1] in "”\""
        assert quoted == (chunk["role"] != "narrator"), chunk  # a chunk is all quote or all narration
    assert {c["role"] for c in chunks} == set(voices)  # all three cast; the shout nobody is named for: dialogue
    assert [c["text"] for c in chunks if c["role"] == "dialogue"] == ["“Lights! I can see their lights!”"]
    assert all(ledger[c["id"]].get("instructions") == "anxious, quick" for c in chunks if c["role"] == "Mara")
    assert not any("instructions" in ledger[c["id"]] for c in chunks if c["role"] != "Mara")


def test_a_bad_cast_names_the_role(tmp_path):
    book = write_dialogue_md(tmp_path / "harbour.md")
    cast = tmp_path / "cast.toml"
    cast.write_text('[characters.Tom]\nmodel = "higgs2p5"\ninstructions = "gruff"\n')
    with pytest.raises(ConfigError, match=r"\[characters.Tom\]: higgs2p5 takes no parameter 'instructions'"):
        from voxmill.book.pipeline import plan_book
        plan_book(AudiobookRequest(book=str(book), out_dir=tmp_path, cast=str(cast)))


@pytest.mark.engines
def test_each_voice_comes_back_with_its_own_measurable_timbre(real_server, tmp_path):
    book = write_dialogue_md(tmp_path / "harbour.md")
    cast = tmp_path / "cast.toml"
    cast.write_text(CAST)
    out = tmp_path / "out" / "harbour"
    result = make_audiobook(AudiobookRequest(book=str(book), out_dir=out, model="qwen3-tts", cast=str(cast),
                                             loudness_lufs=None), _settings(real_server))
    assert result.ok, result.headline()
    # each take against the same words in the engine's own voice: the shift, in semitones, is the voice's
    from voxmill.server.engines import PiperEngine

    plain = PiperEngine()
    shifts: dict[str, list[float]] = {}
    for chunk in pq.read_table(out / "chunks.parquet").to_pylist():
        take = voiceprint(decode_float32(out / chunk["audio_path"])[:, 0], 24000).pitch_hz
        reference = voiceprint(plain.synthesize(chunk["text"]), 24000).pitch_hz
        shifts.setdefault(chunk["role"], []).append(12 * np.log2(take / reference))
    measured = {role: float(np.median(values)) for role, values in shifts.items()}
    expected = {"Ben": -6, "Tom": -3, "narrator": 0, "dialogue": 3, "Mara": 6}  # Uncle_Fu, Eric, default, Sohee,
    # Vivian: three semitones apart, each within one of its own
    assert all(abs(measured[role] - semitones) <= 1.0 for role, semitones in expected.items()), measured


def test_the_example_cast_and_lexicon_in_manifests_load(tmp_path, capsys):
    from voxmill.book.lexicon import resolve_lexicon
    from voxmill.book.pipeline import plan_book

    manifests = Path(__file__).resolve().parents[2] / "manifests"
    book = manifests / "example_dialogue.md"
    plan = plan_book(AudiobookRequest(book=str(book), out_dir=tmp_path, model="qwen3-tts",
                                      cast=str(manifests / "example_dialogue.cast.toml")))
    assert plan.lexicon.describe() == "3 entries (example_dialogue.lexicon.toml 3)"  # found next to the book
    roles = {c.role for chunks in plan.chunks.values() for c in chunks}
    assert roles == {"narrator", "dialogue", "Mara", "Tom", "Ben"}  # the shout from the pier: dialogue
    assert any("SKERR-eez" in (c.spoken or "") for chunks in plan.chunks.values() for c in chunks)
    assert resolve_lexicon(book, None, None).apply("a steady 12 kn breeze") == "a steady 12 knots breeze"
    assert main(["audiobook", str(book), "--cast"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:5]] == ["Mara", "Tom", "Ben"]
