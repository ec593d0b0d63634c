"""A numeric setting's rules: its flag, environment variable, default and range
(:class:`Number`), and the engine's two numeric settings every command shares, ``TIMEOUT``
and ``RETRIES``. gencli.config.settings checks values against them; gencli serve's table
(gencli.config.servesettings) and the CLI's help are built from them. This module imports nothing
of gencli: the CLI reads it at start-up.
"""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_RETRIES = 2  # retries of a request that fails before any output: so at most 3 attempts
MAX_RETRIES = 10


def fmt(v: float) -> str:
    """A number as help and errors show it (``30``, ``0.5``)."""
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


class Number(NamedTuple):
    """A numeric setting: its flag, environment variable, default and range."""

    key: str
    flag: str
    env: str | None
    default: float
    lo: float
    hi: float
    integer: bool = False
    unit: str = ""
    lo_open: bool = False  # lo itself is not allowed

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        lo = f"above {fmt(self.lo)}" if self.lo_open else f"from {fmt(self.lo)}"
        unit = f" ({self.unit})" if self.unit else ""
        return f"{kind} {lo} to {fmt(self.hi)}{unit}"

    def default_text(self) -> str:
        """The default as help shows it (``30``, ``0.5``)."""
        return fmt(self.default)


TIMEOUT = Number("timeout", "--timeout", "GENCLI_TIMEOUT", 300, 0, 86400, unit="seconds", lo_open=True)
RETRIES = Number("retries", "--retries", "GENCLI_RETRIES", DEFAULT_RETRIES, 0, MAX_RETRIES, True)
