"""One answered request, whichever backend answered it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Completion:
    """What one endpoint answered (or the error after all retries)."""

    text: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    error: str | None = None


def completion_from(response: dict, latency_s: float | None) -> Completion:
    """A chat.completion body (from the API or a Batch API output line) as a Completion."""
    choices = response.get("choices") or []
    if not choices:
        return Completion(None, error="the endpoint returned no choices", latency_s=latency_s)
    text = (choices[0].get("message") or {}).get("content")
    usage = response.get("usage") or {}
    return Completion(text=text, latency_s=latency_s,
                      prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                      error=None if text else "the endpoint returned an empty reply")
