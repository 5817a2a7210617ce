"""The web leaderboard and the REST API: `create_app()`, served by `evo serve`."""
from evo.web.app import create_app

__all__ = ["create_app"]
