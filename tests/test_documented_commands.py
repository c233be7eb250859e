"""Every command and flag the docs show runs: ``voxmill <command> --help`` succeeds and lists each flag.

Commands come from the code blocks and inline code of README.md, docs/*.md, manifests/README.md and
deployments/README.md; a documented command or flag the CLI no longer has fails here, naming the doc.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from voxmill.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "manifests" / "README.md",
        ROOT / "deployments" / "README.md"]
_INLINE = re.compile(r"`(voxmill [^`]+)`")
_BLOCK_LINE = re.compile(r"^\s*(?:\$ )?(voxmill .+)$")


def documented_lines() -> list[tuple[str, str]]:
    """(doc name, command line) for every ``voxmill …`` the docs show, comments dropped."""
    found: dict[str, str] = {}
    for doc in DOCS:
        in_block = False
        for line in doc.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("```"):
                in_block = not in_block
                continue
            commands = [m.group(1) for m in [_BLOCK_LINE.match(line)] if m] if in_block else _INLINE.findall(line)
            for command in commands:
                command = command.split(" #")[0].strip()
                found.setdefault(command, doc.name)
    return [(doc, command) for command, doc in found.items()]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_and_flags(line: str) -> tuple[list[str], list[str]]:
    """The subcommand path (``["dataset", "build"]``) and the ``--flags`` of a documented command line."""
    words = shlex.split(line.replace("|", " "))[1:]
    parser, path = build_parser(), []
    for word in words:
        children = _subparsers(parser)
        if word in children:
            path.append(word)
            parser = children[word]
    flags = sorted({w.split("=")[0].strip("[]") for w in words if w.lstrip("[").startswith("--")}
                   | {w for w in words if re.fullmatch(r"-[a-z]", w)})
    return path, flags


DOCUMENTED = documented_lines()


def test_the_docs_show_commands():
    paths = {" ".join(command_and_flags(line)[0]) for _, line in DOCUMENTED}
    assert {"synthesize", "transcribe", "status", "audiobook", "dataset build", "serve"} <= paths, paths


@pytest.mark.parametrize(("doc", "line"), DOCUMENTED, ids=[line for _, line in DOCUMENTED])
def test_documented_command_runs_help_and_lists_its_flags(doc, line, capsys):
    path, flags = command_and_flags(line)
    assert path or flags, f"{doc}: {line!r} names no voxmill command or option"
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0, f"{doc}: `voxmill {' '.join(path)} --help` failed"
    shown = capsys.readouterr().out + main_help(capsys)
    missing = [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", shown)]
    assert not missing, f"{doc}: {line!r} uses {missing}, which `voxmill {' '.join(path)} --help` does not list"


def main_help(capsys) -> str:
    """The top-level help (global flags such as --limit go before the command)."""
    with pytest.raises(SystemExit):
        main(["--help"])
    return capsys.readouterr().out
