"""A corpus as a manifest: a folder or a quoted glob of audio files (local or an fsspec URL), one row per file,
ids from the relative paths, in a stable (sorted) order."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import fsspec
import pyarrow as pa

from voxmill.errors import ConfigError

CORPUS_AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".webm", ".aac", ".mp4"})
_GLOB_MAGIC = re.compile(r"[*?\[]")


def is_corpus(source: str) -> bool:
    """Whether ``source`` is a folder or glob of audio files (an ASR corpus) rather than a manifest file: a local
    folder or glob, or a glob URL (``s3://bucket/corpus/**/*.flac``) or folder URL ending in ``/``."""
    if "://" in source:
        return bool(_GLOB_MAGIC.search(source.split("://", 1)[1])) or source.endswith("/")
    return bool(_GLOB_MAGIC.search(source)) or Path(source).is_dir()


def iter_corpus(source: str) -> Iterator[tuple[str, Path]]:
    """(id, path) of each file of a folder (audio suffixes only) or glob (``'corpus/**/*.flac'``), streamed
    in a stable order (names sorted at each level, hidden entries skipped); ids are paths relative to the
    folder, or to the glob's fixed leading folders."""
    if "://" in source:
        yield from _iter_remote_corpus(source)
        return
    parts = PurePosixPath(source).parts
    fixed = next((i for i, part in enumerate(parts) if _GLOB_MAGIC.search(part)), len(parts))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    pattern = "/".join(parts[fixed:])
    matches = _glob_regex(pattern).match if pattern else None
    depth = None if not pattern or "**" in pattern else pattern.count("/") + 1
    if not base.is_dir():
        raise ConfigError(f"corpus {source!r}: folder {str(base)!r} does not exist")
    for relative, path in _walk_sorted(base, "", depth):
        if matches(relative) if matches else path.suffix.lower() in CORPUS_AUDIO_SUFFIXES:
            yield relative, path


def _iter_remote_corpus(source: str) -> Iterator[tuple[str, str]]:
    """:func:`iter_corpus` over an fsspec URL: one listing under the glob's fixed prefix, matched and sorted."""
    scheme, rest = source.split("://", 1)
    parts = rest.rstrip("/").split("/")
    fixed = next((i for i, part in enumerate(parts) if _GLOB_MAGIC.search(part)), len(parts))
    base, pattern = "/".join(parts[:fixed]), "/".join(parts[fixed:])
    matches = _glob_regex(pattern).match if pattern else None
    fs, _ = fsspec.core.url_to_fs(source.split("*", 1)[0] if "*" in source else source)
    try:
        found = fs.find(base)
    except OSError as exc:
        raise ConfigError(f"corpus {source!r}: {base!r} cannot be listed: {exc}") from None
    if not found:
        raise ConfigError(f"corpus {source!r}: nothing under {scheme}://{base}")
    for path in sorted(found):
        relative = path[len(base):].lstrip("/")
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        if matches(relative) if matches else PurePosixPath(relative).suffix.lower() in CORPUS_AUDIO_SUFFIXES:
            yield relative, f"{scheme}://{path}"


def _walk_sorted(folder: Path, prefix: str, depth: int | None) -> Iterator[tuple[str, Path]]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise ConfigError(f"corpus folder {str(folder)!r} cannot be listed: {exc.strerror}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        relative = prefix + entry.name
        if entry.is_dir():
            if depth is None or depth > 1:
                yield from _walk_sorted(Path(entry.path), relative + "/", None if depth is None else depth - 1)
        elif entry.is_file():
            yield relative, Path(entry.path)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over relative POSIX paths as a regex: ``**`` spans folders, ``*`` and ``?`` stay within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def corpus_batches(source: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    ids: list[str] = []
    paths: list[str] = []
    found = 0
    for item_id, path in iter_corpus(source):
        found += 1
        ids.append(item_id)
        paths.append(str(path))
        if len(ids) >= batch_rows:
            yield pa.RecordBatch.from_arrays([pa.array(ids, pa.string()), pa.array(paths, pa.string())],
                                             names=["id", "audio"])
            ids, paths = [], []
    if ids:
        yield pa.RecordBatch.from_arrays([pa.array(ids, pa.string()), pa.array(paths, pa.string())],
                                         names=["id", "audio"])
    if not found:
        raise ConfigError(f"corpus {source!r} matched no audio files; check the folder or quote the glob "
                          f"('corpus/**/*.flac') so the shell does not expand it")


__all__ = ["CORPUS_AUDIO_SUFFIXES", "corpus_batches", "is_corpus", "iter_corpus"]
