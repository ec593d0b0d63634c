"""What every command needs from the terminal and the pipes: is stdin piped, read it as
UTF-8, is stdout a terminal worth live rendering, one-line errors and warnings on stderr,
and a quiet end when stdout's reader goes away (``| head``).

The commands share these helpers and import nothing from each other.
"""

from __future__ import annotations

import os
import sys

from gencli.core.errors import UsageError


def stdin_piped() -> bool:
    """True when stdin is a pipe or a file rather than a terminal."""
    return sys.stdin is not None and not sys.stdin.isatty()


def stdin_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def stdout_terminal() -> bool:
    """True when stdout is a terminal that can show Rich's live rendering."""
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def decode_utf8(data: bytes, where: str = "stdin") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{where} is not UTF-8 text (invalid byte at offset {exc.start}); "
            f"convert it first, e.g. with iconv -t UTF-8"
        ) from None


def read_stdin() -> str:
    """All of stdin as text; not UTF-8 is a usage error naming the offset."""
    return decode_utf8(sys.stdin.buffer.read())


def error(message: str) -> None:
    """``gencli: error: message`` on stderr (never raises, even on a closed stderr)."""
    _say(f"gencli: error: {message}\n")


def warning(message: str) -> None:
    _say(f"gencli: warning: {message}\n")


def _say(line: str) -> None:
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass


def quiet_pipe() -> None:
    """After a broken stdout pipe, point stdout at /dev/null so the exit flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
