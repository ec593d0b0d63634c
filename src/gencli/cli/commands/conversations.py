"""gencli conversations: the conversations kept in the state directory (what -c and
--conversation NAME continue), and removing one."""

from __future__ import annotations

import difflib
import json
import sys
import time

from gencli.cli import state
from gencli.core.errors import UsageError


def _when(updated: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(updated)) if updated else "-"


def run(delete: str | None, as_json: bool) -> None:
    if delete is not None:
        state.check_name(delete, "--delete")
        if not state.delete(delete):
            names = [c.name for c in state.listing()]
            close = difflib.get_close_matches(delete, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else " (gencli conversations lists them)"
            raise UsageError(f"--delete: no conversation named '{delete}'{hint}")
        sys.stdout.write(f"deleted conversation '{delete}'\n")
        return
    found = state.listing()
    if as_json:
        items = [
            {"name": c.name, "model": c.model, "turns": c.turns, "last_used": round(c.updated, 3), "path": str(c.path)}
            for c in found
        ]
        sys.stdout.write(
            json.dumps({"directory": str(state.conversations_dir()), "conversations": items}, indent=2) + "\n"
        )
        return
    if not found:
        sys.stdout.write(
            "no conversations yet: gencli generate and gencli chat keep the last one "
            "(continue it with -c), --conversation NAME keeps named ones\n"
        )
        return
    head = ("NAME", "MODEL", "TURNS", "LAST USED")
    rows = [
        (c.name + (" *" if i == 0 else ""), c.model or "-", str(c.turns), _when(c.updated)) for i, c in enumerate(found)
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in [head, *rows]]
    lines.append("")
    lines.append(f"in {state.conversations_dir()}; * marks the one -c continues")
    sys.stdout.write("\n".join(lines) + "\n")
