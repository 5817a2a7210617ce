"""LLM settings: one or more OpenAI-compatible endpoints, from the environment or a config file.

Environment (one endpoint): EVO_LLM_BASE_URL, EVO_LLM_MODEL, EVO_LLM_API_KEY, and the shared
knobs EVO_LLM_TEMPERATURE, EVO_LLM_MAX_TOKENS, EVO_LLM_TIMEOUT, EVO_LLM_MAX_RETRIES,
EVO_LLM_CONCURRENCY, EVO_LLM_CACHE (0 turns the reply cache off), EVO_LLM_BATCH_DIR (use the
batch backend: requests are written there instead of sent).

EVO_LLM_CONFIG names a TOML or JSON file with the same knobs plus several endpoints:

    temperature = 1.0
    [[endpoints]]
    base_url = "http://gpu1:8000/v1"
    model = "Qwen/Qwen3-32B"
    weight = 3
    [[endpoints]]
    base_url = "https://api.openai.com/v1"
    model = "gpt-4.1"
    api_key_env = "OPENAI_API_KEY"   # the key stays in the environment, not in the file
    weight = 1

Environment variables override the file's shared knobs; EVO_LLM_MODEL (with
EVO_LLM_BASE_URL, default OpenAI's) replaces its endpoint list with that one endpoint.
A job may pin a model and base URL (Job.llm_model, Job.llm_endpoint): see load_settings.
"""
from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Mapping

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from db.session import ConfigError


OPENAI_URL = "https://api.openai.com/v1"


class Endpoint(BaseModel):
    base_url: str = OPENAI_URL
    model: str = Field(min_length=1)
    api_key: str | None = None
    api_key_env: str | None = None  # name of the variable holding the key
    weight: float = Field(1.0, gt=0)
    # USD per million tokens (input, output); overrides the price table for this endpoint.
    price_per_mtok: tuple[float, float] | None = None

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    def key(self, env: Mapping[str, str]) -> str:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return env.get(self.api_key_env, "")
        if self.base_url == OPENAI_URL:
            return env.get("OPENAI_API_KEY", "")
        # Local servers (vLLM, llama.cpp) accept any key; the openai client insists on one.
        return "EMPTY"


class LLMSettings(BaseModel):
    endpoints: list[Endpoint] = Field(default_factory=list)
    temperature: float = Field(1.0, ge=0, le=2)  # the paper's default
    max_tokens: int = Field(8192, gt=0)
    timeout: float = Field(300.0, gt=0)  # seconds per request
    max_retries: int = Field(4, ge=0)  # the openai client's own exponential backoff (429, 5xx, timeouts)
    concurrency: int = Field(4, gt=0)  # requests in flight at once (the paper: 4 samplers)
    cache: bool = True
    batch_dir: str | None = None

    @model_validator(mode="after")
    def _some_endpoint(self) -> "LLMSettings":
        if not self.endpoints:
            raise ValueError("no LLM endpoint: set EVO_LLM_MODEL (and EVO_LLM_BASE_URL unless it is OpenAI's), "
                             "or list endpoints in EVO_LLM_CONFIG (the batch backend needs the model name too)")
        return self


_ENV_KNOBS = {
    "EVO_LLM_TEMPERATURE": "temperature",
    "EVO_LLM_MAX_TOKENS": "max_tokens",
    "EVO_LLM_TIMEOUT": "timeout",
    "EVO_LLM_MAX_RETRIES": "max_retries",
    "EVO_LLM_CONCURRENCY": "concurrency",
    "EVO_LLM_CACHE": "cache",
    "EVO_LLM_BATCH_DIR": "batch_dir",
}


def _read_config_file(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"EVO_LLM_CONFIG: cannot read {path}: {e.strerror}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"EVO_LLM_CONFIG: {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None


def load_settings(env: Mapping[str, str] | None = None, **overrides) -> LLMSettings:
    """Settings from the config file (if any), then the environment, then `overrides`
    (e.g. a job's model or temperature). Raises ConfigError with one readable line."""
    env = os.environ if env is None else env
    data: dict = {}
    if env.get("EVO_LLM_CONFIG"):
        data = _read_config_file(Path(env["EVO_LLM_CONFIG"]))
    for var, knob in _ENV_KNOBS.items():
        if env.get(var, "") != "":
            data[knob] = env[var]
    if env.get("EVO_LLM_BASE_URL") and not env.get("EVO_LLM_MODEL"):
        raise ConfigError("EVO_LLM_BASE_URL is set but EVO_LLM_MODEL is not: which model should it serve?")
    if env.get("EVO_LLM_MODEL"):
        data["endpoints"] = [{"base_url": env.get("EVO_LLM_BASE_URL") or OPENAI_URL, "model": env["EVO_LLM_MODEL"],
                              "api_key": env.get("EVO_LLM_API_KEY") or None}]
    model = overrides.pop("model", None)
    base_url = overrides.pop("base_url", None)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if base_url or model:
        endpoints = data.get("endpoints") or []
        if base_url:
            # A job pinned to one endpoint: keep the configured key if it is the same server.
            same = [e for e in endpoints if e.get("base_url", "").rstrip("/") == base_url.rstrip("/")]
            endpoints = same or [{"base_url": base_url, "model": model or "", "api_key": env.get("EVO_LLM_API_KEY") or None}]
        if model:
            endpoints = [dict(e, model=model) for e in endpoints] or [{"model": model}]
        data["endpoints"] = endpoints
    try:
        return LLMSettings.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"bad LLM settings: {problems}") from None
