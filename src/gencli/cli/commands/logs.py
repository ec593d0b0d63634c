"""gencli logs: the logged prompts and answers (the latest, a model's, a conversation's, or
those matching a full-text search), the usage summed by model, the database's path, and
turning the log off and on."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from typing import Any

from gencli.cli import logdb
from gencli.core.errors import UsageError

ACTIONS = {  # each with what shell completion says of it
    "list": "the latest prompts and answers (the default)",
    "path": "print the log database's path",
    "off": "stop logging",
    "on": "log again",
}
_PERIOD = re.compile(r"^(\d+)\s*(m|min|h|d|w)$")
_UNITS = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since_time(value: str | None, now: float | None = None) -> float | None:
    """--since: a period back from now (30m, 12h, 7d, 2w) or a date (YYYY-MM-DD, local time)."""
    if value is None:
        return None
    now = time.time() if now is None else now
    m = _PERIOD.match(value.strip().lower())
    if m:
        return now - int(m.group(1)) * _UNITS[m.group(2)]
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise UsageError(
            f"--since {value!r}: give a period such as 30m, 12h, 7d or 2w, or a date such as 2026-01-31"
        ) from None


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _tokens(row: dict[str, Any]) -> str:
    parts = []
    if row["prompt_tokens"] is not None:
        parts.append(f"{row['prompt_tokens']} in")
    if row["answer_tokens"] is not None:
        parts.append(f"{row['answer_tokens']} out")
    if row.get("reasoning_tokens") is not None:
        parts.append(f"{row['reasoning_tokens']} reasoning")
    return ", ".join(parts)


def show(rows: list[dict[str, Any]]) -> str:
    out = []
    for row in rows:
        facts = [row["model"]]
        if row["conversation"]:
            facts.append(f"conversation {row['conversation']}")
        tokens = _tokens(row)
        if tokens:
            facts.append(tokens)
        if row["duration_ms"] is not None:
            facts.append(f"{row['duration_ms'] / 1000:.2f} s")
        if row["cost"] is not None:
            facts.append(f"${row['cost']:.6f}")
        out.append(f"## {_when(row['created'])}  {'  '.join(facts)}\n")
        if row["system"]:
            out.append(f"system: {row['system']}\n")
        if row["options"]:
            out.append("options: " + " ".join(f"{k}={json.dumps(v)}" for k, v in row["options"].items()) + "\n")
        out.append("\n> " + row["prompt"].replace("\n", "\n> ") + "\n\n")
        if row["reasoning"]:
            out.append("reasoning: " + row["reasoning"].strip() + "\n\n")
        out.append(row["answer"].rstrip("\n") + "\n\n")
    return "".join(out)


def usage_table(rows: list[dict[str, Any]]) -> str:
    head = ("MODEL", "TURNS", "IN", "OUT", "REASONING", "COST")
    table = [head]
    for r in rows:
        if r["priced"] == 0:
            cost = "-"
        else:
            cost = f"${r['cost']:.6f}" + ("" if r["priced"] == r["turns"] else f" ({r['priced']} of {r['turns']})")
        table.append(
            (
                r["model"],
                str(r["turns"]),
                str(r["prompt_tokens"] or 0),
                str(r["answer_tokens"] or 0),
                str(r["reasoning_tokens"] or 0) if r["reasoning_tokens"] is not None else "-",
                cost,
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = []
    for line in table:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:-1], widths[1:-1], strict=True)]
        lines.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def run(
    action: str | None,
    count: int | None,
    as_json: bool,
    model: str | None,
    query: str | None,
    conversation: str | None,
    cont: bool,
    usage: bool,
    since: str | None,
) -> None:
    action = action or "list"
    if action not in ACTIONS:
        raise UsageError(f"gencli logs {action}: unknown action; one of: {', '.join(ACTIONS)}")
    if action == "path":
        sys.stdout.write(f"{logdb.db_path()}\n")
        return
    if action == "off":
        logdb.turn_off()
        sys.stderr.write("logging is off: prompts and answers are not logged (gencli logs on turns it back on)\n")
        return
    if action == "on":
        logdb.turn_on()
        sys.stderr.write(f"logging is on: prompts and answers go to {logdb.db_path()}\n")
        return
    if conversation is not None and cont:
        raise UsageError("--conversation NAME and -c/--continue both choose a conversation; use one")
    after = since_time(since)
    path = logdb.db_path()
    if not path.exists():
        if as_json:
            sys.stdout.write("[]\n")
        else:
            off = " (logging is off: gencli logs on)" if logdb.is_off() else ""
            sys.stderr.write(f"nothing logged yet{off}; the log will be {path}\n")
        return
    from contextlib import closing

    with closing(logdb.connect(path, create=False)) as db:
        if usage:
            summary = logdb.usage(db, after)
            if as_json:
                sys.stdout.write(json.dumps(summary, indent=2) + "\n")
            elif summary:
                sys.stdout.write(usage_table(summary))
            else:
                sys.stderr.write("nothing logged in that period\n")
            return
        conv_id = None
        name = conversation
        if cont or conversation is not None:
            from gencli.cli import state

            if conversation is not None:
                state.check_name(conversation)
                conv = state.load(conversation)
            else:
                conv = state.latest()
                if conv is None:
                    raise UsageError("-c: there is no conversation yet (see gencli conversations)")
                name = conv.name
            conv_id = conv.id if conv is not None else None
            if conv is not None and conv_id is None:
                name = conv.name  # kept before the log existed: every turn logged under its name
        chosen = cont or conversation is not None
        limit = count if count is not None else (None if chosen else 3)
        rows = logdb.latest(
            db,
            limit or None,  # 0: all
            model=model,
            query=query,
            conversation=name if conv_id is None else None,
            conversation_id=conv_id,
            since=after,
        )
    rows.reverse()  # oldest first: the latest ends up next to the prompt
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        return
    if not rows:
        sys.stderr.write("no logged prompt matches\n")
        return
    sys.stdout.write(show(rows))
