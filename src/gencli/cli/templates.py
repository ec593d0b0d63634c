"""Templates: a saved system prompt, prompt, model and options, used with ``-t NAME``.

One file per template in $XDG_CONFIG_HOME/gencli/templates (``~/.config`` by default):
``NAME.yaml`` (or ``.yml``) or ``NAME.toml``, with these fields, all optional but one of
``system`` and ``prompt``:

- ``system``: the system prompt;
- ``prompt``: the prompt, where ``$input`` is what the user gives (the argument, stdin
  and ``-f`` fragments; appended after a blank line when the prompt has no ``$input``)
  and ``$name`` is a parameter given with ``-p name value``;
- ``defaults``: parameters' values when no ``-p`` gives them;
- ``model``: the model, unless ``-m`` names another;
- ``options``: sampling options (temperature, top_p, ...), under those given as flags.

``$$`` is a literal ``$``. A parameter with no value is a one-line error naming it.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gencli.core.errors import GencliError, UsageError

FIELDS = ("system", "prompt", "model", "options", "defaults")
SUFFIXES = (".yaml", ".yml", ".toml")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

SKELETON = """\
# gencli template '{name}' (YAML). Use it with: gencli generate -t {name} "your input"
# Every field is optional, but give a system prompt or a prompt.
#
# system: You are a careful reviewer. Answer in short bullet points.
# prompt: |
#   Review this $language code:
#
#   $input
# defaults:
#   language: Python        # -p language Go overrides it
# model: gpt-4o-mini        # -m overrides it
# options:
#   temperature: 0.2
"""


class TemplateError(UsageError):
    """A template that does not exist or cannot be used (exit code 2)."""


def templates_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "gencli" / "templates"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise TemplateError(
            f"template name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def find(name: str) -> Path | None:
    check_name(name)
    for suffix in SUFFIXES:
        path = templates_dir() / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def names() -> list[tuple[str, Path]]:
    try:
        files = sorted(p for p in templates_dir().iterdir() if p.suffix in SUFFIXES and _NAME.match(p.stem))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise GencliError(f"cannot read {templates_dir()} ({exc.strerror or exc})") from None
    seen: dict[str, Path] = {}
    for p in files:
        seen.setdefault(p.stem, p)
    return sorted(seen.items())


@dataclass(slots=True)
class Template:
    name: str
    path: Path
    system: str | None = None
    prompt: str | None = None
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)

    def render(self, text: str, params: dict[str, str]) -> str:
        """The prompt: the template's, with ``$input`` and the parameters filled in."""
        if self.prompt is None:
            return text
        values = {**self.defaults, **params, "input": text}
        tpl = string.Template(self.prompt.rstrip("\n"))  # YAML's "|" ends a block with a newline
        try:
            out = tpl.substitute(values)
        except KeyError as exc:
            name = exc.args[0]
            raise TemplateError(
                f"template '{self.name}' needs the parameter '{name}': give it with -p {name} VALUE"
            ) from None
        except ValueError as exc:
            raise TemplateError(
                f"template '{self.name}' ({self.path}): bad '$' in the prompt ({exc}); '$$' is a '$'"
            ) from None
        if "input" not in tpl.get_identifiers() and text:
            out = f"{out}\n\n{text}" if out else text
        return out

    def render_system(self, params: dict[str, str]) -> str | None:
        if self.system is None:
            return None
        try:
            return string.Template(self.system).safe_substitute({**self.defaults, **params})
        except ValueError:
            return self.system

    def unused(self, params: dict[str, str]) -> list[str]:
        used = set(string.Template(self.prompt or "").get_identifiers())
        used |= set(string.Template(self.system or "").get_identifiers())
        return sorted(k for k in params if k not in used)


def parse(name: str, path: Path, text: str) -> Template:
    where = f"template '{name}' ({path})"
    try:
        if path.suffix == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError
        detail = " ".join(str(exc).split())[:200]
        raise TemplateError(f"{where} is not valid {path.suffix[1:].upper()}: {detail}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TemplateError(f"{where}: expected fields such as 'system:' and 'prompt:'")
    for key in data:
        if key not in FIELDS:
            raise TemplateError(f"{where}: unknown field '{key}' (known fields: {', '.join(FIELDS)})")
    for key in ("system", "prompt", "model"):
        if key in data and not isinstance(data[key], str):
            raise TemplateError(f"{where}: '{key}' must be text")
    for key in ("options", "defaults"):
        if key in data and not isinstance(data[key], dict):
            raise TemplateError(f"{where}: '{key}' must be a mapping of names to values")
    if data.get("system") is None and data.get("prompt") is None:
        raise TemplateError(f"{where}: give a 'system' prompt or a 'prompt' (gencli templates edit {name})")
    options = dict(data.get("options") or {})
    if options:
        from gencli.core import options as opts

        try:
            options, ignored = opts.check(options, opts.KNOWN)
        except UsageError as exc:
            raise TemplateError(f"{where}: {exc.message}") from None
        if ignored:
            raise TemplateError(f"{where}: unknown option(s) {', '.join(ignored)} (known: {', '.join(opts.KNOWN)})")
    defaults = {str(k): str(v) for k, v in (data.get("defaults") or {}).items()}
    return Template(name, path, data.get("system"), data.get("prompt"), data.get("model"), options, defaults)


def load(name: str) -> Template:
    path = find(name)
    if path is None:
        raise TemplateError(
            f"no template '{name}' in {templates_dir()}; create it with: gencli templates edit {name} "
            "(gencli templates list shows them)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"template '{name}' ({path}): cannot read it ({exc})") from None
    return parse(name, path, text)
