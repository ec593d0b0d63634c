"""Fenced code blocks in Markdown (CommonMark's rules, the subset answers use): a fence is
a run of three or more backticks or tildes indented by at most three spaces; it closes
at a line holding only a run of the same character at least as long; an unclosed fence
runs to the end of the text. Used by the live renderer (where blocks end) and by
``generate -x/--extract`` (which block to print)."""

from __future__ import annotations


def fence_marker(line: str) -> str | None:
    """The fence marker (``` or ~~~ run) a line opens or closes, else None."""
    s = line.lstrip(" ")
    if len(line) - len(s) > 3:
        return None
    for ch in "`~":
        if s.startswith(ch * 3):
            n = len(s) - len(s.lstrip(ch))
            return ch * n
    return None


def closes(line: str, opened: str) -> bool:
    """Whether ``line`` closes the fence opened with ``opened``."""
    marker = fence_marker(line)
    return (
        marker is not None
        and marker[0] == opened[0]
        and len(marker) >= len(opened)
        and not line.strip()[len(marker) :].strip()
    )


def code_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks in ``text``, in order, without their fences."""
    blocks: list[str] = []
    opened: str | None = None
    indent = 0
    body: list[str] = []
    for line in text.splitlines():
        if opened is None:
            marker = fence_marker(line)
            if marker and not (marker[0] == "`" and "`" in line.strip()[len(marker) :]):
                opened, indent, body = marker, len(line) - len(line.lstrip(" ")), []
        elif closes(line, opened):
            blocks.append("\n".join(body))
            opened = None
        else:
            # content lines lose up to the opening fence's indentation, as CommonMark says
            strip = min(indent, len(line) - len(line.lstrip(" ")))
            body.append(line[strip:])
    if opened is not None and any(line.strip() for line in body):  # cut off, but not empty
        blocks.append("\n".join(body))
    return blocks


def extract(text: str, last: bool = False) -> str:
    """The first (or last) fenced code block's content; the whole text when it has none."""
    blocks = code_blocks(text)
    if not blocks:
        return text.strip("\n")
    return blocks[-1] if last else blocks[0]
