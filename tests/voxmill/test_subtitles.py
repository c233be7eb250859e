"""SRT/WebVTT formatting and transcript files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from voxmill.errors import BadResponse
from voxmill.subtitles import TimedText, segments_from, timestamp, to_srt, to_vtt, write_transcript_files

SEGMENTS = [
    TimedText(0.0, 1.5, "Hello there."),
    TimedText(1.5, 3.25, "  General <Kenobi> & co.  "),
    TimedText(3.25, 3.3, "   "),  # empty cue: dropped
    TimedText(3661.0015, 3723.4567, "line one\n\nline two"),
]

GOLDEN_SRT = """1
00:00:00,000 --> 00:00:01,500
Hello there.

2
00:00:01,500 --> 00:00:03,250
General <Kenobi> & co.

3
01:01:01,002 --> 01:02:03,457
line one
line two
"""

GOLDEN_VTT = """WEBVTT

00:00:00.000 --> 00:00:01.500
Hello there.

00:00:01.500 --> 00:00:03.250
General &lt;Kenobi&gt; &amp; co.

01:01:01.002 --> 01:02:03.457
line one
line two
"""


def test_srt_golden() -> None:
    assert to_srt(SEGMENTS) == GOLDEN_SRT


def test_vtt_golden() -> None:
    assert to_vtt(SEGMENTS) == GOLDEN_VTT


def test_empty_transcripts() -> None:
    assert to_srt([]) == ""
    assert to_vtt([]) == "WEBVTT\n"


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [(0, "00:00:00,000", "00:00:00.000"), (1.5, "00:00:01,500", "00:00:01.500"),
     (59.9996, "00:01:00,000", "00:01:00.000"), (36000.25, "10:00:00,250", "10:00:00.250"),
     (-0.2, "00:00:00,000", "00:00:00.000")],
)
def test_timestamps(seconds: float, srt: str, vtt: str) -> None:
    assert timestamp(seconds) == srt and timestamp(seconds, ".") == vtt


def _parse(text: str, separator: str) -> list[tuple[float, float, str]]:
    stamp = rf"(\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d)"
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        match = next(
            (re.fullmatch(rf"{stamp} --> {stamp}", line) for line in lines if "-->" in line), None
        )
        if match is None:
            continue
        g = [int(x) for x in match.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        cues.append((start, end, "\n".join(lines[lines.index(match.group(0)) + 1 :])))
    return cues


def test_srt_and_vtt_parse_back() -> None:
    segments = [TimedText(i * 2.345, i * 2.345 + 1.2, f"cue {i}") for i in range(30)]
    srt = to_srt(segments)
    assert [b.splitlines()[0] for b in srt.strip().split("\n\n")] == [str(i) for i in range(1, 31)]
    for parsed in (_parse(srt, ","), _parse(to_vtt(segments), ".")):
        assert len(parsed) == 30
        for (start, end, text), seg in zip(parsed, segments):
            assert start == pytest.approx(seg.start, abs=0.0006)
            assert end == pytest.approx(seg.end, abs=0.0006)
            assert text == seg.text


def test_segments_from_whisper_json() -> None:
    raw = {"text": "hi", "segments": [{"id": 0, "start": 0, "end": 1.2, "text": " hi"}]}
    assert segments_from(raw) == [TimedText(0.0, 1.2, " hi")]
    assert segments_from({"text": "hi"}) == []
    with pytest.raises(BadResponse):
        segments_from({"segments": [{"text": "no times"}]})


def test_write_transcript_files(tmp_path: Path) -> None:
    raw = {"text": "Hello there.", "segments": [s.to_dict() for s in SEGMENTS[:1]]}
    written = write_transcript_files(tmp_path / "item.v2", "Hello there.", SEGMENTS[:1], raw)
    assert {k: p.name for k, p in written.items()} == {
        "txt": "item.v2.txt", "srt": "item.v2.srt", "vtt": "item.v2.vtt", "json": "item.v2.json",
    }
    assert written["txt"].read_text() == "Hello there.\n"
    assert written["srt"].read_text() == to_srt(SEGMENTS[:1])
    assert written["vtt"].read_text() == to_vtt(SEGMENTS[:1])
    assert json.loads(written["json"].read_text()) == raw
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written.values())


def test_write_transcript_files_with_string_raw(tmp_path: Path) -> None:
    as_json = write_transcript_files(tmp_path / "a", "x", [], '{"text": "x"}')
    assert as_json["json"].read_text() == '{"text": "x"}\n'
    plain = write_transcript_files(tmp_path / "b", "x", [TimedText(0, 1, "x")], "x")
    assert json.loads(plain["json"].read_text()) == {
        "text": "x", "segments": [{"start": 0, "end": 1, "text": "x"}], "raw": "x",
    }
