"""What the wires' conversation converters share (``messages_in`` of Ollama, OpenAI and
Anthropic, and the Responses API's ``input_in``): the checks of a message array's items, their
roles and their text, with UsageErrors naming the field; :class:`Turns`, the engine Messages
made with the images (still raw) each carries; and the tool bookkeeping of the chat wires'
messages (``tool_calls``, a tool message's call id and name). What a wire's content parts,
blocks and items are stays in its module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from gencli.core.errors import UsageError
from gencli.core.request import Message
from gencli.core.tools import check_calls
from gencli.server.asgi import optional_str

# Reads one part of an array ``content``: (the part, where it is, the images collected so far)
# -> its text, or None for a part without text (an image it put with the images).
PartReader = Callable[[Any, str, list[Any]], str | None]


def string(value: Any, where: str, field: str = "messages", optional: bool = False) -> str:
    """A string field of the request (``messages[2].content``), with no NUL character in it;
    ``optional``: None is ""."""
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise UsageError(f"{where} must be a string", field)
    if "\x00" in value:
        raise UsageError(f"{where} contains a NUL character", field)
    return value


def content_text(
    content: Any,
    where: str,
    parts: str,
    read: PartReader,
    images: list[Any],
    field: str = "messages",
    optional: bool = False,
) -> str:
    """``content``: a string, or an array of ``parts`` that ``read`` reads, their texts joined by
    newlines; checked by :func:`string` either way (``optional``: None is "")."""
    if isinstance(content, list):
        texts = [t for j, part in enumerate(content) if (t := read(part, f"{where}[{j}]", images)) is not None]
        content = "\n".join(texts)
    elif not isinstance(content, str) and not (content is None and optional):
        raise UsageError(f"{where} must be a string or an array of {parts}", field)
    return string(content, where, field, optional)


def objects(raw: list[Any], name: str, shape: str, field: str = "messages") -> Iterator[tuple[str, dict[str, Any]]]:
    """The items of the array ``name`` with where each is (``messages[2]``); each must be an object (``shape``)."""
    for i, item in enumerate(raw):
        where = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise UsageError(f"{where} must be {shape}", field)
        yield where, item


def role(item: Any, where: str, roles: Mapping[str, str], says: str | None = None, field: str = "messages") -> str:
    """An item's ``role``, as the engine names it (``roles``: the wire's role -> the engine's);
    another value, or an item that is no object, is refused, ``says`` (or the roles) naming those accepted."""
    value = item.get("role") if isinstance(item, dict) else None
    found = roles.get(value) if isinstance(value, str) else None
    if found is None:
        raise UsageError(f"{where}.role must be {says or 'one of ' + ', '.join(roles)}", field)
    return found


def required_str(item: dict[str, Any], key: str, where: str, what: str, field: str = "messages") -> str:
    """A string field ``what`` needs (a tool call's name, a tool result's call id); missing or "" is refused."""
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}.{key} is required for {what}", field)
    return value


def chat_tools(
    item: dict[str, Any],
    where: str,
    message: Message,
    shape: str,
    names: Iterable[str] = ("name",),
    id_required: bool = False,
) -> None:
    """The tool bookkeeping of an Ollama or OpenAI chat message: an assistant's ``tool_calls``
    (each of ``shape``); a tool message's ``tool_call_id`` (``id_required``: it must have one)
    and its tool's name, the first of the fields ``names`` given."""
    if message.role == "tool" or item.get("tool_calls"):
        message.tool_calls = check_calls(item.get("tool_calls"), where, shape)
    if message.role != "tool":
        return
    message.tool_call_id = optional_str(item, "tool_call_id", where)
    for key in names:
        message.tool_name = optional_str(item, key, where)
        if message.tool_name:
            break
    if id_required and not message.tool_call_id:
        raise UsageError(f"{where}.tool_call_id is required for a tool message", "messages")


@dataclasses.dataclass(slots=True)
class Turns:
    """The engine Messages a converter makes, and the images (still raw) each carries, in order."""

    messages: list[Message] = dataclasses.field(default_factory=list)
    images: list[tuple[Message, Any]] = dataclasses.field(default_factory=list)

    def add(self, message: Message, images: Iterable[Any] = ()) -> None:
        self.messages.append(message)
        self.images.extend((message, image) for image in images)

    def result(self) -> tuple[list[Message], list[tuple[Message, Any]]]:
        return self.messages, self.images
