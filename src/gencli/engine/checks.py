"""The checks of a request before anything runs, one named function for each rule: a field of
the wrong type or value, or one the model cannot honour, is a UsageError (HTTP 400, the CLI's
exit 2) naming the field and how to fix it. Pure: the model entry and its provider's row are
passed in; nothing here reads the registry, the environment or the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gencli.config.registry import ModelEntry
from gencli.core import context as ctx
from gencli.core import images as img
from gencli.core import options as opts
from gencli.core.errors import UsageError, warn
from gencli.core.request import Format, GenerateRequest, Message, ToolChoice
from gencli.providers import PROVIDERS, ProviderSpec


class IgnoredOptions:
    """Warns about the options a request set that its model ignores, once per model and option
    name in a process: a client that sends ``num_ctx`` with every chat (Open WebUI) gets one
    line in the server's log, not one a request. Bounded: the names remembered are cut short
    and at most ``LIMIT`` (then forgotten all at once), and a line names a few of them."""

    LIMIT = 1024

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def warn(self, model: str, label: str, names: list[str]) -> None:
        seen = self.seen
        model_key = model[:80]
        new = [n for n in names if (model_key, n[:80]) not in seen]
        if not new:
            return
        warn(opts.ignored_message(model, label, new))
        if len(seen) + len(new) > self.LIMIT:
            seen.clear()
        seen.update((model_key, n[:80]) for n in new[: self.LIMIT])


_IGNORED = IgnoredOptions()


def text(value: Any, name: str) -> str:
    """``value`` as a text field: a string, without NUL, valid Unicode."""
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string", name)
    if "\x00" in value:
        raise UsageError(f"{name} contains a NUL character", name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{name} is not valid Unicode (lone surrogate)", name) from None
    return value


MAX_TOP_LOGPROBS = 20  # Ollama's and OpenAI's bound


def image_count(req: GenerateRequest, quota: img.ImageQuota | None) -> None:
    """``images`` is a list, and the request's images are no more than the quota allows
    (counted before any of them is decoded)."""
    if not isinstance(req.images, list):
        raise UsageError("images must be an array of base64 strings or http(s) URLs", "images")
    if quota is not None and (req.images or req.message_images):
        quota.check_count(len(req.images) + len(req.message_images))


def model_name(req: GenerateRequest, model_default: bool) -> str | None:
    """The model asked for (None: the registry's default, where one may be used)."""
    if not isinstance(req.model, str) or (not req.model and not model_default):
        raise UsageError("model is required", "model")
    return req.model or None


def options(req: GenerateRequest, entry: ModelEntry, spec: ProviderSpec) -> dict[str, Any]:
    """The options the provider takes: the entry's (models.json) under the request's. Options
    it ignores are warned about once per model (:class:`IgnoredOptions`)."""
    asked, ignored = opts.check(req.options, spec.options)
    if ignored:
        _IGNORED.warn(entry.name, spec.label, ignored)
    out = {k: v for k, v in entry.options.items() if k in spec.options}
    out.update(asked)
    return out


def output_format(req: GenerateRequest) -> Format | None:
    """``format``: "json", a JSON schema (an object), or none; a schema's name and strictness."""
    fmt = req.format
    if fmt == "" or fmt is None:
        fmt = None
    elif fmt != "json" and not isinstance(fmt, dict):
        raise UsageError('format must be "json" or a JSON schema object', "format")
    name, strict = req.format_name, req.format_strict
    if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= 64):
        raise UsageError("the schema's name must be a string of 1 to 64 characters", "format")
    if strict is not None and not isinstance(strict, bool):
        raise UsageError("the schema's strict must be true or false", "format")
    return fmt


def think(req: GenerateRequest, entry: ModelEntry) -> bool | str | None:
    """``think``: true, false or an effort, and only for a model that can think."""
    value = req.think
    if value is not None and not isinstance(value, bool) and value not in ("low", "medium", "high"):
        raise UsageError('think must be true, false, "low", "medium" or "high"', "think")
    if value not in (None, False) and "thinking" not in entry.capabilities:
        raise UsageError(
            f"model '{entry.name}' does not support thinking (no 'thinking' capability); leave out think or send false",
            "think",
        )
    return value


def logprobs(req: GenerateRequest, entry: ModelEntry, spec: ProviderSpec) -> int:
    """``logprobs`` and ``top_logprobs``; the alternatives per token to ask for (0 without)."""
    if not isinstance(req.logprobs, bool):
        raise UsageError("logprobs must be true or false", "logprobs")
    top = req.top_logprobs
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise UsageError(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}", "top_logprobs")
    if req.logprobs and not spec.logprobs:
        raise UsageError(
            f"model '{entry.name}': {spec.label} does not return log probabilities; leave out logprobs", "logprobs"
        )
    return top if req.logprobs else 0


