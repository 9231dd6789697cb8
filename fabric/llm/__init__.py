"""LLM backends behind one interface (`LLMBackend`): an OpenAI-compatible server when one is
configured, else the embedded CPU model; `ScriptedLLM` exists for unit tests only."""

from __future__ import annotations

import contextlib
import os

from fabric.llm.base import (
    ChatMessage,
    Completion,
    LLMBackend,
    LLMError,
    LLMOutputError,
    LLMTimeout,
    LLMUnavailable,
    TextStream,
)
from fabric.llm.config import LLMConfig
from fabric.llm.structured import complete_json, extract_json, repair_json
from fabric.settings import Settings

__all__ = [
    "ChatMessage", "Completion", "LLMBackend", "LLMConfig", "LLMError", "LLMOutputError", "LLMTimeout",
    "LLMUnavailable", "TextStream", "BackendPool", "backend_for", "complete_json", "extract_json", "repair_json",
]


def backend_for(settings: Settings, llm_config: LLMConfig | None = None) -> LLMBackend:
    """The backend an agent should use: its own endpoint (spec `llm.base_url`), else the
    federation's (FOA_LLM_BASE_URL), else the embedded model. Build it once per agent and
    reuse it (it pools connections / shares the loaded model); `aclose()` at shutdown."""
    base_url = (llm_config.base_url if llm_config else None) or settings.llm_base_url
    if base_url:
        from fabric.llm.openai_compat import OpenAICompatBackend

        api_key = settings.llm_api_key
        if llm_config is not None and llm_config.api_key_env:
            api_key = os.environ.get(llm_config.api_key_env)
            if not api_key:
                raise LLMUnavailable(
                    f"the agent's llm.api_key_env names {llm_config.api_key_env}, which is not set "
                    "in the environment"
                )
        return OpenAICompatBackend(
            base_url,
            (llm_config.model if llm_config else None) or settings.llm_model,
            api_key=api_key,
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
        )
    from fabric.llm.embedded import EmbeddedBackend

    return EmbeddedBackend(settings.llm_gguf_path, n_ctx=settings.llm_context, n_threads=settings.llm_threads)


class BackendPool:
    """One backend per endpoint and model, shared by every agent of a process that names them
    (the embedded model is loaded once for all of them); `aclose()` closes every one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._backends: dict[str, LLMBackend] = {}

    def get(self, llm_config: LLMConfig | None = None) -> LLMBackend:
        base_url = (llm_config.base_url if llm_config else None) or self.settings.llm_base_url
        key = f"{base_url}|{llm_config.model if llm_config else None}"
        if key not in self._backends:
            self._backends[key] = backend_for(self.settings, llm_config)
        return self._backends[key]

    async def aclose(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            with contextlib.suppress(Exception):  # shutting down: close the others regardless
                await backend.aclose()
