"""What a call costs: USD per million tokens (input, output), list prices as of 2026-11.

Local servers (vLLM, llama.cpp) cost nothing per token: an endpoint on localhost or with
`price_per_mtok = [0, 0]` in the config is free. A model not listed here costs None
(unknown), never a guess. The Batch API bills half.
"""
from __future__ import annotations

from urllib.parse import urlparse

PRICE_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "claude-sonnet-4": (3.00, 15.00),
    "deepseek-chat": (0.27, 1.10),
    "deepseek-reasoner": (0.55, 2.19),
}
BATCH_DISCOUNT = 0.5
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def price_for(model: str, base_url: str, override: tuple[float, float] | None = None) -> tuple[float, float] | None:
    if override is not None:
        return override
    if urlparse(base_url).hostname in _LOCAL_HOSTS:
        return (0.0, 0.0)
    # Dated snapshots ("gpt-4.1-2025-04-14") and provider prefixes ("openai/gpt-4.1") price as the base model.
    name = model.rsplit("/", 1)[-1].lower()
    for known in sorted(PRICE_PER_MTOK, key=len, reverse=True):
        if name == known or name.startswith(known + "-20"):
            return PRICE_PER_MTOK[known]
    return None


def cost_usd(price: tuple[float, float] | None, prompt_tokens: int | None, completion_tokens: int | None,
             batch: bool = False) -> float | None:
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    cost = (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
    return cost * BATCH_DISCOUNT if batch else cost
