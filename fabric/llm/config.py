"""Which model serves an agent: the `llm:` block of an agent spec.

It lives with the backends that read it (`backend_for`, `BackendPool`), not with the agent spec
that embeds it, so the LLM layer imports nothing from `agents` (docs/architecture.md, Layers).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LLMConfig"]


class LLMConfig(BaseModel):
    """Which model serves this agent. Unset fields fall back to the FOA_LLM_* settings."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint; None = settings / embedded")
    model: str | None = None
    api_key_env: str | None = Field(default=None, description="name of the env var holding the API key")
    temperature: float = Field(default=0.3, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=8)
