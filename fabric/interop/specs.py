"""What a gateway needs to know beyond the remote card or tool list: identity, clearances, costs,
auth, timing. One YAML shape for `--spec overrides.yaml` and for the `a2a:` / `mcp:` entries of
agent specs in a `foa up --specs DIR` folder.

    id: triage-bot                # default: from the card name / server name
    policies: [clinical]          # default: none (a remote agent has no clearances until given)
    resources: {cost_per_1k_output: 0.002, latency_ms: 800, max_concurrency: 8}
    a2a:
      url: https://triage.example.org
      auth: {bearer_env: TRIAGE_TOKEN}     # or {api_key_env: TRIAGE_KEY, api_key_header: X-API-Key}

Defaults, since neither an agent card nor a tool list carries costs: cost 0, the latency and
concurrency below, no policies. A remote agent is therefore routed only to jobs that require no
clearance until an operator grants some in its spec.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fabric.errors import ConfigError
from fabric.topics import validate_id
from fabric.vcv import Resources

#: resources of a remote A2A agent when its spec says nothing (an LLM agent behind HTTP)
A2A_DEFAULT_RESOURCES = Resources(latency_ms=1500.0, tokens_per_s=30.0, max_concurrency=8)
#: resources of an MCP tool when its spec says nothing (a function call, no generation)
MCP_DEFAULT_RESOURCES = Resources(latency_ms=50.0, tokens_per_s=1000.0, max_concurrency=8)


class GatewayError(ConfigError):
    """A remote agent or server that cannot join: unreachable, malformed, or without skills."""


class AuthConfig(BaseModel):
    """Credentials come from environment variables named here, never from the YAML itself."""

    model_config = ConfigDict(extra="forbid")

    bearer_env: str | None = Field(default=None, description="env var holding a bearer token")
    api_key_env: str | None = Field(default=None, description="env var holding an API key")
    api_key_header: str = "X-API-Key"

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for env, header, prefix in (
            (self.bearer_env, "Authorization", "Bearer "),
            (self.api_key_env, self.api_key_header, ""),
        ):
            if env is None:
                continue
            value = os.environ.get(env)
            if not value:
                raise GatewayError(
                    f"the spec names the environment variable {env} for credentials, "
                    "but it is unset or empty: export it"
                )
            out[header] = prefix + value
        return out


class A2AConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="base URL of the agent; its card is read from the well-known path")
    auth: AuthConfig = Field(default_factory=AuthConfig)
    card_path: str | None = Field(
        default=None, description="card path relative to the URL (default: the well-known path)"
    )
    refresh_s: float = Field(default=30.0, gt=0, description="how often the card is re-read")
    offline_after: int = Field(default=3, ge=1, description="failed card reads in a row before the agent goes offline")
    timeout_s: float = Field(default=120.0, gt=0, description="per-task limit when the FoA task carries no deadline")
    stream: bool | None = Field(default=None, description="use message/stream; default: when the card supports it")
    planning_skills: list[str] = Field(
        default_factory=lambda: ["planning", "plan", "decompose", "decomposition"],
        description="skill ids or tags that make the agent a decompose proposer",
    )
    card_keys: dict[str, str] = Field(
        default_factory=dict,
        description="kid -> PEM public key file, to verify signed cards (else the signature's jku)",
    )


class MCPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stdio: str | None = Field(default=None, description='command line of a stdio server, e.g. "python server.py"')
    url: str | None = Field(default=None, description="streamable HTTP endpoint, e.g. http://host:8000/mcp")
    auth: AuthConfig = Field(default_factory=AuthConfig)
    per_tool: bool = Field(default=False, description="one agent per tool instead of one per server")
    timeout_s: float = Field(default=60.0, gt=0, description="per-call limit (and the connect/initialize limit)")
    argument_retries: int = Field(
        default=2,
        ge=0,
        description="re-asks of the LLM when arguments do not fit the schema, and again when the tool "
        "refuses them (an isError result or invalid params), the tool's message fed back",
    )
    tie_margin: float = Field(default=0.03, ge=0, description="similarity gap under which the LLM picks between tools")

    @model_validator(mode="after")
    def _one_transport(self) -> MCPConfig:
        if (self.stdio is None) == (self.url is None):
            raise ValueError("give exactly one of stdio (a command line) or url (a streamable HTTP endpoint)")
        return self


class GatewaySpec(BaseModel):
    """The overrides of one gateway agent (the fields an agent spec shares with a native agent)."""

    model_config = ConfigDict(extra="ignore")  # a full agent spec (llm, replicas, ...) is accepted as overrides

    id: str | None = None
    name: str = ""
    description: str = Field(default="", description="added to the remote description (not replacing it)")
    skills: list[str] = Field(default_factory=list, description="added to the remote skills")
    policies: list[str] = Field(default_factory=list)
    resources: Resources | None = None
    spec: str = ""
    a2a: A2AConfig | None = None
    mcp: MCPConfig | None = None

    @model_validator(mode="after")
    def _id(self) -> GatewaySpec:
        if self.id is not None:
            validate_id(self.id, "agent id")
        return self


def load_gateway_spec(path: str | Path | None) -> GatewaySpec:
    if path is None:
        return GatewaySpec()
    path = Path(path)
    try:
        data: Any = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise GatewayError(f"cannot read the gateway spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise GatewayError(f"gateway spec {path} is not a YAML mapping")
    try:
        return GatewaySpec.model_validate(data)
    except ValidationError as exc:
        raise GatewayError(f"invalid gateway spec {path}: {exc}") from exc


def gateway_spec_of(agent_spec: Any) -> GatewaySpec:
    """The gateway view of an agent spec from a specs folder (one with an `a2a:` or `mcp:` entry)."""
    try:
        return GatewaySpec.model_validate(
            agent_spec.model_dump(exclude_unset=True)
        )  # unset: the gateway defaults apply
    except ValidationError as exc:
        raise GatewayError(f"invalid a2a/mcp entry in the spec of {agent_spec.id!r}: {exc}") from exc


def slug(text: str, fallback: str = "agent") -> str:
    """An agent id from a display name: lowercase, [a-z0-9-], at most 64 characters."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64]
    return out or fallback
