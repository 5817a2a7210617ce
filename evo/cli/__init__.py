"""`evo` command line. One module per group of commands; each registers on `app`."""
import os
import sys

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Evolutionary GPU-kernel optimization.")


def make_console(stderr: bool = False) -> Console:
    """The CLI's console. Where the stream is no terminal (CI logs, pipes) and COLUMNS is unset,
    rich would fall back to 80 columns and cut every table column to "…": use 160 there."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=160 if wide else None)


console = make_console()
err = make_console(stderr=True)

# Imported for their @app.command registrations.
from evo.cli import tasks, jobs, llm, web  # noqa: E402,F401
