"""Strategy registry: name -> "module:class". Imported lazily so `tune` needs no LLM stack."""
from importlib import import_module

from evo.strategies.base import JobInfo, Member, Proposal, Strategy

STRATEGIES = {
    "tune": "evo.strategies.tune:Tune",
    "evoengineer-free": "evo.strategies.evoengineer:Free",
    "evoengineer-insight": "evo.strategies.evoengineer:Insight",
    "evoengineer-full": "evo.strategies.evoengineer:Full",
    "eoh": "evo.strategies.eoh:EoH",
    "funsearch": "evo.strategies.funsearch:FunSearch",
    "ai-cuda-engineer": "evo.strategies.ai_cuda_engineer:AICudaEngineer",
}


class UnknownStrategyError(KeyError):
    def __str__(self) -> str:
        return f"unknown strategy {self.args[0]!r}; known: {', '.join(STRATEGIES)}"


def get_strategy(name: str, **options) -> Strategy:
    try:
        module, cls = STRATEGIES[name].split(":")
    except KeyError:
        raise UnknownStrategyError(name) from None
    return getattr(import_module(module), cls)(**options)


__all__ = ["JobInfo", "Member", "Proposal", "Strategy", "STRATEGIES", "UnknownStrategyError", "get_strategy"]
