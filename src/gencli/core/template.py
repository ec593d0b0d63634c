"""Ollama's ``template`` request field, for the prompt-only templates it can honour.

An Ollama template is a Go ``text/template`` applied to the prompt. gencli renders the
forms a one-prompt (``/api/generate``) template uses: ``{{ .Prompt }}``, ``{{ .System }}``,
``{{ .Suffix }}`` and ``{{ .Response }}`` (empty: the answer is what comes next), with
``{{ if .X }} ... {{ else }} ... {{ end }}`` around them and ``{{-`` / ``-}}`` trimming the
whitespace beside an action. The result is sent as a raw prompt. Anything else (``range
.Messages``, ``.Tools``, functions, variables) is a :class:`~gencli.core.errors.UsageError`
naming the action: a template gencli cannot render is refused, never half applied.
"""

from __future__ import annotations

import re

from gencli.core.errors import UsageError

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_FIELDS = ("Prompt", "System", "Suffix", "Response")
MAX_NESTING = 32
MAX_COPIES = 4  # the rendered prompt is at most the template and this many copies of the values


def render_template(template: str, prompt: str, system: str = "", suffix: str = "") -> str:
    """``template`` with the request's values; UsageError for what it cannot render."""
    values = {"Prompt": prompt, "System": system, "Suffix": suffix, "Response": ""}
    # a template repeating {{ .Prompt }} must not turn one request into gigabytes: the rendered
    # prompt is at most the template plus each value a few times over (checked before each copy)
    limit = len(template) + MAX_COPIES * (len(prompt) + len(system) + len(suffix))
    size = 0
    used: set[str] = set()
    out: list[str] = []
    # a stack of [this branch is shown, some branch was taken, the enclosing block is shown]
    stack: list[list[bool]] = []
    shown = True
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if shown:
            out.append(text)
        trim_next = bool(m.group(3))
        pos = m.end()
        action = m.group(2)
        if action.startswith("/*"):
            continue  # a comment
        field = _field(action)
        if field is not None:
            used.add(field)
            if shown:
                size += len(text) + len(values[field])
                if size > limit:
                    raise UsageError(f"template repeats its values more than {MAX_COPIES} times over", "template")
                out.append(values[field])
            continue
        words = action.split()
        name = _field(words[1]) if len(words) == 2 and words[0] == "if" else None
        if name is not None:
            if len(stack) >= MAX_NESTING:
                raise UsageError(f"template nests more than {MAX_NESTING} if blocks", "template")
            used.add(name)
            cond = bool(values[name])
            stack.append([cond, cond, shown])
            shown = shown and cond
        elif words == ["else"] and stack:
            top = stack[-1]
            top[0] = not top[1]
            top[1] = True
            shown = top[2] and top[0]
        elif words == ["end"] and stack:
            shown = stack.pop()[2]
        else:
            shown_action = action if len(action) <= 60 else action[:57] + "..."
            raise UsageError(
                f"template: gencli cannot render {{{{ {shown_action} }}}}; it renders .Prompt, "
                f".System, .Suffix and .Response with if/else/end (or send raw: true with the "
                f"prompt formatted yourself)",
                "template",
            )
    if stack:
        raise UsageError("template: an {{ if }} has no {{ end }}", "template")
    text = template[pos:]
    if trim_next:
        text = text.lstrip()
    if shown:
        out.append(text)
    if suffix and "Suffix" not in used:
        raise UsageError(
            "template does not use .Suffix, so the suffix would be lost; add {{ .Suffix }} to it", "template"
        )
    if system and "System" not in used:
        raise UsageError(
            "template does not use .System, so the system prompt would be lost; add {{ .System }} to it", "template"
        )
    return "".join(out)


def _field(action: str) -> str | None:
    if action.startswith(".") and action[1:] in _FIELDS:
        return action[1:]
    return None
