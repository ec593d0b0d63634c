"""gencli templates: list the saved templates, show one, or write one in the editor."""

from __future__ import annotations

import sys
from pathlib import Path

from gencli.cli import templates
from gencli.core.errors import UsageError

ACTIONS = {  # each with what shell completion says of it
    "list": "the saved templates",
    "show": "print one",
    "edit": "write one in $EDITOR",
    "path": "their folder",
}


def _summary(path: Path) -> str:
    try:
        t = templates.load(path.stem)
    except UsageError as exc:
        return f"(cannot be used: {exc.message})"
    text = t.system if t.system is not None else t.prompt or ""
    line = " ".join(text.split())
    line = line if len(line) <= 60 else line[:57] + "..."
    return f"{'system' if t.system is not None else 'prompt'}: {line}" + (f"  [model {t.model}]" if t.model else "")


def edit(name: str) -> None:
    from gencli.cli.editor import EditorError, run_editor

    path = templates.find(name)
    folder = templates.templates_dir()
    new = path is None
    if path is None:
        path = folder / f"{name}.yaml"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(templates.SKELETON.format(name=name), encoding="utf-8")
        except OSError as exc:
            raise EditorError(f"cannot write {path} ({exc.strerror or exc})") from None
    before = path.read_bytes()
    try:
        run_editor(path)
    except EditorError:
        if new:
            path.unlink(missing_ok=True)
        raise
    text = path.read_text(encoding="utf-8", errors="replace")
    if new and (path.read_bytes() == before or not text.strip()):
        path.unlink(missing_ok=True)
        raise EditorError(f"template '{name}' was left empty; nothing was saved")
    templates.parse(name, path, text)  # a mistake is reported now; the file stays, to edit again
    sys.stderr.write(f"template '{name}' saved in {path} (use it with: gencli generate -t {name})\n")


def run(action: str | None, name: str | None) -> None:
    action = action or "list"
    if action not in ACTIONS:
        raise UsageError(f"gencli templates {action}: unknown action; one of: {', '.join(ACTIONS)}")
    if action == "path":
        sys.stdout.write(f"{templates.templates_dir()}\n")
        return
    if action == "list":
        if name is not None:
            raise UsageError("gencli templates list takes no name (show NAME shows one)")
        found = templates.names()
        if not found:
            folder = templates.templates_dir()
            sys.stderr.write(f"no templates yet in {folder}; create one: gencli templates edit NAME\n")
            return
        width = max(len(n) for n, _ in found)
        sys.stdout.write("".join(f"{n:<{width}}  {_summary(p)}\n" for n, p in found))
        return
    if not name:
        raise UsageError(f"gencli templates {action} NAME: name the template")
    if action == "edit":
        templates.check_name(name)
        edit(name)
        return
    path = templates.find(name)
    if path is None:
        folder = templates.templates_dir()
        raise UsageError(f"no template '{name}' in {folder}; create it: gencli templates edit {name}")
    sys.stdout.write(path.read_text(encoding="utf-8", errors="replace"))
    sys.stdout.flush()
    templates.load(name)  # then one that cannot be used is an error naming the fault
