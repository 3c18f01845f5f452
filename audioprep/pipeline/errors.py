"""Exceptions raised by the pipeline, each with a reason category.

Every class takes a single message argument, so instances survive
`pickle.loads(pickle.dumps(exc))` when they cross the process boundary.
"""

from __future__ import annotations

MAX_REASON_CHARS = 300


class PrepError(Exception):
    """Base class: a file could not be prepared, for a reason worth recording."""

    category = "error"

    def reason(self) -> str:
        """Return the one-line `<category>: <detail>` text stored on the row."""
        return format_reason(self.category, str(self))


class InputIOError(PrepError):
    """The source file is missing, unreadable or not a regular file."""

    category = "io"


class EmptyInputError(PrepError):
    """The source contains no bytes or no samples."""

    category = "empty"


class DecodeError(PrepError):
    """The decoder could not read the source as audio."""

    category = "decode"


class VadError(PrepError):
    """The voice activity detector failed on decoded audio."""

    category = "vad"


class OutputError(PrepError):
    """A segment or the manifest could not be written."""

    category = "output"


class ConfigError(PrepError):
    """A setting or the VAD model is unusable; raised before any row changes."""

    category = "config"


class EnvironmentCheckError(PrepError):
    """A component the pipeline needs (decoder, VAD) is not usable."""

    category = "environment"


def format_reason(category: str, detail: str) -> str:
    """Join a category and a detail into one line of at most MAX_REASON_CHARS."""
    line = " ".join(str(detail).split()) or "no detail"
    text = f"{category}: {line}"
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3] + "..."
    return text


def format_duration(seconds: float) -> str:
    """Return a duration in the largest unit that keeps it at 1 or more: "42.0 s", "12.5 min", "1.760 h"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.3f} h"


def counted(count: int, noun: str) -> str:
    """Return `count` followed by `noun`, in the plural unless the count is 1: "1 segment", "3 segments"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
