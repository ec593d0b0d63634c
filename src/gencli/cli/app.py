"""The ``gencli`` command line on Typer: typed commands whose options are grouped in help
panels (model, sampling, output, conversation, network), shell completion (model and
conversation names come from the registry and the state directory), and ``main``, which
turns every error into one line on stderr and the documented exit code.

Commands stay thin: each declares its options here and calls ``run`` in its module under
``gencli.cli.commands``, imported only when that command runs (start-up is benchmarked).
The command modules import nothing from each other or from this module.
"""

import functools
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer

from gencli import __version__
from gencli.config.servesettings import BY_FIELD, NETWORK, SERVE, SERVER, Setting

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

MODEL, SAMPLING, OUTPUT, CONVERSATION = "Model", "Sampling", "Output", "Conversation"
INPUT = "Input"
# NETWORK and SERVER (and serve's LIMITS) come with serve's table (gencli.config.servesettings)

app = typer.Typer(
    name="gencli",
    context_settings=CONTEXT_SETTINGS,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=True,
)


# -- completion of values ---------------------------------------------------------------


def complete_model(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """-m: the registry's model names (runs only when the shell asks)."""
    from gencli.config.registry import Registry
    from gencli.core.errors import GencliError

    try:
        registry = Registry.load(ctx.params.get("models_path"))
    except GencliError:
        return []
    return [
        (name, entry.description or entry.provider)
        for name, entry in registry.models.items()
        if name.startswith(incomplete)
    ]


def complete_conversation(incomplete: str) -> list[tuple[str, str]]:
    """--conversation and --delete: the kept conversations."""
    from gencli.cli import state
    from gencli.core.errors import GencliError

    try:
        found = state.listing()
    except GencliError:
        return []
    return [(c.name, f"{c.model}, {c.turns} turns") for c in found if c.name.startswith(incomplete)]


def complete_template(incomplete: str) -> list[str]:
    """-t and 'templates show/edit': the saved templates."""
    from gencli.cli import templates
    from gencli.core.errors import GencliError

    try:
        return [name for name, _ in templates.names() if name.startswith(incomplete)]
    except GencliError:
        return []


def _positive(value: Optional[float]) -> Optional[float]:
    if value is not None and value <= 0:
        raise typer.BadParameter(f"{value:g} is not above 0.")
    return value


# -- options shared by commands ---------------------------------------------------------

ModelsPath = Annotated[
    Optional[str],
    typer.Option(
        "--models",
        metavar="PATH",
        envvar="GENCLI_MODELS",
        show_envvar=False,
        rich_help_panel=MODEL,
        help="models.json to use (default: ./models.json, then $XDG_CONFIG_HOME/gencli/models.json, then the "
        "built-ins).",
    ),
]
Model = Annotated[
    Optional[str],
    typer.Option(
        "-m",
        "--model",
        metavar="NAME",
        autocompletion=complete_model,
        rich_help_panel=MODEL,
        help='Model name from the registry (default: $GENCLI_MODEL, models.json\'s "default", else the first '
        "model with a key, else the local smollm2).",
    ),
]
System = Annotated[
    Optional[str], typer.Option("-s", "--system", metavar="TEXT", rich_help_panel=MODEL, help="System prompt.")
]
Think = Annotated[
    Optional[bool],
    typer.Option(
        "--think/--no-think",
        rich_help_panel=MODEL,
        show_default=False,
        help="Ask the model to reason, or not (default: the model's own).",
    ),
]
Temperature = Annotated[
    Optional[float],
    typer.Option(
        "--temperature", min=0, max=2, metavar="FLOAT", rich_help_panel=SAMPLING, help="Sampling temperature (0-2)."
    ),
]
TopP = Annotated[
    Optional[float],
    typer.Option("--top-p", min=0, max=1, metavar="FLOAT", rich_help_panel=SAMPLING, help="Nucleus sampling (0-1)."),
]
TopK = Annotated[
    Optional[int],
    typer.Option(
        "--top-k", min=0, metavar="INT", rich_help_panel=SAMPLING, help="Top-k sampling, where the provider has it."
    ),
]
NumPredict = Annotated[
    Optional[int],
    typer.Option(
        "--num-predict",
        "--max-tokens",
        min=1,
        metavar="INT",
        rich_help_panel=SAMPLING,
        help="Maximum number of tokens to generate.",
    ),
]
Stop = Annotated[
    Optional[list[str]],
    typer.Option(
        "--stop", metavar="TEXT", rich_help_panel=SAMPLING, show_default=False, help="Stop sequence (repeatable)."
    ),
]
Seed = Annotated[
    Optional[int],
    typer.Option("--seed", metavar="INT", rich_help_panel=SAMPLING, help="Random seed, where the provider has it."),
]
HideReasoning = Annotated[
    bool, typer.Option("--hide-reasoning", rich_help_panel=OUTPUT, help="Do not show the reasoning chain.")
]
Verbose = Annotated[
    bool, typer.Option("-v", "--verbose", rich_help_panel=OUTPUT, help="Print timing and token statistics on stderr.")
]
ContextFile = Annotated[
    Optional[Path],
    typer.Option(
        "--context",
        metavar="FILE",
        dir_okay=False,
        rich_help_panel=CONVERSATION,
        help="Conversation file: read before, written after, to continue a conversation.",
    ),
]
Continue = Annotated[
    bool,
    typer.Option(
        "-c",
        "--continue",
        rich_help_panel=CONVERSATION,
        help="Continue the last conversation (the one 'gencli conversations' marks).",
    ),
]
Conversation = Annotated[
    Optional[str],
    typer.Option(
        "--conversation",
        metavar="NAME",
        autocompletion=complete_conversation,
        rich_help_panel=CONVERSATION,
        help="Continue the conversation kept as NAME, or start it (see 'gencli conversations').",
    ),
]
Timeout = Annotated[
    Optional[float],
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        callback=_positive,
        rich_help_panel=NETWORK,
        help='Give up when the upstream sends nothing for this long (default: the model\'s "timeout" in '
        "models.json, else $GENCLI_TIMEOUT, else 300; connecting: at most 10).",
    ),
]
Retries = Annotated[
    Optional[int],
    typer.Option(
        "--retries",
        min=0,
        max=10,
        metavar="N",
        rich_help_panel=NETWORK,
        help="Retries of a request that fails before any output (connection refused or reset, HTTP 408, 429, "
        '5xx), with backoff (default: the model\'s "retries", else $GENCLI_RETRIES, else 2).',
    ),
]
Template = Annotated[
    Optional[str],
    typer.Option(
        "-t",
        "--template",
        metavar="NAME",
        autocompletion=complete_template,
        rich_help_panel=INPUT,
        help="Use the saved template NAME: its system prompt, prompt ($input is yours), model and options "
        "(see 'gencli templates').",
    ),
]
Params = Annotated[
    Optional[list[str]],  # pairs: Typer takes no list of tuples, click's Tuple type gives them
    typer.Option(
        "-p",
        "--param",
        click_type=click.Tuple([str, str]),
        metavar="KEY VALUE",
        rich_help_panel=INPUT,
        show_default=False,
        help="A template parameter: $KEY in the template becomes VALUE (repeatable).",
    ),
]
Fragments = Annotated[
    Optional[list[str]],
    typer.Option(
        "-f",
        "--fragment",
        metavar="PATH|URL|-",
        rich_help_panel=INPUT,
        show_default=False,
        help="Add a text file's, a web page's or stdin's text before the prompt (repeatable; at most 1 MiB of "
        "UTF-8 text each; URLs from public addresses only).",
    ),
]
AllowPrivateFragments = Annotated[
    bool,
    typer.Option(
        "--allow-private-fragments",
        envvar="GENCLI_ALLOW_PRIVATE_FRAGMENTS",
        show_envvar=False,
        rich_help_panel=INPUT,
        help="Let -f URLs reach loopback, private and link-local addresses (also $GENCLI_ALLOW_PRIVATE_FRAGMENTS=1).",
    ),
]
Usage = Annotated[
    bool,
    typer.Option(
        "-u",
        "--usage",
        rich_help_panel=OUTPUT,
        help="Print the tokens in and out (and the cost, when models.json gives the model's prices) on stderr.",
    ),
]
NoLog = Annotated[
    bool,
    typer.Option(
        "--no-log",
        rich_help_panel=OUTPUT,
        help="Do not write this prompt and answer to the log (see 'gencli logs').",
    ),
]


