"""The ``gencli`` command line (``gencli = "gencli.cli:main"``).

- ``app``: the Typer app, each command's typed options and help panels, and ``main``
- ``commands/``: one module per command (``run``), imported only when it runs; they
  import nothing from each other
- ``pipes``: stdin, stdout and stderr helpers every command shares
- ``turn``: one turn (request inputs, the conversation it continues, renderer, engine run),
  shared by ``generate`` and ``chat``
- ``state``: what is kept between runs in the XDG state directory (conversations, history)
- ``render`` / ``render_rich``: plain, JSON and extract output; the live terminal renderer
- ``fences``: fenced code blocks (live rendering, ``--extract``)
"""


def main() -> None:
    """The ``gencli`` console script."""
    from gencli.cli.app import main as run

    run()
