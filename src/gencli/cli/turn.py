"""One turn of a conversation, shared by ``gencli generate`` and ``gencli chat``: the
request's inputs (images, --format, context files), the conversation it continues and
keeps (``--context FILE``, ``--conversation NAME``, ``-c``, else the unnamed ``last``), the
renderer for this output, and the engine run itself over one kept httpx transport."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from gencli.cli import state
from gencli.cli.pipes import stdout_terminal, warning
from gencli.core.errors import GencliError, UsageError

if TYPE_CHECKING:
    from gencli.cli.render import Renderer
    from gencli.config.registry import ModelEntry
    from gencli.core.events import Done
    from gencli.core.request import Format, GenerateRequest
    from gencli.engine import Plan
    from gencli.transports.cli import HttpxTransport

# -- request inputs ----------------------------------------------------------------


def sampling_options(
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    num_predict: int | None = None,
    seed: int | None = None,
    stop: list[str] | None = None,
) -> dict[str, Any]:
    options: dict[str, Any] = {
        k: v
        for k, v in (
            ("temperature", temperature),
            ("top_p", top_p),
            ("top_k", top_k),
            ("num_predict", num_predict),
            ("seed", seed),
        )
        if v is not None
    }
    if stop:
        options["stop"] = list(stop)
    return options


def read_images(values: list[str] | tuple[str, ...] | None) -> list[str | bytes]:
    """Each ``--image``: a URL as it is, else the file's bytes."""
    from gencli.core.images import is_url

    out: list[str | bytes] = []
    for value in values or ():
        if is_url(value):
            out.append(value)
            continue
        try:
            out.append(Path(value).read_bytes())
        except FileNotFoundError:
            raise UsageError(f"image {value}: no such file") from None
        except OSError as exc:
            raise UsageError(f"image {value}: cannot read it ({exc.strerror})") from None
    return out


def read_format(fmt: str | None) -> Format | None:
    if fmt is None or fmt == "json":
        return fmt
    try:
        schema = json.loads(Path(fmt).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--format: '{fmt}' is neither 'json' nor a schema file that exists") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--format: {fmt} is not a JSON schema file ({exc})") from None
    if not isinstance(schema, dict):
        raise UsageError(f"--format: {fmt} must hold a JSON object (a JSON schema)")
    return schema


