"""``-f PATH|URL|-``: text added to the prompt, from a file, a web page or stdin.

Each fragment is at most :data:`MAX_FRAGMENT_BYTES` (1 MiB) of UTF-8 text; bigger input,
binary input (a NUL byte, or bytes that are not UTF-8) or a page whose Content-Type is
not text is refused with a one-line error (exit code 2) before anything is sent. URLs
are downloaded by :mod:`gencli.transports.textfetch`, behind the address guard of the server's
image downloads (public addresses only unless ``--allow-private-fragments``).

The prompt is the fragments, in the order given, then the prompt itself, separated by
blank lines.
"""

from __future__ import annotations

from pathlib import Path

from gencli.core.errors import UsageError

MAX_FRAGMENT_BYTES = 1024 * 1024
TEXT_TYPES = ("application/json", "application/xml", "application/javascript", "application/x-yaml", "+json", "+xml")


def is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def _text(data: bytes, where: str, charset: str = "utf-8") -> str:
    if b"\x00" in data[:8192]:
        raise UsageError(f"{where} is binary (it holds NUL bytes); -f takes text files and pages only")
    try:
        return data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        raise UsageError(
            f"{where} is not {charset} text (binary, or another encoding); convert it first, e.g. with iconv"
        ) from None


def _too_big(where: str, size: int) -> UsageError:
    return UsageError(
        f"{where} is {size / 1048576:.1f} MB; a fragment is at most {MAX_FRAGMENT_BYTES // 1024} KB of text "
        "(cut it first, e.g. with head -c)"
    )


def read_one(value: str, stdin: bytes | None, allow_private: bool) -> str:
    where = f"-f {value}"
    if value == "-":
        data = stdin or b""
        if len(data) > MAX_FRAGMENT_BYTES:
            raise _too_big("-f - (stdin)", len(data))
        return _text(data, "-f - (stdin)")
    if is_url(value):
        from gencli.transports.textfetch import fetch_text

        body, content_type = fetch_text(value, MAX_FRAGMENT_BYTES, allow_private)
        kind, _, params = content_type.partition(";")
        kind = kind.strip().lower()
        if kind and not (kind.startswith("text/") or kind.endswith(TEXT_TYPES) or kind in TEXT_TYPES):
            raise UsageError(f"{where}: the page is {kind}, not text; -f takes text files and pages only")
        charset = "utf-8"
        for param in params.split(";"):
            key, _, val = param.strip().partition("=")
            if key.lower() == "charset" and val:
                charset = val.strip('"').lower()
        return _text(body, where, charset)
    path = Path(value).expanduser()
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise UsageError(f"{where}: is a directory; give a file")
        if size > MAX_FRAGMENT_BYTES:
            raise _too_big(where, size)
        with path.open("rb") as f:
            data = f.read(MAX_FRAGMENT_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_FRAGMENT_BYTES:  # a file that grew, or a pipe named by path
        raise _too_big(where, len(data))
    return _text(data, where)


def read_all(values: list[str] | tuple[str, ...] | None, allow_private: bool = False) -> list[str]:
    """The fragments' texts, in order (``-`` reads stdin, once)."""
    if not values:
        return []
    stdin: bytes | None = None
    if "-" in values:
        if list(values).count("-") > 1:
            raise UsageError("-f -: stdin can be read once; give '-f -' once")
        import sys

        stdin = sys.stdin.buffer.read()
    return [read_one(v, stdin, allow_private) for v in values]


def join(fragments: list[str], prompt: str) -> str:
    parts = [f.rstrip("\n") for f in fragments if f.strip()]
    if prompt:
        parts.append(prompt)
    return "\n\n".join(parts)
