"""The Versioned Capability Vector (paper §3): VCV = (c, s, r, p, e, v).

- c `capability`: L2-normalised embedding of the agent's description.
- s `skills_bloom`: Bloom filter over discrete skills (see bloom.py); `skills` keeps the exact
  list too, so the router can confirm a Bloom hit.
- r `resources`: latency, throughput, context, costs, concurrency, GPU memory.
- p `policies`: the agent's clearances (a set of policy flags).
- e `spec_embedding`: L2-normalised embedding of the agent's behaviour spec.
- v `version`: increases on every change; receivers keep the newest per agent.
"""

from __future__ import annotations

import time
from typing import ClassVar, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fabric.bloom import BLOOM_BITS, BLOOM_HASHES, BloomFilter, normalise_skill
from fabric.envelope import Body
from fabric.topics import validate_id
from fabric.vectors import Vector, as_array, check_unit

#: Policy flags with a documented meaning. Agents may advertise others; a query may name any flag
#: that is here or that some live agent advertises (anything else is a typo and is refused).
KNOWN_POLICIES: dict[str, str] = {
    "hipaa": "may process US protected health information",
    "gdpr": "processes personal data under GDPR terms",
    "phi": "may see patient-identifiable health data",
    "pii": "may see personally identifiable information",
    "clinical": "cleared to give clinical guidance under its spec",
    "medical-safety": "follows the medical safety spec (emergencies, uncertainty, referrals)",
    "code-exec": "may execute code",
    "internet": "may reach the internet",
    "eu-residency": "data stays in the EU",
    "safety-reviewed": "its spec passed a safety review",
    "public": "cleared for public, non-sensitive data only",
}