# -- options added to a command from a table ---------------------------------------------

Row = tuple[str, Any, Any]  # an option: the parameter's name, its Annotated type, its default


def with_options(
    before: tuple[Row, ...] = (), after: tuple[Row, ...] = (), into: Optional[str] = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declare the options of ``before`` and ``after`` on a command, around its own parameters
    (Typer reads the signature; the order is the help panels' order). The command gets their
    values by name, or with ``into`` as one dict, the argument of that name."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        def option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
            return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(command).parameters.values()
            if p.name != into and p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        params = [*(option(*row) for row in before), *own, *(option(*row) for row in after)]
        added = [row[0] for row in (*before, *after)]

        @functools.wraps(command)
        def call(**values: Any) -> None:
            if into is not None:
                values[into] = {name: values.pop(name) for name in added}
            command(**values)

        call.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        call.__annotations__ = {p.name: p.annotation for p in params}
        return call

    return decorate


# The options 'generate' and 'chat' share (gencli.cli.turn.TurnOptions), in two runs: each
# command's own options stand between them, as they always have in the help panels.
TURN_BEFORE: tuple[Row, ...] = (
    ("model", Model, None),
    ("system", System, None),
    ("temperature", Temperature, None),
    ("top_p", TopP, None),
    ("top_k", TopK, None),
    ("num_predict", NumPredict, None),
    ("stop", Stop, None),
    ("seed", Seed, None),
)
TURN_AFTER: tuple[Row, ...] = (
    ("think", Think, None),
    ("template", Template, None),
    ("params", Params, None),
    ("fragments", Fragments, None),
    ("allow_private_fragments", AllowPrivateFragments, False),
    ("verbose", Verbose, False),
    ("usage", Usage, False),
    ("no_log", NoLog, False),
    ("context_file", ContextFile, None),
    ("cont", Continue, False),
    ("conversation", Conversation, None),
    ("timeout", Timeout, None),
    ("retries", Retries, None),
    ("models_path", ModelsPath, None),
)
turn_options = with_options(TURN_BEFORE, TURN_AFTER, into="turn")


def _call(run: Callable[..., None], **kw: Any) -> None:
    """Run a command's ``run(**kw)``; a closed stdout (``| head``) ends quietly."""
    try:
        run(**kw)
    except BrokenPipeError:
        # Handled here: Typer (like click) turns an EPIPE escaping a command into exit 1.
        from gencli.cli.pipes import quiet_pipe

        quiet_pipe()
        sys.exit(0)


# -- the commands ---------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"gencli {__version__}\n")
        raise typer.Exit()


@app.callback()
def gencli(
    version: Annotated[
        bool, typer.Option("-V", "--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Generate text with any model: OpenAI, Gemini, Claude, OpenRouter, any OpenAI-compatible server, or a
    local model. Models are named in models.json (see 'gencli models').

    **Examples:**

    `gencli generate "Why is the sky blue?"`\\
    `cat notes.txt | gencli generate -m gemini-2.5-flash "Summarise:"`\\
    `gencli generate -c "And in French?"   # continue the last conversation`\\
    `gencli chat -m gpt-4o-mini            # a conversation at a prompt`\\
    `gencli serve            # an Ollama-compatible server on 127.0.0.1:11434`

    'gencli COMMAND --help' shows a command's options.
    """


@app.command(context_settings=CONTEXT_SETTINGS)
@turn_options
def generate(
    prompt: Annotated[
        Optional[str],
        typer.Argument(metavar="PROMPT", show_default=False, help="The prompt ('-': read it from stdin)."),
    ] = None,
    images: Annotated[
        Optional[list[str]],
        typer.Option(
            "-i",
            "--image",
            metavar="PATH|URL",
            rich_help_panel=MODEL,
            show_default=False,
            help="Image file or http(s) URL (repeatable).",
        ),
    ] = None,
    fmt: Annotated[
        Optional[str],
        typer.Option(
            "--format",
            metavar="json|SCHEMA_FILE",
            rich_help_panel=OUTPUT,
            help="Structured output: 'json', or a file holding a JSON schema.",
        ),
    ] = None,
    hide_reasoning: HideReasoning = False,
    no_stream: Annotated[
        bool,
        typer.Option("--no-stream", rich_help_panel=OUTPUT, help="Wait for the whole answer instead of streaming it."),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            rich_help_panel=OUTPUT,
            help="Print the JSON (NDJSON when streaming) objects that /api/generate returns.",
        ),
    ] = False,
    extract: Annotated[
        bool,
        typer.Option(
            "-x",
            "--extract",
            rich_help_panel=OUTPUT,
            help="Print only the first fenced code block of the answer (all of it when it has none).",
        ),
    ] = False,
    extract_last: Annotated[
        bool,
        typer.Option(
            "--extract-last", rich_help_panel=OUTPUT, help="Print only the last fenced code block of the answer."
        ),
    ] = False,
    edit: Annotated[
        bool,
        typer.Option(
            "-e",
            "--edit",
            rich_help_panel=INPUT,
            help="Write the prompt in $VISUAL or $EDITOR (it starts with PROMPT; an empty buffer aborts, exit 1).",
        ),
    ] = False,
    *,
    turn: dict[str, Any],
) -> None:
    """Generate a completion for PROMPT.

    The prompt is the argument, stdin when stdin is piped, or both (the argument, a blank line, then stdin).
    '-' reads stdin. On a terminal the answer streams with live rendering; piped, stdout gets the answer
    alone as plain text and reasoning and diagnostics go to stderr.

    Each run keeps its conversation: -c continues the last one, --conversation NAME a named one. -f adds
    files, pages or stdin before the prompt, -t fills a saved template, -e writes the prompt in your editor.
    Each answer is logged (see 'gencli logs'; --no-log skips it).

    Exit codes: 0 ok, 1 generation or upstream error, 2 usage error, 130 interrupted.
    """
    from gencli.cli.commands.generate import run
    from gencli.cli.turn import TurnOptions

    _call(
        run,
        prompt=prompt,
        images=images,
        fmt=fmt,
        hide_reasoning=hide_reasoning,
        no_stream=no_stream,
        as_json=as_json,
        extract=extract,
        extract_last=extract_last,
        edit=edit,
        turn=TurnOptions(**turn),
    )


@app.command(context_settings=CONTEXT_SETTINGS)
@turn_options
def chat(hide_reasoning: HideReasoning = False, *, turn: dict[str, Any]) -> None:
    """Talk with a model at a prompt: each answer streams as in 'generate' and the conversation goes on.

    A line is a message; \"\"\" starts and ends one of several lines. /help lists the commands (/model,
    /set, /show, /edit, /save, /load, /clear, /bye). Ctrl-C stops an answer, Ctrl-D leaves. The prompt keeps a
    history across sessions and each turn keeps the conversation, as 'generate' does.

    With stdin not a terminal, each line is a turn and stdout gets only the answers (for scripts; exit
    code 1 when a turn failed).
    """
    from gencli.cli.commands.chat import run
    from gencli.cli.turn import TurnOptions

    _call(run, hide_reasoning=hide_reasoning, turn=TurnOptions(**turn))


@app.command(context_settings=CONTEXT_SETTINGS)
def conversations(
    delete: Annotated[
        Optional[str],
        typer.Option(
            "--delete", metavar="NAME", autocompletion=complete_conversation, help="Remove the conversation NAME."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the kept conversations (name, model, turns, last used), or remove one.

    'generate' and 'chat' keep each conversation in $XDG_STATE_HOME/gencli/conversations: the last one
    (-c continues it) and named ones (--conversation NAME).
    """
    from gencli.cli.commands.conversations import run

    _call(run, delete=delete, as_json=as_json)


def complete_logs_action(incomplete: str) -> list[tuple[str, str]]:
    from gencli.cli.commands.logs import ACTIONS

    return [(a, h) for a, h in ACTIONS.items() if a.startswith(incomplete)]


@app.command(context_settings=CONTEXT_SETTINGS)
def logs(
    action: Annotated[
        Optional[str],
        typer.Argument(
            metavar="[list|path|on|off]",
            autocompletion=complete_logs_action,
            show_default=False,
            help="list (the default), path: the database, off: stop logging, on: log again.",
        ),
    ] = None,
    count: Annotated[
        Optional[int],
        typer.Option(
            "-n", "--count", min=0, metavar="N", help="How many to show (default 3, all of a conversation; 0: all)."
        ),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option("-m", "--model", metavar="NAME", autocompletion=complete_model, help="Only this model's."),
    ] = None,
    query: Annotated[
        Optional[str],
        typer.Option(
            "-q",
            "--query",
            metavar="TEXT",
            help="Full-text search of prompts, system prompts and answers (every word).",
        ),
    ] = None,
    conversation: Annotated[
        Optional[str],
        typer.Option(
            "--conversation",
            metavar="NAME",
            autocompletion=complete_conversation,
            help="Only the conversation kept as NAME.",
        ),
    ] = None,
    cont: Annotated[
        bool, typer.Option("-c", "--continue", help="Only the last conversation (the one generate -c continues).")
    ] = False,
    usage: Annotated[
        bool, typer.Option("-u", "--usage", help="Tokens in and out (and cost, where priced) summed by model.")
    ] = False,
    since: Annotated[
        Optional[str],
        typer.Option("--since", metavar="PERIOD|DATE", help="Only what was logged since: 30m, 12h, 7d, 2w or a date."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the log of prompts and answers, search it, sum its usage, or turn it off and on.

    Every answer of 'generate' and 'chat' is logged (model, prompt, system prompt, answer, reasoning, options,
    tokens, cost, duration, conversation) in SQLite at $XDG_DATA_HOME/gencli/logs.db, unless --no-log is given
    or 'gencli logs off' was run.

    **Examples:**

    `gencli logs -n 10`\\
    `gencli logs -q "sky blue" -m gpt-4o-mini`\\
    `gencli logs -c                 # the last conversation`\\
    `gencli logs --usage --since 7d # tokens and cost by model`
    """
    from gencli.cli.commands.logs import run

    _call(
        run,
        action=action,
        count=count,
        as_json=as_json,
        model=model,
        query=query,
        conversation=conversation,
        cont=cont,
        usage=usage,
        since=since,
    )


def complete_templates_action(incomplete: str) -> list[tuple[str, str]]:
    from gencli.cli.commands.templates import ACTIONS

    return [(a, h) for a, h in ACTIONS.items() if a.startswith(incomplete)]


@app.command(context_settings=CONTEXT_SETTINGS)
def templates(
    action: Annotated[
        Optional[str],
        typer.Argument(
            metavar="[list|show|edit|path]",
            autocompletion=complete_templates_action,
            show_default=False,
            help="list (the default), show NAME, edit NAME (creates it), path: their folder.",
        ),
    ] = None,
    name: Annotated[
        Optional[str],
        typer.Argument(metavar="[NAME]", autocompletion=complete_template, show_default=False),
    ] = None,
) -> None:
    """List, show or edit the templates that -t NAME uses with 'generate' and 'chat'.

    A template is a file in $XDG_CONFIG_HOME/gencli/templates, NAME.yaml or NAME.toml, with any of: system (the
    system prompt), prompt ($input is what you give, $KEY a -p KEY VALUE parameter), defaults (parameters'
    values), model and options. 'edit' opens $VISUAL or $EDITOR on it.

    **Examples:**

    `gencli templates edit review`\\
    `git diff | gencli generate -t review -p language Go`
    """
    from gencli.cli.commands.templates import run

    _call(run, action=action, name=name)


@app.command(context_settings=CONTEXT_SETTINGS)
def embed(
    texts: Annotated[Optional[list[str]], typer.Argument(metavar="[TEXT]...", show_default=False)] = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            "-m",
            "--model",
            metavar="NAME",
            autocompletion=complete_model,
            rich_help_panel=MODEL,
            help="Embedding model from the registry (default: $GENCLI_EMBED_MODEL, else the first ready model "
            "with the 'embedding' capability).",
        ),
    ] = None,
    lines: Annotated[
        bool,
        typer.Option("--lines", help="Each non-blank line of stdin is one input (default: all of stdin is one input)."),
    ] = False,
    dimensions: Annotated[
        Optional[int],
        typer.Option(
            "--dimensions", min=1, metavar="INT", help="Ask for shorter vectors, where the model supports it."
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Print the model, vector count and size on stderr.")
    ] = False,
    models_path: ModelsPath = None,
) -> None:
    """Embed TEXT (each argument is one input) or piped stdin, and print the vectors.

    stdout gets one JSON array holding one vector (an array of numbers) per input, in input order, on one
    line. Vectors are L2-normalised (unit length), as Ollama's /api/embed returns them. '-' reads stdin
    alongside arguments.

    **Examples:**

    `gencli embed -m text-embedding-3-small "first text" "second text"`\\
    `cat sentences.txt | gencli embed --lines -m gemini-embedding-001`

    Exit codes: 0 ok, 1 upstream error, 2 usage error (e.g. a chat-only model).
    """
    from gencli.cli.commands.embed import run

    _call(
        run,
        texts=tuple(texts or ()),
        model=model,
        lines=lines,
        dimensions=dimensions,
        models_path=models_path,
        verbose=verbose,
    )


@app.command(context_settings=CONTEXT_SETTINGS)
def models(
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the registry as JSON, with each model's capabilities and context length."),
    ] = False,
    models_path: ModelsPath = None,
) -> None:
    """List the models in the registry and whether each is ready to use."""
    from gencli.cli.commands.models import run

    _call(run, as_json=as_json, models_path=models_path)


keys_app = typer.Typer(
    name="keys",
    context_settings=CONTEXT_SETTINGS,
    rich_markup_mode="markdown",
    no_args_is_help=True,
    help="Issue, list and revoke the keys people and tools send to 'gencli serve', each with its own models and "
    "limits.\n\nThe keys file (JSON Lines, one key a line, stored hashed) is $GENCLI_KEYS_FILE, else "
    "$XDG_CONFIG_HOME/gencli/keys.jsonl; a running server reads it again when it changes.",
)
app.add_typer(keys_app, name="keys")

KeysFile = Annotated[
    Optional[str],
    typer.Option(
        "--keys-file",
        metavar="PATH",
        show_default=False,
        help="The keys file (default: $GENCLI_KEYS_FILE, else $XDG_CONFIG_HOME/gencli/keys.jsonl).",
    ),
]


@keys_app.command("add", context_settings=CONTEXT_SETTINGS)
def keys_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Who or what the key is for (shown in logs).")],
    rpm: Annotated[
        Optional[int],
        typer.Option("--rpm", metavar="N", show_default=False, help="Requests per minute (default: no limit)."),
    ] = None,
    tpm: Annotated[
        Optional[int],
        typer.Option(
            "--tpm",
            metavar="N",
            show_default=False,
            help="Tokens (prompt + completion) per minute (default: no limit).",
        ),
    ] = None,
    models: Annotated[
        Optional[str],
        typer.Option(
            "--models", metavar="A,B", show_default=False, help="The models the key may use (default: every model)."
        ),
    ] = None,
    keys_file: KeysFile = None,
) -> None:
    """Add a key named NAME and print it (once: only its hash is kept).

    **Example:** `gencli keys add alice --rpm 60 --tpm 100000 --models gpt-4o-mini,claude-sonnet`
    """
    from gencli.cli.commands.keys import add

    _call(add, name=name, rpm=rpm, tpm=tpm, models=models, keys_file=keys_file)


@keys_app.command("list", context_settings=CONTEXT_SETTINGS)
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
    keys_file: KeysFile = None,
) -> None:
    """List the keys: name, id, limits, models, created (never the keys themselves)."""
    from gencli.cli.commands.keys import list_

    _call(list_, as_json=as_json, keys_file=keys_file)


@keys_app.command("revoke", context_settings=CONTEXT_SETTINGS)
def keys_revoke(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The key to remove.")],
    keys_file: KeysFile = None,
) -> None:
    """Remove the key NAME; a running server stops accepting it within a second or two."""
    from gencli.cli.commands.keys import revoke

    _call(revoke, name=name, keys_file=keys_file)


def _setting(row: Setting) -> Row:
    """A numeric serve setting, read as text: gencli.server.config validates it (range, no inf
    or nan) and names the flag or the environment variable in a one-line error (exit code 2)."""
    number = row.number
    option = typer.Option(
        number.flag,
        metavar=row.metavar,
        rich_help_panel=row.panel,
        show_default=False,
        help=f"{row.help} (default {number.default_text()}; also ${number.env}).",
    )
    return number.key, Annotated[Optional[str], option], None


# The numeric settings of 'gencli serve', in help order: the rows of the one table
# (gencli.config.servesettings.SERVE) the command does not declare itself.
SERVE_SETTINGS: tuple[Row, ...] = tuple(_setting(row) for row in SERVE if row.help)
_PORT, _WORKERS = (BY_FIELD[key].number.default_text() for key in ("port", "workers"))


@app.command(context_settings=CONTEXT_SETTINGS)
@with_options(after=(*SERVE_SETTINGS, ("models_path", ModelsPath, None)))
def serve(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            metavar="ADDR",
            rich_help_panel=NETWORK,
            help="Address to bind. Other than loopback, GENCLI_API_KEY must be set (or --insecure-no-auth).",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        Optional[str],
        typer.Option(
            "--port",
            metavar="PORT",
            rich_help_panel=NETWORK,
            show_default=False,
            help=f"Port to listen on (0: any free port; default {_PORT}).",
        ),
    ] = None,
    workers: Annotated[
        Optional[str],
        typer.Option(
            "--workers",
            metavar="N",
            rich_help_panel=SERVER,
            show_default=False,
            help=f"Worker processes sharing the port (default {_WORKERS}).",
        ),
    ] = None,
    allowed_origins: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allowed-origins",
            metavar="ORIGINS",
            rich_help_panel=NETWORK,
            show_default=False,
            help="Browser origins allowed besides localhost ones (comma-separated, repeatable; also $GENCLI_ORIGINS).",
        ),
    ] = None,
    allowed_hosts: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allowed-hosts",
            metavar="HOSTS",
            rich_help_panel=NETWORK,
            show_default=False,
            help="Host header values served on a loopback bind besides localhost, *.localhost, 127.0.0.1 and "
            "[::1] (comma-separated, repeatable, * wildcards; also $GENCLI_ALLOWED_HOSTS).",
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            rich_help_panel=NETWORK,
            help="Serve on a non-loopback address without GENCLI_API_KEY (anyone who can reach it can use your "
            "provider keys).",
        ),
    ] = False,
    keys_file: Annotated[
        Optional[str],
        typer.Option(
            "--keys-file",
            metavar="PATH",
            rich_help_panel=SERVER,
            show_default=False,
            help="Keys file of 'gencli keys' (default: $GENCLI_KEYS_FILE, else $XDG_CONFIG_HOME/gencli/keys.jsonl "
            "when it exists); with one, every request needs a key.",
        ),
    ] = None,
    redis: Annotated[
        Optional[str],
        typer.Option(
            "--redis",
            metavar="URL",
            rich_help_panel=SERVER,
            show_default=False,
            help="Count per-key limits and keep stored responses in Redis (redis://HOST:PORT/DB), shared by every "
            "replica (also $GENCLI_REDIS_URL).",
        ),
    ] = None,
    redis_fail: Annotated[
        Optional[str],
        typer.Option(
            "--redis-fail",
            metavar="open|closed",
            rich_help_panel=SERVER,
            show_default=False,
            help="While Redis is down: open admits requests without counting them, closed answers 503 (default "
            "open; also $GENCLI_REDIS_FAIL).",
        ),
    ] = None,
    allow_private_images: Annotated[
        bool,
        typer.Option(
            "--allow-private-images",
            rich_help_panel=NETWORK,
            help="Let image URLs in requests reach loopback, private and link-local addresses (off: only public "
            "ones are fetched; also $GENCLI_ALLOW_PRIVATE_IMAGES=1).",
        ),
    ] = False,
    metrics: Annotated[
        Optional[bool],
        typer.Option(
            "--metrics/--no-metrics",
            rich_help_panel=SERVER,
            show_default=False,
            help="GET /metrics in Prometheus' format, behind the API key when one is set (default on; also "
            "$GENCLI_METRICS=0).",
        ),
    ] = None,
    log_format: Annotated[
        Optional[str],
        typer.Option(
            "--log-format",
            metavar="FORMAT",
            rich_help_panel=SERVER,
            show_default=False,
            help="Access log lines: text or json (one object a line; default text; also $GENCLI_LOG_FORMAT).",
        ),
    ] = None,
    **flags: Optional[str],
) -> None:
    """Serve the models over HTTP as an Ollama-compatible API (and OpenAI's /v1).

    Ollama clients (IDEs, Open WebUI, the ollama library), OpenAI clients (base URL http://HOST:PORT/v1, Chat
    Completions and Responses, e.g. Codex) and Anthropic clients (base URL http://HOST:PORT, /v1/messages,
    e.g. Claude Code) can use every ready model in models.json. With GENCLI_API_KEY set, every route but /,
    /health and /ready needs 'Authorization: Bearer \\<key>' (or 'x-api-key: \\<key>'); with a keys file
    ('gencli keys'), its keys work too, each with its models and limits. Every limit is also an environment
    variable; see README "Security".
    """
    from gencli.cli.commands.serve import run

    _call(
        run,
        host=host,
        port=port,
        workers=workers,
        allowed_origins=allowed_origins,
        allowed_hosts=allowed_hosts,
        insecure_no_auth=insecure_no_auth,
        allow_private_images=allow_private_images,
        metrics=metrics,
        log_format=log_format,
        keys_file=keys_file,
        redis=redis,
        redis_fail=redis_fail,
        **flags,
    )


# -- the entry point ------------------------------------------------------------------

# Typer's zsh script registers itself with compdef and stops: autoloaded from $fpath (what
# --install-completion sets up, and completions/_gencli) the first Tab in a shell then only
# defines the function and completes nothing. This one completes at once when autoloaded, and
# names its function after the file (_gencli), so that the definition replaces the autoloaded
# body and every later Tab completes too. Typer is pinned in pyproject.toml; the zsh tests in
# tests/test_completions.py (several Tabs in one shell) fail loudly if this stops working.
ZSH_SCRIPT = """
#compdef %(prog_name)s

_%(prog_name)s() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" %(autocomplete_var)s=complete_zsh %(prog_name)s)
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _%(prog_name)s "$@"
else
  compdef _%(prog_name)s %(prog_name)s
fi
"""


def use_zsh_script() -> None:
    from typer import _completion_classes, _completion_shared

    _completion_shared._completion_scripts["zsh"] = ZSH_SCRIPT
    _completion_classes.ZshComplete.source_template = ZSH_SCRIPT


def only_the_command(argv: list[str]) -> typer.Typer:
    """The app with just the command ``argv`` runs, when it names one: Typer converts every
    command's parameters into click's before it parses anything (~0.2 ms a parameter, for
    commands that will not run). The help of the app itself, an unknown command and shell
    completion get the whole app. (``registered_commands`` is Typer's list of commands; if
    it stops matching, the whole app is used, as before.)"""
    name = next((a for a in argv if not a.startswith("-")), None)
    if name is None or any(k.startswith("_GENCLI_COMPLETE") for k in os.environ):
        return app
    chosen = [c for c in app.registered_commands if c.callback is not None and c.callback.__name__ == name]
    if len(chosen) != 1 or chosen[0].name is not None:
        return app
    import copy

    lean = copy.copy(app)
    lean.registered_commands = chosen
    return lean


def main() -> None:
    """``gencli``: run the app; every failure is one line on stderr and an exit code."""
    from typer.main import get_command

    from gencli.cli.pipes import error, quiet_pipe
    from gencli.core.errors import GencliError

    use_zsh_script()
    command = get_command(only_the_command(sys.argv[1:]))
    try:
        code = command.main(prog_name="gencli", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        error(exc.format_message().replace("\n", " ") + where)
        sys.exit(exc.exit_code)
    except click.exceptions.ClickException as exc:
        error(exc.format_message().replace("\n", " "))
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except GencliError as exc:
        if os.environ.get("GENCLI_DEBUG"):
            raise
        error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        quiet_pipe()
        sys.exit(0)
    if isinstance(code, int):  # typer.Exit (--help, --version) returns its code here
        sys.exit(code)
