"""(being written)"""
from evo.cli import app  # noqa: F401
