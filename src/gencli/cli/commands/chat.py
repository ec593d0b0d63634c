"""gencli chat: a conversation at a prompt, like ``ollama run`` without a prompt.

On a terminal (stdin and stdout both): a ``>>>`` prompt with line editing and a history
kept across sessions (GNU readline; the history file is in the XDG state directory), each
answer streamed by the same live renderer as ``generate``, multi-line input between
triple quotes, slash commands, Ctrl-C to stop an answer (the session goes on), Ctrl-D or
/bye to leave. Otherwise each line of stdin is one turn and only the answers are printed
(slash commands work too; what they say goes to stderr), for scripts.

Each answered turn keeps the conversation (``last``, ``--conversation NAME`` or the
``--context FILE``), so ``generate -c`` or ``chat -c`` carries on from it.
"""

from __future__ import annotations

import re
import shlex
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gencli.cli import state
from gencli.cli.pipes import decode_utf8, error, stdin_terminal, stdout_terminal, warning
from gencli.core.errors import GencliError, UsageError

if TYPE_CHECKING:
    from gencli.cli.turn import Composer, Runner, Thread, TurnOptions
    from gencli.config.registry import ModelEntry

PROMPT = ">>> "
MORE = "... "
QUOTES = '"""'

HELP = """\
Commands:
  /help, /?              this list
  /model NAME            switch to another model from the registry (the conversation goes on)
  /set system TEXT       set the system prompt (/unset system removes it)
  /set think on|off      ask the model to reason, or not (also low, medium, high; /unset think)
  /set temperature X     a sampling option; also top_p, top_k, num_predict, seed, stop, min_p,
                         presence_penalty, frequency_penalty, repeat_penalty (/unset NAME)
  /set verbose on|off    timing and token statistics after each answer
  /set usage on|off      the tokens (and cost) of each answer on stderr
  /edit [TEXT]           write the message in $VISUAL or $EDITOR (starting with TEXT)
  /show                  the model, the settings and the tokens used so far
  /save FILE             write the conversation to FILE (a --context file)
  /load FILE             continue the conversation in FILE (from /save or --context)
  /clear                 forget the conversation (the settings stay)
  /bye                   leave (also Ctrl-D)

Type \"\"\" to start and end a message of several lines. Ctrl-C stops an answer."""

COMMANDS = ("/help", "/?", "/model", "/set", "/unset", "/show", "/edit", "/save", "/load", "/clear", "/bye")
TAKES_ARGUMENT = ("/model", "/set", "/unset", "/save", "/load")
SET_NAMES = (
    "system",
    "think",
    "verbose",
    "usage",
    "temperature",
    "top_p",
    "top_k",
    "num_predict",
    "seed",
    "stop",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
)
ALIASES = {
    "top-p": "top_p",
    "top-k": "top_k",
    "num-predict": "num_predict",
    "max_tokens": "num_predict",
    "max-tokens": "num_predict",
    "min-p": "min_p",
    "presence-penalty": "presence_penalty",
    "frequency-penalty": "frequency_penalty",
    "repeat-penalty": "repeat_penalty",
}
THINK: dict[str, bool | str] = {
    "on": True,
    "true": True,
    "off": False,
    "false": False,
    "low": "low",
    "medium": "medium",
    "high": "high",
}
_INT = re.compile(r"^[+-]?\d+$")


class Quit(Exception):
    """/bye."""


