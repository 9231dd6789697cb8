"""FoA's public API: the names a user imports, from one place.

    from foa import Agent, AgentSpec, DraftInput, DraftOutput, Settings

    agent = Agent(AgentSpec(id="echo", description="repeats the subtask"), Settings())

    @agent.handler
    async def draft(task: DraftInput) -> DraftOutput:
        return DraftOutput(answer=task.subtask)

Everything here is covered by the compatibility promise of the package; modules under `fabric`,
`agents` and `router` are the implementation and may move (a test checks that `__all__` lists
exactly what this module exports).
"""

from __future__ import annotations

from agents.host import AgentHost, HostedAgent
from agents.sdk import Agent
from agents.server import TaskFailed, TaskServer
from agents.spec import AgentSpec, SpecError, load_spec, load_specs
from agents.worker import LLMWorker, make_worker
from fabric.bus import Bus, BusError, RequestTimeout
from fabric.client import JobFailed, JobTimeout, cancel_job, new_job_id, submit_and_follow
from fabric.dispatch import Answer, TaskError, dispatch, dispatch_task
from fabric.errors import ConfigError, FoAError, ProtocolError, TransportError
from fabric.llm import BackendPool, ChatMessage, Completion, LLMBackend, LLMError, backend_for
from fabric.llm.embedded import EmbeddedBackend
from fabric.llm.openai_compat import OpenAICompatBackend
from fabric.llm.scripted import ScriptedLLM
from fabric.messages import (
    Budget,
    ClusterSummary,
    DagSummary,
    JobEvent,
    JobOptions,
    JobResult,
    JobUsage,
    Match,
    RouteResponse,
    TaskRequest,
    TaskResult,
    Usage,
)
from fabric.registry import AgentInfo
from fabric.remote import Client, Conversation
from fabric.runtime import NoFederation
from fabric.settings import Settings
from fabric.tasks import (
    DECOMPOSE,
    DRAFT,
    REFINE,
    REGISTRY,
    SYNTHESISE,
    DecomposeInput,
    DraftInput,
    DraftOutput,
    PeerAnswer,
    Plan,
    ProposedSubtask,
    RefineInput,
    RefineOutput,
    SynthesiseInput,
    SynthesiseOutput,
    TaskKind,
)
from fabric.vcv import VCV, Resources

__all__ = [
    # agents
    "Agent",
    "AgentHost",
    "AgentSpec",
    "HostedAgent",
    "LLMWorker",
    "Resources",
    "SpecError",
    "TaskServer",
    "VCV",
    "load_spec",
    "load_specs",
    "make_worker",
    # task kinds and their models
    "DECOMPOSE",
    "DRAFT",
    "REFINE",
    "REGISTRY",
    "SYNTHESISE",
    "Answer",
    "DecomposeInput",
    "DraftInput",
    "DraftOutput",
    "PeerAnswer",
    "Plan",
    "ProposedSubtask",
    "RefineInput",
    "RefineOutput",
    "SynthesiseInput",
    "SynthesiseOutput",
    "TaskKind",
    "TaskRequest",
    "TaskResult",
    "Usage",
    "dispatch",
    "dispatch_task",
    # a running federation
    "AgentInfo",
    "Client",
    "Conversation",
    "RouteResponse",
    # jobs
    "Budget",
    "Bus",
    "ClusterSummary",
    "DagSummary",
    "JobEvent",
    "JobOptions",
    "JobResult",
    "JobUsage",
    "Match",
    "Settings",
    "cancel_job",
    "new_job_id",
    "submit_and_follow",
    # LLM backends
    "BackendPool",
    "ChatMessage",
    "Completion",
    "EmbeddedBackend",
    "LLMBackend",
    "OpenAICompatBackend",
    "ScriptedLLM",
    "backend_for",
    # errors
    "BusError",
    "ConfigError",
    "FoAError",
    "JobFailed",
    "JobTimeout",
    "LLMError",
    "NoFederation",
    "ProtocolError",
    "RequestTimeout",
    "TaskError",
    "TaskFailed",
    "TransportError",
]
