"""The problems: one module per task. `get_task(name)` and `all_tasks()` are the API."""
from importlib import import_module

from baselines.task import Task, Tolerance, registry

TASK_MODULES = (
    "softmax",
)

for _name in TASK_MODULES:
    import_module(f"baselines.{_name}")


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
