"""The ``gencli`` command. Commands stay thin: they parse flags, build a request,
and hand events to a renderer. Heavy imports happen inside the commands."""

from __future__ import annotations

import os
import sys

import click

from gencli import __version__

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _models_option(f):
    return click.option("--models", "models_path", metavar="PATH", envvar="GENCLI_MODELS",
                        help="models.json to use (default: ./models.json, then "
                             "$XDG_CONFIG_HOME/gencli/models.json, then the built-ins).")(f)


def _complete_model(ctx, param, incomplete: str):
    """Shell completion for -m: the registry's model names (only runs when completing)."""
    from click.shell_completion import CompletionItem

    from gencli.errors import GencliError
    from gencli.registry import Registry

    try:
        registry = Registry.load(ctx.params.get("models_path"))
    except GencliError:
        return []
    return [CompletionItem(name, help=entry.description or entry.provider)
            for name, entry in registry.models.items() if name.startswith(incomplete)]


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="gencli", message="%(prog)s %(version)s")
def cli() -> None:
    """Generate text with any model: OpenAI, Gemini, Claude, OpenRouter, any
    OpenAI-compatible server, or a local model. Models are named in models.json (see
    'gencli models').

    \b
    Examples:
      gencli generate "Why is the sky blue?"
      cat notes.txt | gencli generate -m gemini-2.5-flash "Summarise:"
      gencli serve            # an Ollama-compatible server on 127.0.0.1:11434
    """


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("prompt", required=False)
@click.option("-m", "--model", metavar="NAME", shell_complete=_complete_model,
              help="Model name from the registry (default: $GENCLI_MODEL, "
              "models.json's \"default\", else the first model with a key, else the local smollm2).")
@click.option("-s", "--system", metavar="TEXT", help="System prompt.")
@click.option("--temperature", type=click.FloatRange(0, 2), metavar="FLOAT", help="Sampling temperature (0-2).")
@click.option("--top-p", type=click.FloatRange(0, 1), metavar="FLOAT", help="Nucleus sampling (0-1).")
@click.option("--top-k", type=click.IntRange(0), metavar="INT", help="Top-k sampling, where the provider has it.")
@click.option("--num-predict", "--max-tokens", "num_predict", type=click.IntRange(1), metavar="INT",
              help="Maximum number of tokens to generate.")
@click.option("--stop", multiple=True, metavar="TEXT", help="Stop sequence (repeatable).")
@click.option("--seed", type=int, metavar="INT", help="Random seed, where the provider has it.")
@click.option("-i", "--image", "images", multiple=True, metavar="PATH|URL",
              help="Image file or http(s) URL (repeatable).")
@click.option("--format", "fmt", metavar="json|SCHEMA_FILE",
              help="Structured output: 'json', or a file holding a JSON schema.")
@click.option("--think/--no-think", default=None, help="Ask the model to reason, or not (default: the model's own).")
@click.option("--hide-reasoning", is_flag=True, help="Do not show the reasoning chain.")
@click.option("--no-stream", is_flag=True, help="Wait for the whole answer instead of streaming it.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the JSON (NDJSON when streaming) objects that /api/generate returns.")
@click.option("-v", "--verbose", is_flag=True, help="Print timing and token statistics on stderr.")
@click.option("--context", "context_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Conversation file: read before, written after, to continue a conversation.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Give up when the upstream sends nothing for this long (default: the model's "
                   "\"timeout\" in models.json, else $GENCLI_TIMEOUT, else 300; connecting: at most 10).")
@click.option("--retries", type=click.IntRange(0, 10), metavar="N",
              help="Retries of a request that fails before any output (connection refused or reset, "
                   "HTTP 408, 429, 5xx), with backoff (default: the model's \"retries\", else "
                   "$GENCLI_RETRIES, else 2).")
@_models_option
def generate(**kw) -> None:
    """Generate a completion for PROMPT.

    The prompt is the argument, stdin when stdin is piped, or both (the argument,
    a blank line, then stdin). '-' reads stdin. On a terminal the answer streams
    with live rendering; piped, stdout gets the answer alone as plain text and
    reasoning and diagnostics go to stderr.

    Exit codes: 0 ok, 1 generation or upstream error, 2 usage error, 130 interrupted.
    """
    from gencli.commands.generate import run

    run(**kw)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("texts", metavar="[TEXT]...", nargs=-1)
@click.option("-m", "--model", metavar="NAME", help="Embedding model from the registry (default: "
              "$GENCLI_EMBED_MODEL, else the first ready model with the 'embedding' capability).")
@click.option("--lines", is_flag=True, help="Each non-blank line of stdin is one input (default: all of stdin "
              "is one input).")
