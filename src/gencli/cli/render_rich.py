"""The terminal renderer: a spinner until the first token, the reasoning chain in a dim
panel as it streams, then the answer rendered as Markdown live.

Only the CLI's turn runner imports this module, and only when stdout is a terminal, so
piped runs never pay for Rich.

Long answers: Rich's Live area cannot scroll, so completed Markdown blocks (split at
blank lines outside ``` fences) are printed permanently above it and only the trailing,
incomplete block stays live; the live area itself shows only the tail that fits the
screen. Per-delta work is a string append plus, on a newline, a scan of the new lines;
rendering happens on a refresh thread at ~12 frames per second.

Threads: Live's own refresh thread would redraw the live area while the main thread prints
blocks above it, and the two would race (the cursor reset for a print is computed before
its write). Rich only guards that with a private lock, so gencli runs Live with
``auto_refresh=False`` and drives ``Live.refresh()`` from its own thread under its own lock,
the same lock every print takes: public API only.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.segment import Segment
from rich.spinner import Spinner
from rich.text import Text

from gencli.cli.fences import closes, fence_marker
from gencli.core.events import Done, ReasoningDelta, TextDelta

if TYPE_CHECKING:
    from rich.console import ConsoleOptions, RenderableType

    from gencli.core.events import Event

FPS = 12
REASONING_TITLE = "reasoning"


class BlockSplitter:
    """Accumulates Markdown text and hands back blocks that can no longer change.

    A block ends at a blank line outside a fenced code block. ``feed`` returns the
    completed blocks (possibly none); ``pending`` is the incomplete tail.
    """

    def __init__(self) -> None:
        self.pending = ""
        self._scan = 0  # offset in pending up to which whole lines were examined
        self._fence: str | None = None  # the marker of the open fence, if any
        self._block_start = 0  # offset in pending where the current block's text starts

    def feed(self, text: str) -> list[str]:
        self.pending += text
        if "\n" not in text:
            return []
        done: list[str] = []
        p = self.pending
        pos = self._scan
        cut = 0  # everything before cut has been committed
        while True:
            nl = p.find("\n", pos)
            if nl < 0:
                break
            line = p[pos:nl]
            if self._fence is not None:
                if closes(line, self._fence):
                    self._fence = None
            elif line.strip() == "":
                block = p[cut:pos]
                if block.strip():
                    done.append(block.rstrip("\n"))
                cut = nl + 1
            else:
                marker = fence_marker(line)
                if marker:
                    self._fence = marker
            pos = nl + 1
        if cut:
            self.pending = p[cut:]
            self._scan = pos - cut
        else:
            self._scan = pos
        return done


class _View:
    """What the Live area shows, built from the renderer's state at refresh time (never per delta).

    Only the tail that fits the screen is shown (a Live area taller than the screen cannot be
    erased), and it is rendered two columns narrower than the terminal so that the cursor never
    sits in the last column: the "^C" a terminal echoes on Ctrl-C would otherwise wrap onto a
    line that Rich does not know about and leave a stale copy of the live area behind.
    """

    def __init__(self, renderer: RichRenderer):
        self.r = renderer

    def parts(self, console: Console, width: int, height: int) -> list[RenderableType]:
        r = self.r
        if r.phase == "answer":
            text = r.splitter.pending
            return [Markdown(text)] if text.strip() else []
        if r.phase == "reasoning" and not r.hide_reasoning:
            tail = _tail_lines(r.reasoning, console, width - 4, max(1, height - 4))
            return [
                Panel(
                    Text(tail, style="dim", overflow="fold"),
                    title=REASONING_TITLE,
                    title_align="left",
                    border_style="dim",
                    expand=True,
                ),
                r.spinner,
            ]
        return [r.spinner]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        width = max(10, options.max_width - 2)
        height = max(3, console.size.height - 1)
        narrow = options.update(width=width, height=None)
        lines: list[list[Segment]] = []
        for part in self.parts(console, width, height):
            lines.extend(console.render_lines(part, narrow, pad=False))
        if len(lines) > height:
            lines = lines[-height:]
        new_line = Segment.line()
        for i, line in enumerate(lines):
            if i:
                yield new_line
            yield from line


def _tail_lines(text: str, console: Console, width: int, height: int) -> str:
    """The end of ``text`` that fills at most ``height`` lines of ``width`` columns."""
    # Only look at a bounded suffix: enough characters for the screen, whatever the text's length.
    budget = max(1, width) * height * 2
    chunk = text[-budget:] if len(text) > budget else text
    lines = list(Text(chunk.rstrip("\n"), overflow="fold").wrap(console, max(1, width)))
    return "\n".join(line.plain for line in lines[-height:])


class RichRenderer:
    """Same interface as ``render.PlainRenderer``: ``event`` returns the Done event when it sees one."""

    def __init__(self, hide_reasoning: bool):
        self.hide_reasoning = hide_reasoning
        self.console = Console(highlight=False)
        self.phase = "wait"  # wait -> reasoning -> answer
        self.reasoning = ""
        self.splitter = BlockSplitter()
        self.committed = 0  # answer blocks printed permanently
        self.spinner = Spinner("dots", text=Text("waiting for the model…", style="dim"), style="cyan")
        self.live = Live(
            _View(self),
            console=self.console,
            transient=True,
            auto_refresh=False,
            vertical_overflow="crop",
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._lock = threading.RLock()  # every write to the terminal: refreshes and prints
        self._ticks = threading.Event()  # set: the refresh thread ends
        self.stopped = False
        self.live.start(refresh=True)
        self._refresher = threading.Thread(target=self._refresh_loop, name="gencli-live", daemon=True)
        self._refresher.start()
        atexit.register(self._stop)  # an unexpected exception must not leave the cursor hidden

    def _refresh_loop(self) -> None:
        while not self._ticks.wait(1 / FPS):
            with self._lock:
                if not self._ticks.is_set():
                    self.live.refresh()

    # -- events ----------------------------------------------------------------
    def event(self, ev: Event) -> Done | None:
        if type(ev) is TextDelta:
            if self.phase != "answer":
                self._start_answer()
            for block in self.splitter.feed(ev.text):
                self._commit(block)
        elif type(ev) is ReasoningDelta:
            if self.phase == "wait":
                self.phase = "reasoning"
                self.spinner.update(text=Text("thinking…", style="dim"))
            if self.phase == "reasoning":
                self.reasoning += ev.text
            # Reasoning after the answer has started (rare) is dropped from the screen, as it
            # would otherwise interleave with the answer.
        elif type(ev) is Done:
            return ev
        return None

    def _start_answer(self) -> None:
        if self.phase == "reasoning" and not self.hide_reasoning and self.reasoning.strip():
            self._print(self._reasoning_panel())
        self.phase = "answer"

    def _reasoning_panel(self) -> Panel:
        return Panel(
            Text(self.reasoning.strip("\n"), style="dim"),
            title=REASONING_TITLE,
            title_align="left",
            border_style="dim",
            expand=True,
        )

    def _print(self, *renderables: Any) -> None:
        with self._lock:
            self.console.print(*renderables)

    def _commit(self, block: str) -> None:
        md = Markdown(block)
        if self.committed:
            self._print(Text(), md)
        else:
            self._print(md)
        self.committed += 1

    # -- endings ---------------------------------------------------------------
    def _stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self._ticks.set()
        with self._lock:  # waits for a refresh in progress; the thread then sees the event
            self.live.stop()
        atexit.unregister(self._stop)

    def _flush(self) -> None:
        """Stop the live area and print permanently whatever it was showing."""
        self._stop()
        if self.phase == "reasoning" and not self.hide_reasoning and self.reasoning.strip():
            self._print(self._reasoning_panel())
        elif self.phase == "answer":
            rest = self.splitter.pending
            if rest.strip():
                self._commit(rest.rstrip("\n"))
            self.splitter.pending = ""

    def finish(self) -> None:
        self._flush()

    def interrupted(self) -> None:
        self._flush()
        self._print(Text("(interrupted)", style="dim"))

    def failed(self) -> None:
        self._flush()
