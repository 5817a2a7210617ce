"""`python3 -m evo ...`: the CLI without installing the package."""
from evo.cli import app

app()
