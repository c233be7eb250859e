"""One exception tree for voxmill. Callers catch a family, never a string.

Each class says *when* it is raised and what the caller should do with the item. Messages name the
item (when known) and the fix; they never contain the API key.
"""

from __future__ import annotations

import os


class VoxmillError(Exception):
    """Base of every error voxmill raises on purpose."""

    #: short machine-readable kind, written to the ledger's ``error_kind`` column
    kind: str = "error"

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.attempts = attempts


class ConfigError(VoxmillError):
    """A setting, flag or manifest shape is wrong: stop before any request is made."""

    kind = "config"


class AuthError(VoxmillError):
    """The API refused the key (401/403): stop the whole run, retrying cannot help."""

    kind = "auth"


class InvalidItem(VoxmillError):
    """This item can never succeed as given (bad parameter, 400/413/415/422): fail its row, never retry."""

    kind = "invalid"


class ValidationError(InvalidItem):
    """A parameter broke a catalogue rule; raised before any request, naming parameter, value and rule."""

    kind = "validation"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnspeakableText(ValidationError):
    """A TTS text with nothing to speak (only punctuation, symbols, whitespace or zero-width characters)."""

    kind = "unspeakable"


class ForbiddenCharacter(ValidationError):
    """A TTS text holding a NUL or another control character (C0/C1, except tab, newline, return)."""

    kind = "forbidden_char"


class TruncatedAudio(InvalidItem):
    """An input audio file holds less than its header declares (cut off in a copy or download)."""

    kind = "truncated_audio"


class TooShortAudio(InvalidItem):
    """An input audio file shorter than the minimum worth sending (a transcript of it would be noise)."""

    kind = "too_short"


class RateLimited(VoxmillError):
    """The API answered 429; ``retry_after`` (seconds) says how long to wait when it said so."""

    kind = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = 429, attempts: int = 0
    ) -> None:
        super().__init__(message, status=status, attempts=attempts)
        self.retry_after = retry_after


class TransientError(VoxmillError):
    """A 5xx, timeout or dropped connection: worth retrying with backoff."""

    kind = "transient"


class RunStopped(VoxmillError):
    """The run is stopping (SIGTERM, a full disk): this request is not sent or retried; the item stays pending."""

    kind = "stopped"


class DiskFull(VoxmillError):
    """The output disk is full (ENOSPC, or a quota): the whole run stops at once; free space and rerun."""

    kind = "disk_full"

    @classmethod
    def writing(cls, where: str, detail: str = "No space left on device") -> DiskFull:
        """The error for a write to ``where`` that found no room."""
        return cls(f"the disk is full ({detail}) writing {where}; free space (or move the output) and rerun the "
                   f"same command: what is recorded is not sent again")


#: errno values that mean "no room to write", whichever call hit them
_NO_SPACE = {28, 122}  # ENOSPC, EDQUOT


def disk_full_error(exc: BaseException, where: str) -> DiskFull | None:
    """A DiskFull naming ``where`` when ``exc`` is an OSError for a full disk or quota, else None."""
    if isinstance(exc, OSError) and (exc.errno in _NO_SPACE or "No space left on device" in str(exc)):
        return DiskFull.writing(where, os.strerror(exc.errno) if exc.errno in _NO_SPACE else "No space left on device")
    return None


class BadResponse(VoxmillError):
    """The body is not what was asked for (not audio of the requested format, truncated, not JSON)."""

    kind = "bad_response"


class EmptyAudio(BadResponse):
    """A 2xx whose audio holds no samples: retried at most once, then the item fails with this kind."""

    kind = "empty_audio"


def labelled(label: str, message: str) -> str:
    """``message`` prefixed with ``label`` once: a message that already starts with it is returned as is."""
    return message if message.startswith(label) else f"{label}: {message}"


__all__ = [
    "AuthError",
    "BadResponse",
    "ConfigError",
    "DiskFull",
    "EmptyAudio",
    "ForbiddenCharacter",
    "InvalidItem",
    "RateLimited",
    "RunStopped",
    "TooShortAudio",
    "TransientError",
    "TruncatedAudio",
    "UnspeakableText",
    "ValidationError",
    "VoxmillError",
    "disk_full_error",
    "labelled",
]