def read_context(path: str | None, flag: str = "--context") -> list[int] | None:
    """The context array in a conversation file (None: a new conversation)."""
    if not path:
        return None
    p = Path(path)
    if not p.parent.is_dir():  # refuse before spending a call whose context could not be saved
        raise UsageError(f"{flag} {path}: the directory {p.parent} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None  # a new conversation
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{flag} {path}: cannot read it ({exc})") from None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError:
        raise UsageError(f"{flag} {path}: not a gencli context file (invalid JSON)") from None
    if isinstance(data, dict):
        data = data.get("context")
    if not isinstance(data, list):
        raise UsageError(f"{flag} {path}: not a gencli context file (expected a JSON array)")
    return data


def write_context(path: str, context: list[int], flag: str = "--context") -> None:
    tmp = Path(path + ".tmp")
    try:
        tmp.write_text(json.dumps(context, separators=(",", ":")) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise GencliError(f"{flag} {path}: cannot save the conversation ({exc.strerror or exc})") from None


def count_turns(context: list[int] | None) -> int:
    """User turns in a context array (0 for none or one that cannot be read)."""
    if not context:
        return 0
    from gencli.core import context as ctx

    try:
        return sum(1 for m in ctx.decode(context) if m.role == "user")
    except GencliError:
        return 0


class TurnOptions(NamedTuple):
    """The options ``gencli generate`` and ``gencli chat`` share, declared once in
    ``gencli.cli.app`` (``TURN_BEFORE``, ``TURN_AFTER``): the model, the sampling, the
    conversation a turn continues and the upstream's timeout and retries. (A NamedTuple:
    cheaper to define than a dataclass on the CLI's start-up path.)"""

    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    num_predict: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    think: bool | None = None
    verbose: bool = False
    context_file: Path | str | None = None
    cont: bool = False
    conversation: str | None = None
    timeout: float | None = None
    retries: int | None = None
    models_path: str | None = None
    template: str | None = None
    params: list[tuple[str, str]] | None = None
    fragments: list[str] | None = None
    allow_private_fragments: bool = False
    usage: bool = False
    no_log: bool = False

    def sampling(self) -> dict[str, Any]:
        return sampling_options(self.temperature, self.top_p, self.top_k, self.num_predict, self.seed, self.stop)

    def thread(self) -> Thread:
        return Thread.open(str(self.context_file) if self.context_file else None, self.cont, self.conversation)

    def runner(self) -> Runner:
        return Runner(self.models_path, self.timeout, self.retries)


# -- templates, the log and usage ------------------------------------------------------


class Composer:
    """What a template (``-t NAME``, ``-p KEY VALUE``) makes of a turn: the model, the system
    prompt, the options and, for each message, the prompt."""

    def __init__(self, turn: TurnOptions):
        self.turn = turn
        self.params = dict(turn.params or ())
        self.template = None
        if turn.template:
            from gencli.cli import templates  # only with -t (its YAML or TOML reader too)

            self.template = templates.load(turn.template)
        if self.template is None and self.params:
            raise UsageError("-p KEY VALUE sets a template's parameter; name the template with -t NAME")
        if self.template is not None:
            unused = self.template.unused(self.params)
            if unused:
                raise UsageError(
                    f"-p {unused[0]}: template '{self.template.name}' has no ${unused[0]} "
                    f"(see gencli templates show {self.template.name})"
                )

    @property
    def takes_empty_input(self) -> bool:
        return self.template is not None and self.template.prompt is not None

    def model(self) -> str | None:
        return self.turn.model or (self.template.model if self.template else None)

    def system(self) -> str | None:
        if self.turn.system is not None or self.template is None:
            return self.turn.system
        return self.template.render_system(self.params)

    def options(self) -> dict[str, Any]:
        base = dict(self.template.options) if self.template else {}
        return {**base, **self.turn.sampling()}

    def prompt(self, text: str) -> str:
        return self.template.render(text, self.params) if self.template else text


def cost(entry: ModelEntry, prompt_tokens: int | None, answer_tokens: int | None) -> float | None:
    """The turn's cost in dollars from models.json's ``prices`` (per million tokens): only
    when both prices are given and the upstream reported both counts."""
    prices = entry.prices
    if "input" not in prices or "output" not in prices or prompt_tokens is None or answer_tokens is None:
        return None
    return (prompt_tokens * prices["input"] + answer_tokens * prices["output"]) / 1_000_000


def after_turn(turn: TurnOptions, plan: Any, req: Any, done: Any, thread: Thread, command: str) -> None:
    """-u/--usage on stderr, then the log (unless --no-log; a problem there is a warning)."""
    spent = cost(plan.entry, done.prompt_eval_count, done.eval_count)
    if turn.usage:
        from gencli.cli.render import print_usage

        print_usage(done, spent)
    if turn.no_log or state.logs_off_file().exists():  # checked without importing sqlite3
        return
    from gencli.cli import logdb  # sqlite3: imported only to write

    options = dict(req.options or {})
    if req.think is not None:
        options["think"] = req.think
    logdb.record(
        logdb.Entry(
            model=plan.entry.name,
            prompt=req.prompt,
            answer=done.text,
            system=req.system,
            reasoning=done.reasoning,
            options=options,
            prompt_tokens=done.prompt_eval_count,
            answer_tokens=done.eval_count,
            reasoning_tokens=done.reasoning_count,
            cost=spent,
            duration_ms=round(done.total_duration / 1e6) if done.total_duration else None,
            conversation=thread.label or None,
            conversation_id=thread.id,
            command=command,
            template=turn.template,
        )
    )


# -- the conversation a turn continues and keeps -------------------------------------


@dataclass(slots=True)
class Thread:
    """Where the conversation comes from and goes to: a --context file, or a kept
    conversation in the state directory (``name``)."""

    context: list[int] | None
    file: str | None = None
    name: str | None = None
    explicit: bool = False  # the user asked for it: failing to keep it is an error, not a warning
    id: str | None = None  # the conversation's id in the log (a kept conversation's; None for a --context file)

    @classmethod
    def open(cls, context_file: str | None = None, cont: bool = False, name: str | None = None) -> Thread:
        if context_file and (cont or name):
            raise UsageError(
                "--context FILE cannot be combined with -c/--continue or --conversation "
                "(use one way to continue a conversation)"
            )
        if context_file:
            return cls(read_context(context_file), file=context_file, explicit=True)
        if name is not None:
            state.check_name(name)
            conv = state.load(name)
            if conv is None:
                return cls(None, name=name, explicit=True, id=state.new_id())
            return cls(_checked(conv), name=name, explicit=True, id=conv.id or state.new_id())
        if cont:
            conv = state.latest()
            if conv is not None:
                return cls(
                    _checked(conv), name=conv.name, explicit=conv.name != state.LAST, id=conv.id or state.new_id()
                )
        return cls(None, name=state.LAST, id=state.new_id())

    @property
    def label(self) -> str:
        """What the log calls this conversation: its name, or the --context file."""
        return self.file or self.name or ""

    def keep(self, model: str, context: list[int]) -> None:
        """Save the conversation after a turn (the context array holds all of it)."""
        self.context = context
        if self.file:
            write_context(self.file, context)
            return
        assert self.name is not None
        try:
            state.save(self.name, model, context, count_turns(context), self.id)
        except state.StateError as exc:
            if self.explicit:
                raise
            warning(f"{exc} (-c/--continue will not find this conversation)")


def _checked(conv: state.Conversation) -> list[int]:
    """A kept conversation's context, refused with the way out if it cannot be read."""
    from gencli.core import context as ctx

    try:
        ctx.decode(conv.context)
    except GencliError as exc:
        raise UsageError(
            f"the kept conversation '{conv.name}' ({conv.path}) cannot be continued: {exc}; "
            f"remove it with: gencli conversations --delete {conv.name}"
        ) from None
    return conv.context


# -- renderers and the engine run -------------------------------------------------


def make_renderer(
    model: str,
    as_json: bool = False,
    hide_reasoning: bool = False,
    stream: bool = True,
    extract: bool = False,
    extract_last: bool = False,
) -> Renderer:
    from gencli.cli import render

    if as_json:
        return render.JsonRenderer(model, stream)
    if extract or extract_last:
        return render.ExtractRenderer(hide_reasoning, last=extract_last)
    if stdout_terminal():
        from gencli.cli.render_rich import RichRenderer

        return RichRenderer(hide_reasoning)
    return render.PlainRenderer(hide_reasoning)


class Runner:
    """Runs turns against one registry; keeps one httpx transport per upstream so that the
    turns of a chat reuse their connection. Local models run in-process (no transport:
    importing httpx costs ~0.1 s)."""

    def __init__(self, models_path: str | None, timeout: float | None = None, retries: int | None = None):
        from gencli.config.registry import Registry
        from gencli.config.settings import Settings

        self.registry = Registry.load(settings=Settings.load(models_path=models_path))
        self.timeout = timeout
        self.retries = retries
        self._transport: HttpxTransport | None = None
        self._transport_key: tuple[float | None, bool] | None = None

    def prepare(self, req: GenerateRequest) -> Plan:
        from gencli import engine

        return engine.prepare(req, self.registry, timeout=self.timeout, retries=self.retries)  # flags first

    def transport_for(self, plan: Plan) -> HttpxTransport | None:
        """The httpx transport for the plan's upstream (kept while its timeout and TLS stay the
        same); None for a local model, which runs in-process."""
        if plan.call.local is not None:
            return None
        timeout = plan.call.timeout
        tls = not plan.call.base_url.startswith("http://")
        key = (timeout, tls)
        if self._transport is None or self._transport_key != key:
            self.close()
            from gencli.transports.cli import HttpxTransport

            self._transport = HttpxTransport(timeout=timeout, tls=tls)
            self._transport_key = key
        return self._transport

    def run(self, plan: Plan, renderer: Renderer) -> Done | None:
        """Render one turn; returns the Done event (None if the upstream sent none).
        Ctrl-C: the renderer keeps what arrived and KeyboardInterrupt propagates; an error:
        the same, and the GencliError propagates."""
        from gencli import engine

        transport = self.transport_for(plan)
        done: Done | None = None
        events = engine.execute(plan, transport, transport)
        try:
            for event in events:
                done = renderer.event(event) or done
        except KeyboardInterrupt:
            events.close()
            renderer.interrupted()
            raise
        except GencliError:
            renderer.failed()
            raise
        finally:
            events.close()
        renderer.finish()
        return done

    def close(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.close()