@click.option("--dimensions", type=click.IntRange(1), metavar="INT",
              help="Ask for shorter vectors, where the model supports it.")
@click.option("-v", "--verbose", is_flag=True, help="Print the model, vector count and size on stderr.")
@_models_option
def embed(texts, model, lines, dimensions, verbose, models_path) -> None:
    """Embed TEXT (each argument is one input) or piped stdin, and print the vectors.

    stdout gets one JSON array holding one vector (an array of numbers) per input,
    in input order, on one line. Vectors are L2-normalised (unit length), as
    Ollama's /api/embed returns them. '-' reads stdin alongside arguments.

    \b
    Examples:
      gencli embed -m text-embedding-3-small "first text" "second text"
      cat sentences.txt | gencli embed --lines -m gemini-embedding-001

    Exit codes: 0 ok, 1 upstream error, 2 usage error (e.g. a chat-only model).
    """
    from gencli.commands.embed import run

    run(texts=texts, model=model, lines=lines, dimensions=dimensions, models_path=models_path, verbose=verbose)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@_models_option
def models(as_json: bool, models_path: str | None) -> None:
    """List the models in the registry and whether each is ready to use."""
    from gencli.commands.models import run

    run(as_json=as_json, models_path=models_path)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--host", default="127.0.0.1", show_default=True, metavar="ADDR",
              help="Address to bind. Other than loopback, set GENCLI_API_KEY.")
@click.option("--port", default=11434, show_default=True, type=click.IntRange(0, 65535), metavar="PORT",
              help="Port to listen on (0: any free port).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256), metavar="N",
              help="Worker processes.")
@click.option("--allowed-origins", multiple=True, metavar="ORIGINS",
              help="Browser origins allowed besides localhost ones (comma-separated, repeatable; "
                   "also $GENCLI_ORIGINS).")
@click.option("--max-body-mb", default=32.0, show_default=True, type=click.FloatRange(0.001), metavar="MB",
              help="Largest request body accepted (413 above it).")
@click.option("--grace", default=30.0, show_default=True, type=click.FloatRange(0), metavar="SECONDS",
              help="On SIGTERM, how long in-flight requests may take to finish.")
@click.option("--allow-private-images", is_flag=True,
              help="Let image URLs in requests reach loopback, private and link-local addresses "
                   "(off: only public ones are fetched; also $GENCLI_ALLOW_PRIVATE_IMAGES=1).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Default upstream read timeout for models without a \"timeout\" in models.json "
                   "(default: $GENCLI_TIMEOUT, else 300).")
@click.option("--retries", type=click.IntRange(0, 10), metavar="N",
              help="Default retries of upstream requests that fail before any output, for models "
                   "without \"retries\" in models.json (default: $GENCLI_RETRIES, else 2).")
@_models_option
def serve(host, port, workers, allowed_origins, max_body_mb, grace, models_path, allow_private_images,
          timeout=None, retries=None) -> None:
    """Serve the models over HTTP as an Ollama-compatible API (and OpenAI's /v1).

    Ollama clients (IDEs, Open WebUI, the ollama library), OpenAI clients (base URL
    http://HOST:PORT/v1, Chat Completions and Responses, e.g. Codex) and Anthropic
    clients (base URL http://HOST:PORT, /v1/messages, e.g. Claude Code) can use every
    ready model in models.json. With GENCLI_API_KEY set, every route but / needs
    'Authorization: Bearer <key>' (or 'x-api-key: <key>').
    """
    from gencli.commands.serve import run

    if allow_private_images:  # read by the app (and by --workers processes) from the environment
        os.environ["GENCLI_ALLOW_PRIVATE_IMAGES"] = "1"
    if timeout is not None:  # read by the engine in every worker (gencli.retry.settings)
        os.environ["GENCLI_TIMEOUT"] = repr(float(timeout))
    if retries is not None:
        os.environ["GENCLI_RETRIES"] = str(retries)
    run(host=host, port=port, models_path=models_path, workers=workers, allowed_origins=allowed_origins,
        max_body_mb=max_body_mb, grace=grace)


def main() -> None:
    from gencli.errors import GencliError

    try:
        cli.main(prog_name="gencli", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except GencliError as exc:
        if os.environ.get("GENCLI_DEBUG"):
            raise
        _error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        _quiet_pipe()
        sys.exit(0)


def _error(message: str) -> None:
    try:
        sys.stderr.write(f"gencli: error: {message}\n")
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        pass


def _quiet_pipe() -> None:
    """After a broken stdout pipe, point stdout at /dev/null so the exit flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