class Chat:
    def __init__(
        self,
        runner: Runner,
        thread: Thread,
        model: str | None,
        system: str | None,
        options: dict[str, Any],
        think: bool | str | None,
        hide_reasoning: bool,
        verbose: bool,
        interactive: bool,
        options_in: TurnOptions | None = None,
        composer: Composer | None = None,
        fragments: list[str] | None = None,
    ):
        from gencli.cli.turn import TurnOptions

        self.opts = options_in or TurnOptions()
        self.composer = composer
        self.fragments = fragments or []  # added to the first message
        self.runner = runner
        self.registry = runner.registry
        self.thread = thread
        self.entry = self._pick(model)
        self.system = system
        self.options = options
        self.think = think
        self.hide_reasoning = hide_reasoning
        self.verbose = verbose
        self.interactive = interactive
        self.prompt_tokens = 0
        self.answer_tokens = 0
        self.failed = 0

    def _pick(self, name: str | None) -> ModelEntry:
        entry = self.registry.resolve(name)
        self.registry.key(entry)  # a missing key is said now, not after the first message
        return entry

    def say(self, text: str) -> None:
        """What a command answers: the terminal, or stderr when stdout carries only answers."""
        out = sys.stdout if self.interactive else sys.stderr
        out.write(text + "\n")
        out.flush()

    # -- a turn ------------------------------------------------------------------
    def turn(self, text: str) -> None:
        from gencli.cli.turn import after_turn, make_renderer
        from gencli.core.request import GenerateRequest

        if self.fragments:
            from gencli.cli.fragments import join

            text, self.fragments = join(self.fragments, text), []
        if self.composer is not None:
            try:
                text = self.composer.prompt(text)
            except GencliError as exc:
                self.failed += 1
                error(str(exc))
                return
        req = GenerateRequest(
            model=self.entry.name,
            prompt=text,
            system=self.system,
            options=dict(self.options),
            think=self.think,
            context=self.thread.context,
            stream=True,
        )
        try:
            plan = self.runner.prepare(req)
            renderer = make_renderer(plan.entry.name, hide_reasoning=self.hide_reasoning)
            done = self.runner.run(plan, renderer)
        except KeyboardInterrupt:
            if not self.interactive:
                raise
            return  # the renderer kept what arrived and said "(interrupted)"; the session goes on
        except GencliError as exc:
            self.failed += 1
            error(str(exc))
            return
        if done is None:
            return
        self.prompt_tokens += done.prompt_eval_count or 0
        self.answer_tokens += done.eval_count or 0
        try:
            self.thread.keep(plan.entry.name, done.context)
        except GencliError as exc:
            self.failed += 1
            error(str(exc))
        if self.verbose:
            from gencli.cli.render import print_stats

            print_stats(done)
        after_turn(self.opts, plan, req, done, self.thread, "chat")

    # -- slash commands --------------------------------------------------------------
    def command(self, line: str) -> None:
        name, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        handler = {
            "/help": self.c_help,
            "/?": self.c_help,
            "/model": self.c_model,
            "/set": self.c_set,
            "/unset": self.c_unset,
            "/show": self.c_show,
            "/edit": self.c_edit,
            "/save": self.c_save,
            "/load": self.c_load,
            "/clear": self.c_clear,
            "/bye": self.c_bye,
            "/exit": self.c_bye,
            "/quit": self.c_bye,
        }.get(name.lower())
        if handler is None:
            raise UsageError(f"unknown command '{name}'; /help lists the commands")
        handler(rest)

    def c_help(self, rest: str) -> None:
        self.say(HELP)

    def c_bye(self, rest: str) -> None:
        raise Quit

    def c_model(self, rest: str) -> None:
        if not rest:
            ready = [
                e.name
                for e in self.registry.models.values()
                if self.registry.missing_key(e) is None and "completion" in e.capabilities
            ]
            self.say(f"model: {self.entry.name}; ready: {', '.join(ready) or 'none'} (/model NAME switches)")
            return
        self.entry = self._pick(rest)
        self.say(f"model: {self.entry.name}")

    def c_set(self, rest: str) -> None:
        key, _, value = rest.partition(" ")
        key = ALIASES.get(key.lower(), key.lower())
        value = value.strip()
        if not key:
            raise UsageError(f"/set what? one of: {', '.join(SET_NAMES)}")
        if key == "system":
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            if not value:
                raise UsageError("/set system TEXT: give the system prompt (/unset system removes it)")
            self.system = value
            self.say("system prompt set")
        elif key == "think":
            if value.lower() not in THINK:
                raise UsageError("/set think on|off (or low, medium, high)")
            self.think = THINK[value.lower()]
            self.say(f"think: {value.lower()}")
        elif key == "verbose":
            if value.lower() not in ("on", "off", "true", "false"):
                raise UsageError("/set verbose on|off")
            self.verbose = value.lower() in ("on", "true")
            self.say(f"verbose: {'on' if self.verbose else 'off'}")
        elif key == "usage":
            if value.lower() not in ("on", "off", "true", "false"):
                raise UsageError("/set usage on|off")
            self.opts = self.opts._replace(usage=value.lower() in ("on", "true"))
            self.say(f"usage: {'on' if self.opts.usage else 'off'}")
        elif key in SET_NAMES:
            self.options[key] = self._option(key, value)
            self.say(f"{key}: {_show_value(self.options[key])}")
        else:
            raise UsageError(f"/set {key}: unknown setting; one of: {', '.join(SET_NAMES)}")

    def _option(self, key: str, value: str) -> Any:
        from gencli.core import options

        if not value:
            raise UsageError(f"/set {key} VALUE: give a value (/unset {key} removes it)")
        if key == "stop":
            try:
                parsed: object = shlex.split(value)
            except ValueError as exc:
                raise UsageError(f"/set stop: {exc}") from None
        elif _INT.match(value):
            parsed = int(value)
        else:
            try:
                parsed = float(value)
            except ValueError:
                raise UsageError(f"/set {key}: '{value}' is not a number") from None
        checked, _ = options.check({key: parsed}, options.KNOWN)  # the model's provider may take fewer
        if key not in checked:  # e.g. num_predict -1 means "no limit": the same as unset
            raise UsageError(f"/set {key} {value}: no effect; /unset {key} removes it")
        return checked[key]

    def c_unset(self, rest: str) -> None:
        key = ALIASES.get(rest.lower(), rest.lower())
        if key == "system":
            self.system = None
        elif key == "think":
            self.think = None
        elif key == "verbose":
            self.verbose = False
        elif key == "usage":
            self.opts = self.opts._replace(usage=False)
        elif key in SET_NAMES:
            self.options.pop(key, None)
        else:
            raise UsageError(f"/unset NAME: one of: {', '.join(SET_NAMES)}")
        self.say(f"{key}: unset")

    def c_show(self, rest: str) -> None:
        e = self.entry
        shown: dict[bool | str | None, str] = {True: "on", False: "off", None: "the model's default"}
        think = shown.get(self.think, str(self.think))
        options = " ".join(f"{k}={_show_value(v)}" for k, v in self.options.items()) or "the model's defaults"
        from gencli.cli.turn import count_turns

        where = self.thread.file or f"'{self.thread.name}' in {state.conversations_dir()}"
        turns = count_turns(self.thread.context)
        lines = [
            f"model         {e.name} ({e.provider}: {e.model or e.path or '-'})",
            f"system        {self.system if self.system is not None else '(none)'}",
            f"think         {think}",
            f"options       {options}",
            f"conversation  {turns} turn{'' if turns == 1 else 's'}, kept as {where}",
            f"tokens        {self.prompt_tokens} prompt, {self.answer_tokens} answer (this session)",
        ]
        self.say("\n".join(lines))

    def c_edit(self, rest: str) -> None:
        """/edit [TEXT]: the message from the editor; an empty buffer sends nothing."""
        from gencli.cli.editor import edit_prompt

        self.turn(edit_prompt(rest))

    def c_save(self, rest: str) -> None:
        from gencli.cli.turn import write_context

        if not rest:
            raise UsageError("/save FILE: name the file to write")
        if not self.thread.context:
            raise UsageError("/save: nothing to save yet (no answered turn)")
        write_context(rest, self.thread.context, "/save")
        self.say(f"saved the conversation to {rest}")

    def c_load(self, rest: str) -> None:
        from gencli.cli.turn import read_context
        from gencli.core import context as ctx

        if not rest:
            raise UsageError("/load FILE: name the file to read")
        from pathlib import Path

        if not Path(rest).is_file():
            raise UsageError(f"/load {rest}: no such file")
        context = read_context(rest, "/load")
        turns = sum(1 for m in ctx.decode(context) if m.role == "user")  # a damaged file is refused here
        self.thread.context = context or None
        if self.thread.file is None:
            self.thread.id = state.new_id()
        self.say(f"loaded {turns} turns from {rest}")

    def c_clear(self, rest: str) -> None:
        self.thread.context = None
        if self.thread.file is None:
            self.thread.id = state.new_id()  # a new conversation in the log
        self.say("the conversation is cleared")


