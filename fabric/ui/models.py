"""The console's HTTP boundary: every request body and response is one of these models.

Nested wire data (a VCV, a job event, a job result, a route response) is carried as the JSON the
fabric publishes, so the console keeps working when a message's Python type changes but its JSON
does not.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fabric.registry import AgentInfo

JobState = Literal["submitted", "running", "completed", "failed", "canceled", "lost"]


class Health(BaseModel):
    broker: str
    connected: bool
    error: str | None = None
    allow_submit: bool
    agents: int
    jobs: int
    refused: dict[int, int] = Field(default_factory=dict, description="requests answered with an error, by HTTP status")
    dropped_events: int = Field(default=0, description="live updates dropped for pages that could not keep up")
    rejected_messages: int = Field(default=0, description="bus messages refused (unparsable, wrong kind or topic)")


class AgentRow(AgentInfo):
    """One line of the agents table (the `foa agents` summary plus reputation and replicas)."""

    reputation: float | None = None
    reputation_jobs: int = 0
    replicas: list[str] = Field(default_factory=list)
    updated_at: float


class AgentDetail(BaseModel):
    row: AgentRow
    vcv: dict[str, Any] = Field(description="the VCV's JSON without its vectors (see `dims`)")
    dims: dict[str, int] = Field(description="length of each vector left out")


class MapPoint(BaseModel):
    agent_id: str
    name: str
    status: str
    reputation: float | None
    x: float
    y: float


class CapabilityMap(BaseModel):
    points: list[MapPoint]
    explained: list[float] = Field(default_factory=list, description="variance share of each of the 2 axes")
    dim: int = 0
    note: str | None = None


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = ""
    policies: list[str] = Field(default_factory=list)
    skills: list[str] = Field(default_factory=list)
    max_cost: float | None = Field(default=None, ge=0)
    deadline_ms: float | None = Field(default=None, ge=0)
    top_k: int = Field(default=5, ge=1, le=50)
    abstain: bool = True

    @field_validator("policies", "skills")
    @classmethod
    def _flags(cls, value: list[str]) -> list[str]:
        return [v.strip() for v in value if v.strip()]


class Gated(BaseModel):
    """An agent that would rank without the query's gates, and the gates it failed."""

    agent_id: str
    score_without_gate: float
    reasons: list[str]


class RouteView(BaseModel):
    response: dict[str, Any] = Field(description="the router's RouteResponse JSON")
    gated: list[Gated] = Field(default_factory=list)
    elapsed_ms: float


class JobSummary(BaseModel):
    job_id: str
    state: JobState
    phase: str
    question: str | None
    created_at: float
    updated_at: float
    tokens: int = 0
    cost: float = 0.0
    events: int = 0
    error: str | None = None
    cancel_requested: bool = False
    conversation_id: str | None = Field(default=None, description="the conversation this job is a turn of")


class ThreadTurn(BaseModel):
    """One job of a conversation, as its thread on a job page shows it."""

    job_id: str
    state: JobState
    question: str | None
    answer: str = Field(default="", description="the answer's first 300 characters")
    created_at: float


class NodeView(BaseModel):
    node_id: str
    text: str
    depends_on: list[str]
    state: Literal["pending", "drafting", "refining", "done"]
    assigned: list[dict[str, Any]] = Field(default_factory=list, description="Match JSON (agent_id, score, factors)")
    drafts: dict[str, str] = Field(default_factory=dict)
    clusters: list[list[str]] = Field(default_factory=list)
    rounds: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per cluster: members, rounds [{round, votes}], stopped, representative",
    )
    representative: str | None = None
    left_out: list[dict[str, Any]] = Field(
        default_factory=list, description="agents the floor left out: agent_id, score (α), floor"
    )
    exact_failed: list[str] = Field(default_factory=list, description="failed exact calls (a tool's error)")


class TimelineItem(BaseModel):
    t: float = Field(description="seconds since the job's first event")
    phase: str
    message: str


class JobDetail(BaseModel):
    summary: JobSummary
    nodes: list[NodeView]
    edges: list[list[str]]
    proposers: list[dict[str, Any]] = Field(default_factory=list)
    plan_note: str = Field(default="", description="direct route, or what the plan check dropped and why")
    dropped: list[dict[str, Any]] = Field(default_factory=list, description="proposed subtasks dropped, with reasons")
    answer: str = ""
    synthesis: dict[str, Any] = Field(default_factory=dict)
    failure_reason: str | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    timeline: list[TimelineItem] = Field(default_factory=list)
    result: dict[str, Any] | None = Field(default=None, description="the JobResult JSON once it arrived")
    thread: list[ThreadTurn] = Field(
        default_factory=list, description="the job's conversation as this console saw it: its turns, oldest first"
    )


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = ""
    policies: list[str] = Field(default_factory=list)
    max_tokens: int | None = Field(default=None, gt=0)
    max_cost: float | None = Field(default=None, ge=0)
    deadline_s: float | None = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict, description="JobOptions JSON overrides")
    conversation_id: str | None = Field(
        default=None, max_length=128, description="continue this conversation (a follow-up from a job's page)"
    )


class Submitted(BaseModel):
    job_id: str


class Problem(BaseModel):
    """Every error answer: what went wrong and what to do."""

    detail: str
