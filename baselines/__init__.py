"""The problems: one module per task. `get_task(name)` and `all_tasks()` are the API."""
import pkgutil
from importlib import import_module

from baselines.task import Task, Tolerance, registry

# Every module in this package that is not infrastructure defines and registers tasks.
_NOT_TASKS = {"task", "peers"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_TASKS and not _module.name.startswith("_"):
        import_module(f"baselines.{_module.name}")


class UnknownTaskError(KeyError):
    def __str__(self) -> str:
        return f"unknown task {self.args[0]!r}; known tasks: {', '.join(sorted(registry()))}"


def get_task(name: str) -> Task:
    try:
        return registry()[name]
    except KeyError:
        raise UnknownTaskError(name) from None


def all_tasks() -> list[Task]:
    return sorted(registry().values(), key=lambda t: t.name)


__all__ = ["Task", "Tolerance", "UnknownTaskError", "get_task", "all_tasks"]
