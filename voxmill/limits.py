"""Bounds on what one input may cost to read: archives, markup, manifests, audio headers.

A hostile or broken file must never cost more than these (a 3 MB EPUB that inflates to 3 GB, a
10,000-deep HTML nesting, a manifest cell of a gigabyte, a WAV header claiming years of audio). Each is
refused with :class:`LimitExceeded` (a file the job needs: exit 2) or :class:`InputTooLarge` (one row's
input: that row fails), naming the file, the limit and how to raise it.

| variable | limit | default |
|---|---|---|
| VOXMILL_MAX_ARCHIVE_MEMBER_MB | decompressed size of one member of an EPUB/zip that is read | 64 |
| VOXMILL_MAX_ARCHIVE_MB | decompressed bytes read from one archive in all | 256 |
| VOXMILL_MAX_ARCHIVE_RATIO | decompressed : compressed size of a member (over its first MiB) | 200 |
| VOXMILL_MAX_ARCHIVE_MEMBERS | entries in one archive | 20000 |
| VOXMILL_MAX_MARKUP_MB | one HTML/XHTML/XML document or text book, decoded | 64 |
| VOXMILL_MAX_MARKUP_DEPTH | element nesting of one HTML/XML document | 512 |
| VOXMILL_MAX_FIELD_MB | one manifest cell or JSONL line | 16 |
| VOXMILL_MAX_AUDIO_HOURS | duration an input audio file's header may declare | 24 |

The command line raises any of them with ``voxmill --limit NAME=VALUE …`` (``NAME`` is the variable
without ``VOXMILL_MAX_``, in lower case: ``--limit archive_mb=2048``).
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields

from voxmill.errors import ConfigError, InvalidItem

MIB = 1 << 20
_CHUNK = 1 << 20


class LimitExceeded(ConfigError):
    """A file the job needs (book, manifest) is over an input limit: refused before any request (exit 2)."""

    kind = "limit"


class InputTooLarge(InvalidItem):
    """One row's input file (audio) is over an input limit: that row fails, the run goes on."""

    kind = "too_large"


@dataclass(frozen=True)
class InputLimits:
    """The input limits of a run; :meth:`from_env` reads ``VOXMILL_MAX_*`` (see the module table)."""

    archive_member_mb: float = 64
    archive_mb: float = 256
    archive_ratio: float = 200
    archive_members: int = 20000
    markup_mb: float = 64
    markup_depth: int = 512
    field_mb: float = 16
    audio_hours: float = 24

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InputLimits:
        """The defaults, with any ``VOXMILL_MAX_<NAME>`` variable set; ConfigError for a value that is no number."""
        environ = os.environ if environ is None else environ
        values = {}
        for spec in fields(cls):
            variable = env_name(spec.name)
            raw = environ.get(variable, "").strip()
            if raw:
                values[spec.name] = _positive(raw, variable, int if spec.type in (int, "int") else float)
        return cls(**values)

    def bytes_of(self, name: str) -> int:
        """A ``…_mb`` limit in bytes."""
        return int(getattr(self, name) * MIB)

    def fix(self, name: str) -> str:
        """How to raise limit ``name``, for error messages."""
        return f"raise it with --limit {name}=N or {env_name(name)}=N if the file is trusted"


def env_name(name: str) -> str:
    """The environment variable of limit ``name`` (``archive_mb`` → ``VOXMILL_MAX_ARCHIVE_MB``)."""
    return f"VOXMILL_MAX_{name.upper()}"


def _positive(raw: str, where: str, kind: type) -> float | int:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{where}={raw!r} is not a{'n integer' if kind is int else ' number'}") from None
    if value <= 0:
        raise ConfigError(f"{where}={raw!r} must be greater than 0")
    return value


def apply_limit_overrides(pairs: list[str]) -> None:
    """``--limit NAME=VALUE`` from the command line, set as ``VOXMILL_MAX_*`` so flows and workers see them."""
    names = {spec.name for spec in fields(InputLimits)}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().lower().replace("-", "_")
        if not sep or name not in names:
            raise ConfigError(f"--limit {pair!r}: write it as NAME=VALUE with NAME one of {', '.join(sorted(names))}")
        os.environ[env_name(name)] = value.strip()
    InputLimits.from_env()  # refuse a bad value now, before anything starts


def _megabytes(count: float) -> str:
    return f"{count / MIB:,.0f} MiB" if count >= MIB else f"{count:,.0f} bytes"


