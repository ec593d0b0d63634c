"""The user's editor ($VISUAL, else $EDITOR, else vi) for a prompt (``generate -e``,
``/edit`` in chat) or a template (``gencli templates edit``). The command is split like a
shell would (``code --wait`` works) and gets the file's path as its last argument."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from gencli.core.errors import GencliError


class EditorError(GencliError):
    """The editor could not run, failed, or left nothing (exit code 1)."""

    exit_code = 1


def editor_command() -> tuple[str, list[str]]:
    name = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        argv = shlex.split(name)
    except ValueError as exc:
        raise EditorError(f"cannot read the editor command {name!r} ({exc}); fix $VISUAL or $EDITOR") from None
    if not argv:
        raise EditorError("the editor command is empty; set $VISUAL or $EDITOR")
    return name, argv


def run_editor(path: Path) -> None:
    name, argv = editor_command()
    try:
        code = subprocess.call([*argv, str(path)])
    except OSError as exc:
        raise EditorError(f"cannot run the editor {name!r} ({exc.strerror or exc}); set $VISUAL or $EDITOR") from None
    if code != 0:
        raise EditorError(f"the editor {name!r} exited with status {code}; nothing was sent")


def edit_text(initial: str = "", suffix: str = ".md") -> str:
    """What the user leaves in the editor's buffer (started with ``initial``)."""
    fd, name = tempfile.mkstemp(prefix="gencli-prompt-", suffix=suffix)
    path = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(initial)
        run_editor(path)
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EditorError(f"cannot read what the editor left in {path} ({exc})") from None
    finally:
        try:
            path.unlink()
        except OSError:
            pass


def edit_prompt(initial: str = "") -> str:
    """A prompt from the editor; an empty buffer aborts (EditorError, exit code 1)."""
    text = edit_text(initial)
    if not text.strip():
        raise EditorError("the editor's buffer was empty; nothing was sent")
    return text.rstrip("\n")
