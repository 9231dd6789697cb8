"""The YAML agent spec: everything needed to build an agent's VCV and run it as a worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fabric.arithmetic import ARITHMETIC_SKILL
from fabric.errors import ConfigError
from fabric.llm.config import LLMConfig
from fabric.topics import validate_id
from fabric.vcv import Resources

__all__ = ["AgentSpec", "LLMConfig", "SpecError", "default_specs_dir", "load_spec", "load_specs"]


class AgentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str = ""
    description: str = Field(default="", description="what the agent can do; embedded into c")
    skills: list[str] = Field(default_factory=list)
    policies: list[str] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    spec: str = Field(default="", description="behaviour spec (system prompt); embedded into e")
    llm: LLMConfig = Field(default_factory=LLMConfig)
    replicas: int = Field(default=1, ge=1, le=64)
    tags: list[str] = Field(default_factory=list)
    examples: list[str] = Field(
        default_factory=list, description="tasks this agent serves, in a user's words: each becomes a routing view"
    )
    tools: list[Literal["arithmetic"]] = Field(
        default_factory=list,
        description="built-in exact tools the worker answers with, before its LLM, when a subtask is exactly "
        "theirs (arithmetic: fabric/arithmetic.py)",
    )
    # an agent that is a remote A2A agent or MCP server, joined through a gateway (fabric/interop/specs.py)
    a2a: dict[str, Any] | None = None
    mcp: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _described(self) -> AgentSpec:
        if not self.description.strip() and self.a2a is None and self.mcp is None:
            raise ValueError("description is required (what the agent can do; it is embedded for routing)")
        if "arithmetic" in self.tools and ARITHMETIC_SKILL not in self.skills:
            # the orchestrator sends a question that is arithmetic to the agents with this skill
            self.skills = [*self.skills, ARITHMETIC_SKILL]
        return self

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return validate_id(value, "agent id")

    @property
    def spec_text(self) -> str:
        return self.spec or self.description


class SpecError(ConfigError):
    """An agent spec that cannot be read or validated; the message names the file and the field."""


def load_spec(path: str | Path) -> AgentSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read agent spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"agent spec {path} is not a YAML mapping")
    try:
        return AgentSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"invalid agent spec {path}: {exc}") from exc


def load_specs(folder: str | Path) -> list[AgentSpec]:
    folder = Path(folder)
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not files:
        raise SpecError(f"no agent specs (*.yaml) in {folder}")
    specs = [load_spec(f) for f in files]
    ids = [s.id for s in specs]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise SpecError(f"duplicate agent ids in {folder}: {sorted(dupes)}")
    return specs


def default_specs_dir() -> Path:
    """The ready-made agents shipped with the package."""
    return Path(__file__).parent / "specs"
