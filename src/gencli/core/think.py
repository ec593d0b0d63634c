"""Split ``<think>...</think>`` reasoning out of streamed answer text.

Handles tags split across chunks, and a missing opening tag (chat templates
that pre-fill ``<think>``): with ``implicit_open`` the text is reasoning until
``</think>``; without it, a closing tag with no opening tag turns everything
before it into reasoning when the whole text is known (``split_complete``).
"""

from __future__ import annotations

OPEN = "<think>"
CLOSE = "</think>"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkSplitter:
    """Streaming splitter. ``feed`` returns (reasoning, text) pieces ready to emit."""

    __slots__ = ("_state", "_held", "_implicit")

    # states: "start" (nothing but whitespace seen), "think", "gap" (just after </think>), "text"
    def __init__(self, implicit_open: bool = False) -> None:
        self._state = "start"
        self._held = ""
        self._implicit = implicit_open  # no opening tag needed: text is reasoning until </think>

    def feed(self, chunk: str) -> tuple[str, str]:
        if self._state == "text" and not self._held:
            return "", chunk  # fast path: answer text, nothing pending
        data = self._held + chunk
        self._held = ""
        reasoning: list[str] = []
        text: list[str] = []
        while data:
            if self._state == "start":
                stripped = data.lstrip()
                if not stripped:
                    self._held = data
                    break
                if stripped.startswith(OPEN):
                    self._state = "think"
                    data = stripped[len(OPEN) :]
                    continue
                if OPEN.startswith(stripped):
                    self._held = data  # could still become "<think>"
                    break
                self._state = "think" if self._implicit else "text"
                continue
            if self._state == "think":
                i = data.find(CLOSE)
                if i >= 0:
                    reasoning.append(data[:i])
                    data = data[i + len(CLOSE) :]
                    self._state = "gap"
                    continue
                keep = _partial_suffix(data, CLOSE)
                if keep:
                    reasoning.append(data[:-keep])
                    self._held = data[-keep:]
                else:
                    reasoning.append(data)
                break
            if self._state == "gap":  # newlines after </think>, possibly in later chunks
                data = data.lstrip("\n")
                if data:
                    self._state = "text"
                continue
            # text
            text.append(data)
            break
        return "".join(reasoning), "".join(text)

    def close(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        if self._state == "think" or (self._state == "start" and self._implicit):
            return held, ""
        return "", held


def split_complete(content: str) -> tuple[str, str]:
    """Split a whole answer into (reasoning, text), including a missing opening tag."""
    stripped = content.lstrip()
    if stripped.startswith(OPEN):
        stripped = stripped[len(OPEN) :]
        i = stripped.find(CLOSE)
        if i < 0:
            return stripped, ""
        return stripped[:i].strip("\n"), stripped[i + len(CLOSE) :].lstrip("\n")
    i = content.find(CLOSE)
    if i >= 0 and OPEN not in content[:i]:
        return content[:i].strip("\n"), content[i + len(CLOSE) :].lstrip("\n")
    return "", content
