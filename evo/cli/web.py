"""`evo serve`: the web leaderboard and the REST API on the configured database."""
from __future__ import annotations

import typer

from evo.cli import app


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="interface to listen on (0.0.0.0 for all)"),
          port: int = typer.Option(8000, min=1, max=65535, help="TCP port")) -> None:
    """Serve the leaderboard, job and candidate pages and the JSON API (/docs) with uvicorn.

    Reads EVO_DATABASE_URL (default: the SQLite file in EVO_HOME), upgrading its schema first,
    and EVO_API_TOKEN: without it the API is read-only.
    """
    import uvicorn

    from db.migrate import upgrade
    from db.session import ConfigError
    from evo.web import create_app

    try:
        upgrade()
        web_app = create_app()
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if web_app.state.api_token is None:
        typer.echo("EVO_API_TOKEN is not set: the API is read-only (no submit, no cancel).", err=True)
    uvicorn.run(web_app, host=host, port=port)