class BoundedZip:
    """A zip archive read member by member with a byte budget.

    Members are inflated here (stored and deflate, the two methods EPUB allows) from the raw bytes, so the
    decompressed bytes and the compressed bytes consumed are counted as they stream: a zip bomb or a lying
    header stops at the limit, never after it, with at most one chunk over it in memory.
    """

    def __init__(self, path: str | os.PathLike[str], where: str, limits: InputLimits) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path)
        self.where = where
        self.limits = limits
        self.read_bytes = 0
        if len(self.zip.infolist()) > limits.archive_members:
            raise LimitExceeded(f"{where} holds {len(self.zip.infolist()):,} entries, over the limit of "
                                f"{limits.archive_members:,}; {limits.fix('archive_members')}")

    def read(self, name: str) -> bytes:
        """The member's bytes; KeyError if absent, LimitExceeded past a limit, ConfigError if corrupt."""
        info = self.zip.getinfo(name)
        where = f"{self.where}: member {name!r}"
        member_cap = self.limits.bytes_of("archive_member_mb")
        if info.file_size > member_cap:  # the header alone already says too much; the count below never trusts it
            raise self._over(where, "archive_member_mb", f"declares {_megabytes(info.file_size)} decompressed")
        parts: list[bytes] = []
        size = crc = 0
        for chunk, consumed in self._inflate(info, where):
            size += len(chunk)
            self.read_bytes += len(chunk)
            if size > member_cap:
                raise self._over(where, "archive_member_mb", f"inflates past {_megabytes(member_cap)}")
            if self.read_bytes > self.limits.bytes_of("archive_mb"):
                raise self._over(self.where, "archive_mb",
                                 f"inflates past {_megabytes(self.limits.bytes_of('archive_mb'))} read in all")
            if size > MIB and size > self.limits.archive_ratio * max(consumed, 1):
                raise LimitExceeded(
                    f"{where} inflates more than {self.limits.archive_ratio:g}:1 ({_megabytes(size)} from "
                    f"{_megabytes(consumed)}), like a zip bomb; {self.limits.fix('archive_ratio')}"
                )
            crc = zlib.crc32(chunk, crc)
            parts.append(chunk)
        if size != info.file_size or crc != info.CRC:
            raise ConfigError(f"{where} is corrupt (its size or checksum differs from the archive's directory); "
                              f"re-export the file")
        return b"".join(parts)

    def _inflate(self, info: zipfile.ZipInfo, where: str) -> Iterator[tuple[bytes, int]]:
        """(decompressed chunk, compressed bytes consumed so far) of one member, from its raw bytes."""
        if info.flag_bits & 0x1:
            raise ConfigError(f"{where} is encrypted; give an unencrypted file")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ConfigError(f"{where} uses zip compression method {info.compress_type}; an EPUB may only use "
                              f"stored or deflate: re-export it")
        with open(self.path, "rb") as handle:
            handle.seek(info.header_offset)
            header = handle.read(30)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise ConfigError(f"{where}: bad local header; the archive is corrupt, re-export it")
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            handle.seek(name_length + extra_length, os.SEEK_CUR)
            inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
            left = info.compress_size
            consumed = 0
            while left > 0:
                raw = handle.read(min(_CHUNK, left))
                if not raw:
                    raise ConfigError(f"{where} is cut short; the archive is truncated, copy it again")
                left -= len(raw)
                if inflater is None:
                    consumed += len(raw)
                    yield raw, consumed
                    continue
                pending = raw
                while pending:
                    try:
                        chunk = inflater.decompress(pending, _CHUNK)
                    except zlib.error as exc:
                        raise ConfigError(f"{where} is corrupt ({exc}); re-export the file") from None
                    consumed += len(pending) - len(inflater.unconsumed_tail)
                    pending = inflater.unconsumed_tail
                    if chunk:
                        yield chunk, consumed
                    if inflater.eof:
                        return
            while inflater is not None and not inflater.eof:  # output still held inside the inflater
                chunk = inflater.decompress(b"", _CHUNK)
                if not chunk:
                    break
                yield chunk, consumed

    def _over(self, where: str, name: str, what: str) -> LimitExceeded:
        limit = _megabytes(self.limits.bytes_of(name))
        return LimitExceeded(f"{where} {what}, over the limit of {limit} ({name}); {self.limits.fix(name)}")


def check_markup_size(size: int, where: str, limits: InputLimits) -> None:
    """LimitExceeded when a document of ``size`` bytes/characters is over ``markup_mb``."""
    cap = limits.bytes_of("markup_mb")
    if size > cap:
        raise LimitExceeded(f"{where} is {_megabytes(size)}, over the limit of {_megabytes(cap)} for one document "
                            f"(markup_mb); {limits.fix('markup_mb')}")


def depth_exceeded(where: str, limits: InputLimits) -> LimitExceeded:
    """The error for a document nested deeper than ``markup_depth``."""
    return LimitExceeded(f"{where} nests elements more than {limits.markup_depth} deep (markup_depth); "
                         f"{limits.fix('markup_depth')}")


def field_too_large(where: str, size: int, limits: InputLimits) -> LimitExceeded:
    """The error for a manifest cell or line over ``field_mb``."""
    return LimitExceeded(f"{where} holds a value of {_megabytes(size)} or more, over the limit of "
                         f"{_megabytes(limits.bytes_of('field_mb'))} (field_mb); {limits.fix('field_mb')}")


__all__ = [
    "BoundedZip",
    "InputLimits",
    "InputTooLarge",
    "LimitExceeded",
    "apply_limit_overrides",
    "check_markup_size",
    "depth_exceeded",
    "env_name",
    "field_too_large",
]
