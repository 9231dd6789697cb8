"""The typed inputs and outputs of the task kinds agents serve: decompose, draft, refine.

The output models double as the JSON schemas that constrain the LLM (grammar-constrained on
the embedded model, `response_format` on OpenAI-compatible servers).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


def degenerate(text: str) -> bool:
    """Text a looping small model produced: too few distinct words for its length."""
    words = text.lower().replace(".", " ").split()
    return not words or (len(words) >= 8 and len(set(words)) / len(words) < 0.35)


class ProposedSubtask(BaseModel):
    # the length bounds are also grammar bounds when the schema constrains decoding
    id: str = Field(max_length=12, description="short id such as s1")
    text: str = Field(min_length=3, max_length=300, description="one short instruction: what this subtask must produce")
    depends_on: list[str] = Field(default_factory=list, max_length=4, description="ids of subtasks whose results it needs")

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        value = " ".join(value.split())
        if degenerate(value):
            raise ValueError("subtask text is not a usable instruction (too few distinct words)")
        return value


class Plan(BaseModel):
    """A decomposition proposal: subtasks and their dependencies."""

    subtasks: list[ProposedSubtask] = Field(min_length=1, max_length=6)


class DecomposeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str
    subtasks_min: int = 2
    subtasks_max: int = 4


class PeerAnswer(BaseModel):
    agent_id: str
    answer: str


class DraftInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str
    subtask: str
    context: list[PeerAnswer] = Field(default_factory=list, description="results of the subtasks this one depends on")
    max_tokens: int | None = None


def _clamp01(value: object) -> object:
    """Small models write 85 or 1.5 for a confidence; clamp instead of failing the whole answer."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        if v > 1.0:
            v = v / 100.0 if 10.0 < v <= 100.0 else 1.0  # 85 reads as a percentage, 1.5 as "very"
        return min(1.0, max(0.0, v))
    return value


class DraftOutput(BaseModel):
    answer: str = Field(description="the answer to the subtask")
    confidence: float = Field(default=0.5, ge=0, le=1)

    _clamp = field_validator("confidence", mode="before")(classmethod(lambda cls, v: _clamp01(v)))


class RefineInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str
    subtask: str
    cluster_id: str
    round: int
    own_answer: str
    peers: list[PeerAnswer]
    max_tokens: int | None = None


class RefineOutput(BaseModel):
    answer: str = Field(description="the revised answer")
    done: bool = Field(description="true when the answer needs no further revision")
    confidence: float = Field(default=0.5, ge=0, le=1)

    _clamp = field_validator("confidence", mode="before")(classmethod(lambda cls, v: _clamp01(v)))
