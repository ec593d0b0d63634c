"""The CLI package's shape, read from the source (every import, at module level or inside a
function): nothing outside ``gencli.cli`` depends on it, its commands import nothing from
each other nor from the app that declares them, and no import cycle runs through it."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

SRC = ROOT / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """module -> the gencli modules it imports (``from a import b`` counts a.b when that is a module)."""
    modules = {module_name(p): p for p in (SRC / "gencli").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


GRAPH = imports()


def test_the_graph_is_read():
    assert "gencli.cli.commands.generate" in GRAPH["gencli.cli.app"]  # a function-level import
    assert "gencli.cli.pipes" in GRAPH["gencli.cli.commands.generate"]


def test_nothing_outside_the_cli_imports_it():
    offenders = {
        m: sorted(t for t in deps if t.startswith("gencli.cli"))
        for m, deps in GRAPH.items()
        if not m.startswith("gencli.cli") and m != "gencli.__main__"
    }
    assert {m: d for m, d in offenders.items() if d} == {}


def test_commands_import_nothing_from_each_other_or_the_app():
    for module, deps in GRAPH.items():
        if module.startswith("gencli.cli.commands."):
            bad = sorted(d for d in deps if d.startswith("gencli.cli.commands.") or d == "gencli.cli.app")
            assert bad == [], f"{module} imports {bad}"


def test_only_the_package_entry_imports_the_app():
    users = sorted(m for m, deps in GRAPH.items() if "gencli.cli.app" in deps)
    assert users == ["gencli.cli"]


def test_no_import_cycle_through_the_cli():
    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for dep in GRAPH.get(node, ()):
                if dep == start:
                    return path + [dep]
                if dep not in seen and dep.startswith("gencli.cli"):
                    seen.add(dep)
                    stack.append((dep, path + [dep]))
        return None

    cycles = [c for c in map(cycle_from, (m for m in GRAPH if m.startswith("gencli.cli"))) if c]
    assert cycles == []


def test_only_the_command_that_runs_is_built():
    """cli.app.only_the_command: Typer's registered_commands (pinned Typer) filtered to the
    command named; the app's own help, an unknown name and completion get the whole app."""
    from gencli.cli.app import app, only_the_command

    names = {c.callback.__name__ for c in app.registered_commands}
    assert {"generate", "chat", "logs", "templates", "models", "serve"} <= names
    lean = only_the_command(["models", "--json"])
    assert [c.callback.__name__ for c in lean.registered_commands] == ["models"]
    assert len(app.registered_commands) == len(names)  # the app itself is untouched
    assert only_the_command(["--help"]) is app
    assert only_the_command(["nope"]) is app
    assert only_the_command([]) is app