class Resources(BaseModel):
    """r: what running a task on this agent costs and how fast it goes."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=1000.0, ge=0, description="typical time to first answer")
    tokens_per_s: float = Field(default=20.0, gt=0)
    context_window: int = Field(default=4096, gt=0)
    cost_per_1k_input: float = Field(default=0.0, ge=0, description="currency units per 1k prompt tokens")
    cost_per_1k_output: float = Field(default=0.0, ge=0, description="currency units per 1k completion tokens")
    max_concurrency: int = Field(default=1, ge=1)
    gpu_memory_gb: float = Field(default=0.0, ge=0)

    def expected_cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.cost_per_1k_input + output_tokens * self.cost_per_1k_output) / 1000.0

    def expected_latency_ms(self, output_tokens: int) -> float:
        return self.latency_ms + 1000.0 * output_tokens / self.tokens_per_s

    def as_vector(self) -> np.ndarray:
        """A log-scaled resource profile for cosine comparisons between agents (cluster weights)."""
        return np.log1p(
            np.array(
                [
                    self.latency_ms / 100.0,
                    self.tokens_per_s,
                    self.context_window / 1024.0,
                    100.0 * self.cost_per_1k_input,
                    100.0 * self.cost_per_1k_output,
                    self.max_concurrency,
                    self.gpu_memory_gb,
                ],
                dtype=np.float64,
            )
        )


#: at most this many example views per agent (memory: int8, dim bytes each, in the router)
MAX_VIEWS = 8


class VCV(Body):
    """A Versioned Capability Vector as published retained on `foa/agents/{id}/vcv`."""

    KIND: ClassVar[str] = "vcv"

    agent_id: str
    version: int = Field(ge=0)
    name: str = ""
    description: str = Field(min_length=1)
    capability: Vector = Field(description="c: L2-normalised description embedding")
    skills: list[str] = Field(default_factory=list, description="the exact skill list behind the Bloom filter")
    skills_bloom: str = Field(description="s: base64 Bloom filter over normalised skills")
    bloom_bits: int = BLOOM_BITS
    bloom_hashes: int = BLOOM_HASHES
    resources: Resources = Field(default_factory=Resources)
    policies: list[str] = Field(default_factory=list, description="p: policy clearances")
    spec_embedding: Vector = Field(description="e: L2-normalised spec embedding")
    embedding_model: str = Field(description="the model that produced c and e; routers refuse mismatches")
    llm_model: str | None = None
    tags: list[str] = Field(
        default_factory=list, description="free labels from the spec; `mcp` / `exact`: drafts are results (tools)"
    )
    examples: list[str] = Field(
        default_factory=list, max_length=MAX_VIEWS,
        description="tasks the agent serves (skill examples, tool docs, its skills as queries), one view each",
    )
    views: list[Vector] = Field(
        default_factory=list, max_length=MAX_VIEWS, description="the examples' L2-normalised embeddings, in order"
    )
    issued_at: float = Field(default_factory=time.time)
    public_key: str | None = Field(default=None, description="ed25519 public key, base64 (issue 5)")
    signature: str | None = Field(default=None, description="ed25519 signature of the canonical VCV")

    @field_validator("agent_id")
    @classmethod
    def _id(cls, value: str) -> str:
        return validate_id(value, "agent_id")

    @field_validator("policies")
    @classmethod
    def _policies(cls, value: list[str]) -> list[str]:
        return sorted({p.strip().lower() for p in value if p.strip()})

    @field_validator("skills")
    @classmethod
    def _skills(cls, value: list[str]) -> list[str]:
        return sorted({normalise_skill(s) for s in value if s.strip()})

    @model_validator(mode="after")
    def _check(self) -> Self:
        check_unit(self.capability, "capability embedding c")
        check_unit(self.spec_embedding, "spec embedding e")
        if len(self.views) != len(self.examples):
            raise ValueError(f"{len(self.views)} views for {len(self.examples)} examples: one view per example")
        for i, view in enumerate(self.views):
            check_unit(view, f"view {i}")
            if len(view) != len(self.capability):
                raise ValueError(f"view {i} has dimension {len(view)}, the capability {len(self.capability)}")
        bloom = self.bloom()
        missing = [s for s in self.skills if s not in bloom]
        if missing:
            raise ValueError(f"skills {missing} are not in skills_bloom: the filter does not match the list")
        return self

    @property
    def dim(self) -> int:
        return len(self.capability)

    def bloom(self) -> BloomFilter:
        return BloomFilter.from_b64(self.skills_bloom, self.bloom_bits, self.bloom_hashes)

    def has_skills(self, required: list[str]) -> bool:
        """Bloom filter first (cheap, no false negatives), exact list to confirm."""
        if not required:
            return True
        wanted = [normalise_skill(s) for s in required]
        if not self.bloom().contains_all(wanted):
            return False
        return set(wanted) <= set(self.skills) if self.skills else True

    def capability_array(self) -> np.ndarray:
        """c as float32 (read-only, no copy)."""
        return as_array(self.capability)

    def views_array(self) -> np.ndarray:
        """The views as one float32 (n, dim) array (n = 0: none)."""
        if not self.views:
            return np.zeros((0, len(self.capability)), dtype=np.float32)
        return np.stack([as_array(v) for v in self.views])

    def spec_array(self) -> np.ndarray:
        """e as float32 (read-only, no copy)."""
        return as_array(self.spec_embedding)

    def check_dimension(self, expected: int) -> None:
        if self.dim != expected:
            raise ValueError(f"VCV {self.agent_id} has capability dimension {self.dim}, expected {expected}")

    def signing_bytes(self) -> bytes:
        """The canonical bytes an agent signs: the JSON of every field but the signature."""
        return self.model_dump_json(exclude={"signature"}).encode()

    def bumped(self, **changes: object) -> VCV:
        """A copy with the given changes and the next version."""
        data = self.model_dump() | changes | {"version": self.version + 1, "issued_at": time.time(), "signature": None}
        return VCV.model_validate(data)


def newer(current: VCV | None, incoming: VCV) -> bool:
    """The conflict rule of Δ-gossip: the highest version wins; ties keep the current one."""
    return current is None or incoming.version > current.version
