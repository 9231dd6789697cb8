"""Every message body of the fabric (the VCV itself is in vcv.py). `foa schema` prints them all."""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fabric.envelope import Body
from fabric.tasks import REGISTRY, check_kind_name
from fabric.vcv import VCV
from fabric.vectors import Vector


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    calls: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        # both sides are validated already: constructing skips validation (a job adds ~170 of these)
        return Usage.model_construct(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost=self.cost + other.cost,
            calls=self.calls + other.calls,
        )


# --- agents -------------------------------------------------------------------------------


class AgentStatus(Body):
    KIND: ClassVar[str] = "status"

    agent_id: str
    status: Literal["online", "offline"]
    replica_id: str | None = None
    at: float = Field(default_factory=time.time)


class TaskRequest(Body):
    """Work sent to `foa/agents/{id}/tasks`; the answer goes to the envelope's reply_to.

    `task_kind` is a name on the wire: one of `fabric.tasks.REGISTRY` (whose models then type
    `input` and the result's `output`) or one of the agent's own kinds."""

    KIND: ClassVar[str] = "task"

    task_id: str
    task_kind: str = Field(description=f"one of {sorted(REGISTRY)} or a kind the agent declares")
    agent_id: str
    node_id: str | None = None
    input: dict[str, Any] = Field(default_factory=dict)
    deadline_at: float | None = Field(default=None, description="epoch seconds; a late task is dropped")
    max_tokens: int | None = None

    _kind = field_validator("task_kind")(classmethod(lambda cls, v: check_kind_name(v)))


class TaskResult(Body):
    KIND: ClassVar[str] = "task_result"

    task_id: str
    agent_id: str
    replica_id: str | None = None
    ok: bool = True
    output: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_ms: float = 0.0


class ErrorReply(Body):
    """A request that could not be served: the requester gets this instead of a timeout."""

    KIND: ClassVar[str] = "error"

    code: str
    message: str


# --- routing ------------------------------------------------------------------------------


