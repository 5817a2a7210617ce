"""`evo` command line. One module per group of commands; each registers on `app`."""
import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Evolutionary GPU-kernel optimization.")

# Imported for their @app.command registrations.
from evo.cli import tasks, jobs, llm, web  # noqa: E402,F401