def _show_value(v: object) -> str:
    if isinstance(v, list):
        return " ".join(shlex.quote(s) for s in v)
    return repr(v) if isinstance(v, str) else str(v)


# -- reading input -----------------------------------------------------------------


def gather(first: str, more: Callable[[], str]) -> str:
    """A message: one line, or the lines between triple quotes (``more()`` reads the next
    line; EOFError there ends the message with what was read)."""
    if not first.lstrip().startswith(QUOTES):
        return first
    body = first.lstrip()[3:]
    if body.rstrip().endswith(QUOTES) and body.strip():
        return body.rstrip()[:-3]
    lines = [body] if body.strip() else []
    while True:
        try:
            line = more()
        except EOFError:
            break
        if line.rstrip().endswith(QUOTES):
            last = line.rstrip()[:-3]
            if last:
                lines.append(last)
            break
        lines.append(line)
    return "\n".join(lines)


class Terminal:
    """The prompt: GNU readline with a history file and Tab completion of commands and names."""

    def __init__(self, chat: Chat):
        import readline

        self.readline = readline
        self.chat = chat
        self.history = state.history_file()
        self.warned = False
        try:
            readline.read_history_file(self.history)
        except (FileNotFoundError, OSError):
            pass
        readline.set_history_length(2000)
        readline.set_completer_delims(" \t\n")
        readline.set_completer(self.complete)
        readline.parse_and_bind("tab: complete")

    def complete(self, text: str, index: int) -> str | None:
        """Tab: commands, then model names after /model and settings after /set. (Python's
        readline appends nothing to a completion: the space after a word is added here.)"""
        line = self.readline.get_line_buffer().lstrip()
        if " " not in line:
            options = [c + (" " if c in TAKES_ARGUMENT else "") for c in COMMANDS if c.startswith(text)]
        elif line.startswith("/model "):
            options = [n for n in self.chat.registry.models if n.startswith(text)]
        elif line.startswith(("/set ", "/unset ")) and line.count(" ") == 1:
            options = [n + (" " if line.startswith("/set ") else "") for n in SET_NAMES if n.startswith(text)]
        else:
            options = []
        return options[index] if index < len(options) else None

    def read(self, prompt: str) -> str:
        return input(prompt)

    def remember(self) -> None:
        try:
            state.make_private_dir(state.state_dir())
            self.readline.write_history_file(self.history)
        except (OSError, GencliError) as exc:
            if not self.warned:
                self.warned = True
                warning(f"cannot keep the prompt history ({exc})")