class RouteQuery(Body):
    KIND: ClassVar[str] = "route_query"

    text: str
    top_k: int = Field(default=5, ge=1, le=1000)
    policies: list[str] = Field(default_factory=list, description="required clearances (hard gate)")
    skills: list[str] = Field(default_factory=list, description="required skills (hard gate)")
    max_cost: float | None = Field(default=None, description="remaining budget for this task")
    deadline_ms: float | None = Field(default=None, description="latest acceptable expected latency")
    input_tokens: int = Field(default=500, ge=0, description="expected prompt size, for cost estimates")
    output_tokens: int = Field(default=300, ge=0, description="expected answer size")
    exclude: list[str] = Field(default_factory=list)
    abstain: bool = Field(default=True, description="answer 'no capable agent' below the calibrated threshold")
    vector: Vector | None = Field(
        default=None,
        description="`text` embedded (unit length) by a sender that has it: a router of the same "
        "`embedding_model` routes by it instead of embedding `text` again (issue 22: ~4.5 ms of CPU)",
    )
    embedding_model: str = Field(default="", description="the model `vector` comes from")

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("route query text is empty")
        return value

    @field_validator("max_cost", "deadline_ms")
    @classmethod
    def _non_negative(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError("must not be negative")
        return value


class Match(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: str
    version: int
    score: float
    factors: dict[str, float] = Field(default_factory=dict)
    expected_cost: float = 0.0
    expected_latency_ms: float = 0.0


class RouteResponse(Body):
    KIND: ClassVar[str] = "route_response"

    matches: list[Match] = Field(default_factory=list)
    abstained: bool = False
    threshold: float | None = None
    candidates_considered: int = 0
    blocked: int = 0


class SubtaskQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subtask_id: str
    text: str
    policies: list[str] = Field(default_factory=list)
    skills: list[str] = Field(default_factory=list)
    min_agents: int = Field(default=1, ge=1)
    max_agents: int = Field(default=1, ge=1)
    max_cost: float | None = None
    deadline_ms: float | None = None
    vector: Vector | None = Field(default=None, description="`text` embedded, as RouteQuery.vector")


class AssignQuery(Body):
    KIND: ClassVar[str] = "assign_query"

    subtasks: list[SubtaskQuery] = Field(min_length=1)
    candidates_per_subtask: int = Field(default=10, ge=1, le=200)
    exclude: list[str] = Field(default_factory=list)
    embedding_model: str = Field(default="", description="the model the subtasks' vectors come from")


class AssignResponse(Body):
    KIND: ClassVar[str] = "assign_response"

    assignments: dict[str, list[Match]] = Field(default_factory=dict)
    objective: float = 0.0
    solver: str = ""
    unassigned: list[str] = Field(default_factory=list)
    threshold: float | None = Field(default=None, description="the router's calibrated abstention threshold")


class AuditEvent(Body):
    """A policy (or other hard) gate removed a candidate that would have ranked in the top k."""

    KIND: ClassVar[str] = "audit"

    query_id: str
    agent_id: str
    gate: Literal["policy", "skills", "budget", "deadline", "signature", "acl"]
    detail: str
    score_without_gate: float | None = None
    factors: dict[str, float] = Field(
        default_factory=dict, description="α's factors for the blocked agent (sim, learned_lift, lexical, ...)"
    )
    at: float = Field(default_factory=time.time)


class Reputation(Body):
    """An agent's track record, retained on `foa/reputation/{agent_id}`; routers multiply it into α."""

    KIND: ClassVar[str] = "reputation"

    agent_id: str
    score: float = Field(ge=0, le=1, description="smoothed quality of past contributions; 0.5 = unknown")
    jobs: int = Field(default=0, ge=0)
    by_area: dict[str, float] = Field(default_factory=dict)
    at: float = Field(default_factory=time.time)


class RouterStatusQuery(Body):
    """Ask a router replica how it stands (`foa route --status`, the console's /api/router)."""

    KIND: ClassVar[str] = "router_status_query"


class RouterStatus(Body):
    """One router replica's state: its agents, counters, the abstention in force with its
    provenance (where the calibration came from) and what it has learned from outcomes."""

    KIND: ClassVar[str] = "router_status"

    agents: int
    synced: bool
    embedding_model: str
    counters: dict[str, int] = Field(default_factory=dict)
    abstention: dict[str, Any] = Field(default_factory=dict)
    learning: dict[str, Any] = Field(default_factory=dict)


class NodeOutcome(Body):
    """How one subtask of a job went, published by the orchestrator that ran it on
    `foa/router/outcomes`; routers learn from it which agents do such subtasks well (router/learning.py).

    Only orchestrators may publish it (the broker's ACL; with keys configured, a signature by the
    `orchestrator` key in the routers' trust store): an agent never reports its own success."""

    KIND: ClassVar[str] = "node_outcome"

    job_id: str
    node_id: str
    subtask: str = Field(default="", max_length=4000)
    vector: Vector | None = Field(
        default=None,
        description="the subtask's embedding (unit length) when the orchestrator has it; "
        "else the router embeds `subtask`",
    )
    embedding_model: str = ""
    assigned: list[str] = Field(default_factory=list, max_length=64, description="the agents that drafted it")
    kept: list[str] = Field(
        default_factory=list, max_length=64, description="the agents whose answer was kept (the winning cluster)"
    )
    completed: bool = Field(description="whether the job completed: only completed jobs teach the router")
    signer: str | None = Field(default=None, description="the trust-store name of the signing key")
    public_key: str | None = None
    signature: str | None = None
    at: float = Field(default_factory=time.time)

    def signing_bytes(self) -> bytes:
        """What the signature covers: every field but the signature itself."""
        return self.model_dump_json(exclude={"signature"}).encode()


# --- jobs ---------------------------------------------------------------------------------


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, gt=0)
    max_cost: float | None = Field(default=None, ge=0)
    deadline_s: float | None = Field(default=None, gt=0, description="wall-clock limit for the whole job")


class JobOptions(BaseModel):
    """Per-job overrides of the orchestrator's paper defaults."""

    model_config = ConfigDict(extra="forbid")

    max_proposers: int | None = Field(default=None, ge=1)
    subtasks_max: int | None = Field(default=None, ge=1)
    agents_per_node: int | None = Field(default=None, ge=1)
    refine_rounds: int | None = Field(default=None, ge=0)
    clustering: bool = True
    routing: Literal["routed", "random"] = "routed"
    synth_mode: Literal["concat", "rebase", "merge"] | None = None
    max_tokens_per_call: int | None = Field(default=None, ge=8)
    plan: Literal["auto", "always", "never"] | None = Field(
        default=None, description="auto: a direct route when one agent fits the whole question; None = FOA_PLAN"
    )


class JobSubmit(Body):
    KIND: ClassVar[str] = "job_submit"

    job_id: str
    question: str = Field(min_length=1)
    policies: list[str] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)
    options: JobOptions = Field(default_factory=JobOptions)
    conversation_id: str | None = Field(
        default=None,
        max_length=128,
        description="continue this conversation (its recent turns reach routing, planning and drafting); "
        "unset = the job starts a new conversation, named in its result",
    )


