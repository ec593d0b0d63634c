"""A real terminal for tests: a command in a tmux pane (a pseudo-terminal with a real
terminal emulator), keys typed into it, and the screen as tmux renders it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install -y tmux)")


class Pane:
    """One gencli run in its own tmux server (private socket); remain-on-exit keeps the screen."""

    def __init__(self, cwd: Path, argv: list[str], env: dict[str, str], cols: int = 100, rows: int = 40):
        self.dir = tempfile.mkdtemp(prefix="gencli-tmux-")  # short: socket paths are limited to ~100 bytes
        self.sock = os.path.join(self.dir, "s")
        conf = Path(self.dir) / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 20000\nset -g status off\n")
        self.status_file = os.path.join(self.dir, "status")
        env = dict(env, STATUS_FILE=self.status_file)
        env.pop("TMUX", None)
        self.env = env
        subprocess.run(
            [
                "tmux",
                "-S",
                self.sock,
                "-f",
                str(conf),
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                str(cols),
                "-y",
                str(rows),
                "-c",
                str(cwd),
                "--",
                "bash",
                "-c",
                '"$@"; echo "$?" > "$STATUS_FILE"',
                "bash",
                *argv,
            ],
            env=env,
            check=True,
            timeout=10,
        )

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.sock, *args], env=self.env, capture_output=True, text=True, timeout=10, check=True
        ).stdout

    def screen(self, escapes: bool = False) -> str:
        """Scroll-back plus visible screen, wrapped lines joined, as the terminal shows them."""
        args = ["capture-pane", "-p", "-J", "-S", "-", "-t", "t"]
        if escapes:
            args.append("-e")
        return self._tmux(*args)

    def status(self) -> int | None:
        """The exit status, once gencli has exited (bash writes it to a file: tmux's own
        #{pane_dead_status} is sometimes never filled in)."""
        try:
            text = Path(self.status_file).read_text()
        except FileNotFoundError:
            return None
        return int(text) if text.endswith("\n") else None

    def wait_exit(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            code = self.status()
            if code is not None:
                return code
            time.sleep(0.05)
        raise AssertionError(f"gencli did not exit within {timeout}s; screen ends:\n{self.screen()[-2000:]}")

    def wait_for(self, text: str, timeout: float = 30, count: int = 1) -> str:
        """Wait until ``text`` is on the screen (or in the scroll-back) ``count`` times."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared {count} time(s); screen:\n{self.screen()}")

    def visible(self) -> str:
        """Only what the screen shows now (no scroll-back)."""
        return self._tmux("capture-pane", "-p", "-J", "-t", "t")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.sock, "kill-server"], env=self.env, capture_output=True, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