def preload(local: bool) -> threading.Thread:
    """Import what the first answer needs while the person types (the prompt shows first)."""

    def work() -> None:
        try:
            import gencli.cli.render_rich  # noqa: F401
            import gencli.engine  # noqa: F401

            if not local:
                import gencli.transports.cli  # noqa: F401
        except Exception:  # the turn itself will import and report
            pass

    t = threading.Thread(target=work, name="gencli-preload", daemon=True)
    t.start()
    return t


def interactive_loop(chat: Chat) -> int:
    term = Terminal(chat)
    out = sys.stdout
    out.write(
        f'gencli chat with {chat.entry.name}: /help for commands, """ for several lines, Ctrl-D or /bye to leave\n'
    )
    out.flush()
    loading = preload(chat.entry.provider == "local")
    try:
        while True:
            try:
                line = term.read(PROMPT)
                text = gather(line, lambda: term.read(MORE))
            except KeyboardInterrupt:
                out.write("\n(Ctrl-D or /bye to leave)\n")
                out.flush()
                continue
            except EOFError:
                out.write("\n")
                out.flush()
                return 0
            term.remember()
            if not text.strip():
                continue
            if text.lstrip().startswith("/") and not line.lstrip().startswith(QUOTES):
                try:
                    chat.command(text)
                except Quit:
                    return 0
                except GencliError as exc:
                    error(str(exc))
                continue
            chat.turn(text)
    finally:
        loading.join(timeout=5)


def piped_loop(chat: Chat) -> int:
    """Each line of stdin is a turn; stdout gets only the answers."""
    stream = sys.stdin.buffer
    number = 0

    def next_line() -> str:
        nonlocal number
        raw = stream.readline()
        if not raw:
            raise EOFError
        number += 1
        return decode_utf8(raw, f"stdin line {number}").rstrip("\r\n")

    while True:
        try:
            first = next_line()
        except EOFError:
            break
        text = gather(first, next_line)
        if not text.strip():
            continue
        if text.lstrip().startswith("/") and not first.lstrip().startswith(QUOTES):
            try:
                chat.command(text)
            except Quit:
                break
            except GencliError as exc:
                chat.failed += 1
                error(str(exc))
            continue
        chat.turn(text)
    return 1 if chat.failed else 0


def run(hide_reasoning: bool, turn: TurnOptions) -> None:
    from gencli.cli.turn import Composer

    if "-" in (turn.fragments or ()):
        raise UsageError("chat reads its messages from stdin; -f - cannot read it too (give a file)")
    composer = Composer(turn)
    fragments: list[str] = []
    if turn.fragments:
        from gencli.cli.fragments import read_all

        fragments = read_all(turn.fragments, turn.allow_private_fragments)
    thread = turn.thread()
    runner = turn.runner()
    interactive = stdin_terminal() and stdout_terminal()
    chat = Chat(
        runner,
        thread,
        composer.model(),
        composer.system(),
        composer.options(),
        turn.think,
        hide_reasoning,
        turn.verbose,
        interactive,
        turn,
        composer if composer.template is not None else None,
        fragments,
    )
    try:
        code = interactive_loop(chat) if interactive else piped_loop(chat)
    except KeyboardInterrupt:
        code = 130
    finally:
        runner.close()
    sys.exit(code)