class JobEvent(Body):
    KIND: ClassVar[str] = "job_event"

    job_id: str
    seq: int
    phase: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict)
    at: float = Field(default_factory=time.time)


class DagSummaryNode(BaseModel):
    id: str
    text: str
    support: int
    proposers: list[str] = Field(default_factory=list)


class DagSummary(BaseModel):
    """The job's plan as results and progress events show it."""

    nodes: list[DagSummaryNode] = Field(default_factory=list)
    edges: list[tuple[str, str]] = Field(default_factory=list, description="(dependency, dependent) pairs")

    def depends_on(self, node_id: str) -> list[str]:
        return [src for src, dst in self.edges if dst == node_id]


class ClusterSummary(BaseModel):
    """How one cluster's refinement went."""

    members: list[str]
    rounds: int
    stopped: str = Field(description="consensus | max_rounds | budget | single | failed")
    representative: str
    votes: list[dict[str, bool]] = Field(default_factory=list, description="each round's stop votes")


class JobUsage(BaseModel):
    """What a job spent (so far, for a failed or canceled job), and how it ended up."""

    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    calls: int = 0
    synth_mode: str = ""
    failures: list[str] = Field(default_factory=list, description="calls and nodes that failed without failing the job")

    @classmethod
    def of(cls, used: Usage, *, synth_mode: str = "", failures: list[str] | None = None) -> JobUsage:
        return cls(
            tokens=used.tokens,
            input_tokens=used.input_tokens,
            output_tokens=used.output_tokens,
            cost=round(used.cost, 6),
            calls=used.calls,
            synth_mode=synth_mode,
            failures=list(failures or []),
        )


class JobResult(Body):
    KIND: ClassVar[str] = "job_result"

    job_id: str
    status: Literal["completed", "failed", "canceled"]
    answer: str = ""
    conversation_id: str | None = Field(
        default=None, description="the conversation this job is a turn of: pass it with a follow-up question"
    )
    failure_reason: str | None = None
    dag: DagSummary = Field(default_factory=DagSummary)
    assignments: dict[str, list[Match]] = Field(default_factory=dict, description="node -> the agents that drafted it")
    clusters: dict[str, list[list[str]]] = Field(default_factory=dict, description="node -> its clusters' members")
    rounds: dict[str, dict[str, ClusterSummary]] = Field(
        default_factory=dict, description="node -> cluster -> refinement"
    )
    usage: JobUsage = Field(default_factory=JobUsage)
    warnings: list[str] = Field(
        default_factory=list,
        description="what the reader of the answer must know: a subtask no agent fits above the abstention "
        "threshold was answered by the best agent there is (its part of the answer is a guess)",
    )
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="seconds per phase (decompose, assign, execute, synthesise) and `total`; `path.<kind>`: the "
        "job's wall time by kind of work, `hops.<wait>`: sequential round trips (fabric/orchestrator/critical_path.py)",
    )


class JobCancel(Body):
    """Ask the orchestrator that owns a job to stop it: pending calls are abandoned and the job
    ends `canceled` with its usage so far. Cancelling twice, or a finished job, is harmless."""

    KIND: ClassVar[str] = "job_cancel"

    job_id: str
    reason: str = Field(default="", max_length=500)


class ChannelMessage(Body):
    """One agent's turn on a cluster channel during refinement."""

    KIND: ClassVar[str] = "channel"

    cluster_id: str
    node_id: str
    round: int = Field(ge=0)
    agent_id: str
    answer: str
    vote_done: bool = False
    confidence: float = Field(default=0.5, ge=0, le=1)
    provenance: list[str] = Field(default_factory=list)


ALL_BODIES: list[type[Body]] = [
    VCV,
    AgentStatus,
    TaskRequest,
    TaskResult,
    ErrorReply,
    RouteQuery,
    RouteResponse,
    AssignQuery,
    AssignResponse,
    AuditEvent,
    Reputation,
    JobSubmit,
    JobEvent,
    JobResult,
    JobCancel,
    ChannelMessage,
]
