"""The task kinds agents serve, each with its typed input and output: the one registry.

A kind is a `TaskKind[In, Out]` descriptor: its wire name (`TaskRequest.task_kind` stays a
string) and the pydantic models of its input and output. `REGISTRY` maps names to kinds. The SDK
takes a handler's kind from its annotated input model (`async def draft(task: DraftInput)`), the
orchestrator's `dispatch_task(kind=DRAFT, payload=DraftInput(...))` returns a `DraftOutput`, so
a model of the wrong kind is a type error, and a test checks that the generic worker and the
CLI's progress cover every kind here.

Adding a kind: its models and one `TaskKind` line below, a handler in `agents/worker.py`, the
phase that sends it, and the progress line in `fabric/cli/federation.py`.

The output models double as the JSON schemas that constrain the LLM (grammar-constrained on
the embedded model, `response_format` on OpenAI-compatible servers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer

from fabric.errors import ProtocolError


def degenerate(text: str) -> bool:
    """Text a looping small model produced: too few distinct words for its length."""
    words = text.lower().replace(".", " ").split()
    return not words or (len(words) >= 8 and len(set(words)) / len(words) < 0.35)


class ProposedSubtask(BaseModel):
    # the length bounds are also grammar bounds when the schema constrains decoding
    id: str = Field(max_length=12, description="short id such as s1")
    text: str = Field(min_length=3, max_length=300, description="one short instruction: what this subtask must produce")
    depends_on: list[str] = Field(
        default_factory=list, max_length=4, description="ids of subtasks whose results it needs"
    )

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


class Turn(BaseModel):
    """An earlier question of the job's conversation and (a summary of) its answer."""

    question: str
    answer: str = ""


class WithHistory(BaseModel):
    """An input that may carry the conversation's earlier turns. Sent only when there are some:
    agents built before conversations (their models forbid unknown fields) still validate the
    inputs of every job that continues no conversation."""

    history: list[Turn] = Field(
        default_factory=list, description="earlier turns of the conversation, oldest first (a follow-up's subject)"
    )

    @model_serializer(mode="wrap")
    def _omit_empty_history(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not data.get("history"):
            data.pop("history", None)
        return data


class DecomposeInput(WithHistory):
    model_config = ConfigDict(extra="forbid")

    question: str
    subtasks_min: int = 2
    subtasks_max: int = 4


class PeerAnswer(BaseModel):
    agent_id: str
    answer: str


class DraftInput(WithHistory):
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
    exact: bool = Field(
        default=False,
        description="a result, not an opinion (a tool's output, a data artifact): kept verbatim to the answer",
    )

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


class SynthesiseInput(BaseModel):
    """Node results, in dependency order, to merge into the job's answer (paper Alg. 5)."""

    model_config = ConfigDict(extra="forbid")

    question: str
    mode: Literal["rebase", "merge"]
    instructions: str = Field(description="how to combine: resolve conflicts (rebase) or merge perspectives (merge)")
    results: list[PeerAnswer] = Field(min_length=1, description="each node's subtask and answer, in dependency order")
    max_tokens: int | None = None


class SynthesiseOutput(BaseModel):
    answer: str = Field(description="the final answer to the question")


InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)

#: a kind's wire name: a topic-safe word (agents' own kinds follow the same rule)
KIND_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


def check_kind_name(name: str) -> str:
    if not isinstance(name, str) or not KIND_NAME.match(name):
        raise ProtocolError(
            f"invalid task kind {name!r}: use a lower-case word such as 'draft' or 'my-kind' (letters, digits, '_.-')"
        )
    return name


@dataclass(frozen=True, eq=False)
class TaskKind(Generic[InT, OutT]):
    """One task kind: its wire name and the models of its input and output."""

    name: str
    input: type[InT]
    output: type[OutT]
    purpose: str

    def __post_init__(self) -> None:
        check_kind_name(self.name)

    @property
    def skill(self) -> str:
        """The skill an agent lists in its spec to declare that it serves this kind on purpose
        (the orchestrator prefers such agents; see `SYNTHESISE`)."""
        return self.name

    def __repr__(self) -> str:
        return f"TaskKind({self.name!r}, {self.input.__name__} -> {self.output.__name__})"


DECOMPOSE: TaskKind[DecomposeInput, Plan] = TaskKind(
    "decompose", DecomposeInput, Plan, "propose subtasks for a question"
)
DRAFT: TaskKind[DraftInput, DraftOutput] = TaskKind("draft", DraftInput, DraftOutput, "answer one subtask")
REFINE: TaskKind[RefineInput, RefineOutput] = TaskKind(
    "refine", RefineInput, RefineOutput, "revise an answer given peers' answers"
)
SYNTHESISE: TaskKind[SynthesiseInput, SynthesiseOutput] = TaskKind(
    "synthesise", SynthesiseInput, SynthesiseOutput,
    "merge node results into one answer (agents that list the skill `synthesise` are preferred; others get a draft)",
)  # fmt: skip

#: every kind the fabric knows, by wire name (read-only)
REGISTRY: Mapping[str, TaskKind[Any, Any]] = MappingProxyType(
    {k.name: k for k in (DECOMPOSE, DRAFT, REFINE, SYNTHESISE)}
)
_BY_INPUT: Mapping[type[BaseModel], TaskKind[Any, Any]] = MappingProxyType({k.input: k for k in REGISTRY.values()})


def kind_of_input(model: type[BaseModel]) -> TaskKind[Any, Any] | None:
    """The registered kind whose input is `model` (None for an agent's own models)."""
    return _BY_INPUT.get(model)