def tools(req: GenerateRequest, entry: ModelEntry) -> tuple[list[dict[str, Any]] | None, ToolChoice | None]:
    """(the validated tools, the tool choice); none when no tool may be called and the model
    has no tools (it need not hear of them)."""
    if req.tools is None and req.tool_choice is None:
        return None, None
    from gencli.core.tools import validate_tool_choice, validate_tools

    checked = validate_tools(req.tools)
    choice = validate_tool_choice(req.tool_choice, checked)
    if choice == "none" and "tools" not in entry.capabilities:
        return None, None
    if checked and "tools" not in entry.capabilities:
        raise UsageError(f"model '{entry.name}' does not support tools (no 'tools' capability)", "tools")
    return checked, choice


def keep_alive(value: Any) -> float | None:
    """``keep_alive`` in seconds (a duration string was turned into seconds by the wire)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise UsageError('keep_alive must be a number of seconds or a duration such as "5m"', "keep_alive")
    return float(value)


@dataclass(slots=True)
class Conversation:
    """The messages to send and the turns to encode as ``context`` afterwards. ``prompt`` is a
    text completion's prompt (raw, suffix, template), sent as it is; ``suffix`` its
    fill-in-the-middle end."""

    messages: list[Message]
    history: list[Message]
    want_context: bool
    prompt: str | None = None
    suffix: str | None = None


def conversation(
    req: GenerateRequest, entry: ModelEntry, fmt: Format | None, tool_list: list[dict[str, Any]] | None
) -> Conversation:
    """The request's messages: its ``messages`` (chat), or system, context and prompt."""
    if req.system is not None:
        text(req.system, "system")
    if req.messages is not None:
        messages = [Message("system", req.system)] if req.system else []
        messages.extend(req.messages)
        if not any(m.role == "user" for m in messages):
            raise UsageError("messages must contain at least one user message", "messages")
        if any(m.role == "tool" or m.tool_calls for m in messages):
            from gencli.core.tools import pair_tool_messages

            pair_tool_messages(messages)
        return Conversation(messages, [m for m in messages if m.role != "system"], want_context=False)
    if req.prompt is None:
        raise UsageError("prompt is required", "prompt")
    prompt = text(req.prompt, "prompt")
    completion = text_mode(req, entry, prompt, fmt, tool_list)
    if completion is not None:  # one prompt string for a text-completion endpoint (or the local model)
        sent, suffix = completion
        return Conversation(
            [Message("user", sent)], [Message("user", sent)], want_context=suffix is None, prompt=sent, suffix=suffix
        )
    if not prompt.strip() and not req.images:
        raise UsageError("prompt is empty", "prompt")
    prior = ctx.decode(req.context)
    messages = [Message("system", req.system)] if req.system else []
    messages.extend(prior)
    messages.append(Message("user", prompt))
    return Conversation(messages, prior + [Message("user", prompt)], want_context=True)


def text_mode(
    req: GenerateRequest, entry: ModelEntry, prompt: str, fmt: Any, tools: Any
) -> tuple[str, str | None] | None:
    """For ``raw``, ``suffix`` or ``template``: (the prompt to send as it is, the suffix); None
    for a normal (chat) generation. What cannot be honoured is a UsageError, never dropped."""
    raw, suffix, template = req.raw, req.suffix, req.template
    if not isinstance(raw, bool):
        raise UsageError("raw must be true or false", "raw")
    if suffix is not None:
        suffix = text(suffix, "suffix") or None
    if template is not None:
        template = text(template, "template") or None
    if not (raw or suffix or template):
        return None
    spec = PROVIDERS[entry.provider]
    if suffix and "insert" not in entry.capabilities:
        raise UsageError(
            f"model '{entry.name}' does not support insert (fill-in-the-middle with suffix; "
            f"no 'insert' capability in models.json)",
            "suffix",
        )
    if raw and (template or req.system or req.context):
        raise UsageError("raw mode does not support template, system, or context", "raw")
    if suffix and (req.system or req.context):
        raise UsageError(
            "suffix (fill-in-the-middle) does not support system or context; send the code "
            "before the gap as prompt and the code after it as suffix",
            "suffix",
        )
    if template:
        if req.context:
            raise UsageError("template does not support context; put the conversation in the prompt", "template")
        from gencli.core.template import render_template

        prompt = render_template(template, prompt, req.system or "", suffix or "")
        suffix = None
    if not spec.local and spec.completions_path is None:
        what = "fill-in-the-middle" if suffix else "raw prompts or templates"
        raise UsageError(
            f"model '{entry.name}': {spec.label} has no text-completion endpoint, so {what} "
            f"cannot be sent; leave out raw, suffix and template",
            "raw",
        )
    if tools:
        raise UsageError("tools cannot be used with raw, suffix or template (a text completion)", "tools")
    if fmt is not None and not spec.local:
        raise UsageError(
            f"format cannot be used with raw, suffix or template on {spec.label}'s text-completion endpoint", "format"
        )
    return prompt, suffix
