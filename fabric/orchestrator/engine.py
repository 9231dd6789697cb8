"""One job, top to bottom: job in → DAG → assignments → drafts → channels → answer out.

`JobRunner.run()` is the whole data path of the paper (Algorithms 1–5). It talks to the
federation only through `Ports` (route, assign, call an agent, embed, publish), so the same code
runs over MQTT in production and over in-process stand-ins in unit tests. Every phase writes a
checkpoint to the job store before moving on; `run()` on a job with checkpoints resumes it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, Field

from fabric.aio import wait_within
from fabric.arithmetic import ARITHMETIC_SKILL, is_arithmetic
from fabric.dispatch import Answer, TaskError
from fabric.envelope import child_traceparent, trace_id_of
from fabric.errors import FoAError
from fabric.messages import (
    AssignQuery,
    AssignResponse,
    ChannelMessage,
    ClusterSummary,
    DagSummary,
    JobEvent,
    JobResult,
    JobSubmit,
    JobUsage,
    Match,
    NodeOutcome,
    Reputation,
    RouteQuery,
    RouteResponse,
    SubtaskQuery,
    Usage,
)
from fabric.orchestrator.budget import BudgetTracker
from fabric.orchestrator.clusters import Member, cluster_members
from fabric.orchestrator.consensus import (
    ClusterOutcome,
    RoundRecord,
    pick_node_answer,
    refine_cluster,
    summarise_rounds,
)
from fabric.orchestrator.conversation import agent_history, history_refused, prefer_context, routing_text
from fabric.orchestrator.critical_path import CriticalPath
from fabric.orchestrator.dag import Dag, DagNode, clean_plan, merge_proposals
from fabric.orchestrator.direct import PlanMode, question_parts, route_directly
from fabric.orchestrator.exactness import carry_exact, is_exact_agent
from fabric.orchestrator.floor import FloorCut, apply_floor, floor_of
from fabric.orchestrator.plan_check import check_plans
from fabric.orchestrator.reputation import ReputationBook
from fabric.orchestrator.store import ANSWER_SUMMARY_CHARS, ConversationTurn, JobStore, conversation_of
from fabric.orchestrator.synthesis import INSTRUCTIONS, predecessor_context, synthesis_results, synthesise
from fabric.settings import Settings
from fabric.tasks import (
    DECOMPOSE,
    DRAFT,
    REFINE,
    SYNTHESISE,
    DecomposeInput,
    DraftInput,
    InT,
    OutT,
    Plan,
    RefineInput,
    RefineOutput,
    SynthesiseInput,
    TaskKind,
    WithHistory,
)
from fabric.vcv import VCV
from fabric.vectors import FloatVector

log = logging.getLogger("foa.orchestrator")
T = TypeVar("T")


class Ports(Protocol):
    """What a job needs from the federation."""

    async def route(self, query: RouteQuery) -> RouteResponse: ...
    async def assign(self, query: AssignQuery) -> AssignResponse: ...
    async def call(
        self,
        agent_id: str,
        kind: TaskKind[InT, OutT],
        payload: InT,
        *,
        job_id: str,
        node_id: str | None,
        timeout: float,
        max_tokens: int | None,
        traceparent: str | None = None,
    ) -> Answer[OutT]: ...
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...
    async def embed_ahead(self, texts: Sequence[str]) -> np.ndarray: ...
    def vcv(self, agent_id: str) -> VCV | None: ...
    def live_agents(self) -> list[VCV]: ...
    async def emit(self, event: JobEvent) -> None: ...
    async def channel(self, message: ChannelMessage) -> None: ...
    async def publish_reputation(self, record: Reputation) -> None: ...
    async def publish_outcome(self, outcome: NodeOutcome) -> None: ...


class NodeFailed(FoAError, RuntimeError):
    """A subtask no agent could answer (or the budget ran out): the job fails with this reason."""


class NodeResult(BaseModel):
    """One subtask's outcome, checkpointed as `node:{id}` and read by the phases after it."""

    answer: str
    by: str = Field(description="the agent whose answer represents the node")
    cluster: str | None = Field(
        default=None, description="the winning cluster (None: kept the best draft after a timeout)"
    )
    clusters: dict[str, ClusterSummary] = Field(default_factory=dict)
    exact: str | None = Field(default=None, description="the exact result (a tool's output), carried verbatim")
    exact_failures: list[str] = Field(default_factory=list, description="failed exact calls: 'agent: message'")


async def gather_all(aws: list[Coroutine[Any, Any, T]]) -> list[T]:
    """asyncio.gather, but a lone coroutine is awaited in place: no task for the common case of
    one proposer, one drafter or one cluster (a task costs more than the rest of a small step)."""
    if len(aws) == 1:
        return [await aws[0]]
    return list(await asyncio.gather(*aws))


class JobRunner:
    def __init__(
        self,
        submit: JobSubmit,
        ports: Ports,
        settings: Settings,
        store: JobStore,
        reputation: ReputationBook,
        *,
        traceparent: str | None = None,
        fresh: bool = False,
        history: Sequence[ConversationTurn] = (),
    ) -> None:
        """`fresh`: just admitted, so there is nothing to resume (skips two store reads).
        `history`: the earlier turns of the job's conversation (conversation.py), oldest first."""
        self.job = submit
        self.conversation_id = conversation_of(submit)
        self.history = list(history)
        # a conversation's clearances carry over: an agent that gets its earlier turns must hold them
        self.policies = sorted(set(submit.policies).union(*(t.policies for t in self.history)))
        # routing may see the conversation's subject (decided in decompose(), conversation.py); the
        # question shown, planned and drafted stays the user's
        self.routing_text = submit.question
        # one trace per job: every task sent for it carries a child span of the submitter's trace
        self.traceparent = child_traceparent(traceparent)
        self.ports = ports
        self.settings = settings
        self.store = store
        self.reputation = reputation
        opts = submit.options
        self.max_proposers = opts.max_proposers or settings.max_proposers
        self.subtasks_max = opts.subtasks_max or settings.subtasks_max
        self.agents_per_node = opts.agents_per_node or settings.agents_per_node
        self.rounds = settings.refine_rounds if opts.refine_rounds is None else opts.refine_rounds
        self.synth_mode = opts.synth_mode or settings.synth_mode
        self.max_tokens = opts.max_tokens_per_call or settings.llm_max_tokens
        self.plan_mode: PlanMode = opts.plan or settings.plan
        saved = {} if fresh else store.checkpoints(submit.job_id)
        self.saved = saved
        self.routing_text = str(saved.get("routing_text", self.routing_text))
        self.budget = BudgetTracker(
            submit.budget,
            started_at=saved.get("started_at"),
            used=Usage.model_validate(saved["usage"]) if "usage" in saved else None,
        )
        self.timings: dict[str, float] = dict(saved.get("timings", {}))
        self._seq = 1 if fresh else store.next_seq(submit.job_id)
        self._contributions: list[tuple[str, str, str]] = []  # (agent, node, final answer)
        self._vectors: dict[str, np.ndarray] = {}  # text -> embedding, this run (node outcomes reuse them)
        self._failures: list[str] = []
        self.warnings: list[str] = list(saved.get("warnings", []))  # JobResult.warnings (a resumed job keeps them)
        self._drafts: dict[str, dict[str, tuple[str, float]]] = {}  # node -> agent -> (draft, confidence)
        self._exact: dict[str, dict[str, str]] = {}  # node -> agent -> its exact draft (exactness.py)
        self._pending_nodes: set[str] = set()  # nodes whose drafting has not started
        self.dag: Dag | None = None
        self.cancel_reason: str | None = None
        self._ending = False  # past the phases: too late to cancel
        self.outcomes: dict[str, list[ClusterOutcome]] = {}  # node -> its clusters' refinement, this run
        # where this run's wall time goes, by kind of work (`path.*`/`hops.*` timings; critical_path.py)
        self.path = CriticalPath(store_busy=lambda: store.busy_s)

    def cancel(self, reason: str) -> bool:
        """Mark the job canceled. True: the caller should now cancel the task running `run()`,
        which abandons pending calls and ends the job `canceled` with its usage so far (a job not
        started yet ends so at once). False: already canceled, or past its last phase."""
        if self.cancel_reason is not None or self._ending:
            return False
        self.cancel_reason = reason or "canceled"
        return True

    # ---- the data path -------------------------------------------------------------------

    async def run(self) -> JobResult:
        job = self.job
        self.store.set_state(job.job_id, "running", "start")
        self.store.checkpoint(job.job_id, "started_at", self.budget.started_at)
        if self.cancel_reason is not None:  # canceled before it started
            self._ending = True
            return await self._finish(self._ended("canceled", self.cancel_reason))
        try:
            dag = self.dag = await self._phase("decompose", self.decompose)
            assignments = await self._phase("assign", lambda: self.assign(dag))
            node_results = await self._phase("execute", lambda: self.execute(dag, assignments))
            answer, synth_mode = await self._phase("synthesise", lambda: self.synthesise(dag, node_results))
        except asyncio.CancelledError:
            if self.cancel_reason is None:
                raise  # the orchestrator is stopping: the job resumes from its checkpoints
            self._ending = True
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # handled: later awaits (publishing the result) must not see it
            log.info("job canceled", extra={"job_id": job.job_id, "reason": self.cancel_reason})
            return await self._finish(self._ended("canceled", self.cancel_reason))
        except Exception as exc:  # noqa: BLE001 - every job ends with an explicit reason
            self._ending = True
            log.exception("job failed", extra={"job_id": job.job_id})
            return await self._finish(self._ended("failed", f"{type(exc).__name__}: {exc}"))
        self._ending = True
        await self._update_reputations(node_results)
        await self._publish_outcomes(dag, assignments, node_results)
        result = JobResult(
            job_id=job.job_id,
            status="completed",
            answer=answer,
            conversation_id=self.conversation_id,
            dag=dag.summary(),
            assignments=assignments,
            clusters={n: [c.members for c in r.clusters.values()] for n, r in node_results.items()},
            rounds={n: r.clusters for n, r in node_results.items()},
            usage=JobUsage.of(self.budget.used, synth_mode=synth_mode, failures=self._failures),
            warnings=self.warnings,
            timings=self.timings,
        )
        return await self._finish(result)

    def _ended(self, status: Literal["failed", "canceled"], reason: str) -> JobResult:
        """A job that did not complete: its reason, its plan if it got one, what it spent so far."""
        return JobResult(
            job_id=self.job.job_id,
            status=status,
            conversation_id=self.conversation_id,
            failure_reason=reason,
            dag=self.dag.summary() if self.dag is not None else DagSummary(),
            usage=JobUsage.of(self.budget.used, failures=self._failures),
        )

    async def _phase(self, name: str, fn: Callable[[], Awaitable[T]]) -> T:
        self.store.set_state(self.job.job_id, "running", name)
        started = time.perf_counter()
        out = await fn()
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - started, 4)
        self.store.checkpoint(self.job.job_id, "timings", self.timings)
        return out

    # ---- phase 1: compatible agents propose, proposals merge into a DAG ---------------------

    async def decompose(self) -> Dag:
        job = self.job
        if "dag" in self.saved:
            dag = Dag.model_validate(self.saved["dag"])
            await self.emit(
                "decompose",
                f"resumed with a {len(dag.nodes)}-node plan",
                {"dag": dag.summary().model_dump(mode="json")},
            )
            return dag
        if self.plan_mode != "always" and is_arithmetic(job.question) and (exact := await self._arithmetic_route()):
            return await self._direct(exact, skills=[ARITHMETIC_SKILL])
        route = await self._route_question()
        # plan only when needed: a question one agent clearly fits goes to it verbatim (direct.py),
        # unless a part of it fits another agent ("..., and calculate 12 * 12")
        if route_directly(self.plan_mode, route.matches, threshold=route.threshold, margin=self.settings.direct_margin):
            parts, elsewhere = ([], []) if self.plan_mode == "never" else await self._parts_elsewhere(route)
            if not elsewhere:
                return await self._direct(route)
            return await self._parts_plan(route, parts, elsewhere)
        # τ is the paper's *similarity* threshold (App. C), so it applies to the sim factor of α
        compatible = [m for m in route.matches if m.factors.get("sim", m.score) >= self.settings.compat_threshold]
        if not compatible:  # the paper's fallback: top-K by similarity
            compatible = route.matches[: self.settings.compat_top_k]
        cut = apply_floor(compatible[: self.max_proposers], fraction=self.settings.assign_floor, threshold=None)
        proposers = cut.kept
        if len(proposers) > 1 and not self.budget.allows(tokens=len(proposers) * 2 * self.max_tokens):
            proposers = proposers[:1]
        await self.emit(
            "decompose",
            f"{len(proposers)} of {len(route.matches)} candidate agents propose a plan"
            + (f"; left out {', '.join(lo.why() for lo in cut.left_out)}" if cut.left_out else ""),
            {
                "proposers": [{"agent_id": m.agent_id, "score": round(m.score, 3)} for m in proposers],
                "left_out": [lo.model_dump() for lo in cut.left_out],
            },
        )
        payload = DecomposeInput(
            question=job.question,
            subtasks_min=self.settings.subtasks_min,
            subtasks_max=self.subtasks_max,
            history=agent_history(self.history),
        )

        async def propose(match: Match) -> tuple[str, Plan] | None:
            try:
                res = await self._call(match.agent_id, DECOMPOSE, payload, None)
                return match.agent_id, clean_plan(res.output, self.subtasks_max)
            except Exception as exc:  # noqa: BLE001 - a bad proposal is skipped, not fatal
                self._failures.append(f"decompose by {match.agent_id}: {exc}")
                return None

        proposals = [p for p in await gather_all([propose(m) for m in proposers]) if p]
        await self._embed_ahead([self.routing_text, *(sub.text for _, plan in proposals for sub in plan.subtasks)])
        # every subtask must be an instruction about the question (plan_check.py)
        proposals, dropped = check_plans(
            self.routing_text,
            proposals,
            self._embed,
            similarity_floor=self.settings.plan_similarity_floor,
            verbatim=job.question,
        )
        if dropped:
            await self.emit(
                "plan_check",
                f"dropped {len(dropped)} proposed subtask(s): "
                + "; ".join(f"{d.text[:40]!r} ({d.reason})" for d in dropped),
                {"dropped": [d.model_dump() for d in dropped]},
            )
        if proposals:
            with self.path.doing("cluster"):
                dag = merge_proposals(
                    proposals,
                    self._embed,
                    merge_similarity=self.settings.merge_similarity,
                    subtasks_max=self.subtasks_max,
                )
        else:
            dag = Dag.single(job.question)
        self.store.checkpoint(job.job_id, "dag", dag.model_dump())
        await self.emit(
            "decompose",
            f"plan: {len(dag.nodes)} subtasks, {len(dag.edges)} dependencies"
            if proposals
            else "plan: no usable proposal; the question verbatim as one node",
            {"dag": dag.summary().model_dump(mode="json"), "proposals": len(proposals)},
        )
        return dag

    async def _parts_elsewhere(self, route: RouteResponse) -> tuple[list[str], list[tuple[str, Match]]]:
        """(the question's parts, those whose best agent is another capable one than the
        question's). A question asking several things (`question_parts`) whose parts fit
        different agents is not sent whole to one agent, which would answer part of it.
        `benchmarks/plan_route.py --json`: no change on BFCL's single-intent questions (dev 0.16
        direct, held-out live_simple 0.143), held-out NESTFUL multi-step questions sent directly
        0.05 -> 0.03."""
        if self.history:  # a follow-up is routed with its subject in front: its parts alone lack it
            return [], []
        parts = question_parts(self.job.question)
        if len(parts) < 2 or not route.matches:
            return parts, []
        await self._embed_ahead(parts)
        queries = [self._vector_query(part, 1) for part in parts]
        answers = await self.path.waiting("router", asyncio.gather(*(self.ports.route(q) for q in queries)))
        best, floor = route.matches[0].agent_id, route.threshold or 0.0
        return parts, [
            (part, r.matches[0])
            for part, r in zip(parts, answers, strict=True)
            if r.matches and r.matches[0].agent_id != best and r.matches[0].score >= floor
        ]

    async def _parts_plan(self, route: RouteResponse, parts: list[str], elsewhere: list[tuple[str, Match]]) -> Dag:
        """The question's own parts as the plan, one node each: its structure already says what the
        agents should do, and the embedded 135M planner, asked for one, gave "Translate 'good
        morning' into French, and calculate 12 * 12." back whole (no valid plan: the fallback)."""
        dag = Dag.of_parts(parts)
        self.store.checkpoint(self.job.job_id, "dag", dag.model_dump())
        await self.emit(
            "decompose",
            f"plan: the question's {len(parts)} parts; {route.matches[0].agent_id} fits it as a whole, but "
            + "; ".join(f"{part!r} fits {m.agent_id} (α {m.score:.3f})" for part, m in elsewhere),
            {
                "parts": True,
                "parts_elsewhere": [
                    {"part": part, "agent_id": m.agent_id, "score": round(m.score, 6)} for part, m in elsewhere
                ],
                "dag": dag.summary().model_dump(mode="json"),
            },
        )
        return dag

    def _vector_query(self, text: str, top_k: int) -> RouteQuery:
        """A route query carrying the text's vector, embedded here, not by the router: the plan
        check embeds the question anyway (the cache answers it then), so one embedding serves both."""
        vector = FloatVector.of(self._embed([text])[0])
        return RouteQuery(text=text, top_k=top_k, policies=self.policies, abstain=False, vector=vector)

    async def _route_question(self) -> RouteResponse:
        """Route the question; a follow-up also with its conversation's subject in front, keeping
        that when it fits clearly better (conversation.py). Both queries go out together."""
        job = self.job

        def query(text: str) -> RouteQuery:
            return self._vector_query(text, max(self.settings.compat_top_k, self.max_proposers * 2))

        framed_text = routing_text(job.question, self.history) if self.history else job.question
        await self._embed_ahead([job.question, framed_text])
        if not self.history:
            return await self.path.waiting("router", self.ports.route(query(job.question)))
        alone, framed = await self.path.waiting(
            "router", asyncio.gather(self.ports.route(query(job.question)), self.ports.route(query(framed_text)))
        )
        use = prefer_context(alone, framed)
        self.routing_text = framed_text if use else job.question
        self.store.checkpoint(job.job_id, "routing_text", self.routing_text)
        best = {k: (r.matches[0].agent_id, round(r.matches[0].score, 4)) if r.matches else None
                for k, r in (("alone", alone), ("with_context", framed))}  # fmt: skip
        await self.emit(
            "conversation",
            f"follow-up in conversation {self.conversation_id} ({len(self.history)} earlier turn(s)): routed "
            + (f"with its subject, as {framed_text[:100]!r}" if use else "on its own (it names its subject)")
            + f"; best alone {best['alone']}, with context {best['with_context']}"
            + (f"; policies of the conversation: {self.policies}" if self.policies != sorted(job.policies) else ""),
            {
                "conversation_id": self.conversation_id,
                "policies": self.policies,
                "turns": [t.job_id for t in self.history],
                "with_context": use,
                "routing_text": self.routing_text,
                "best": best,
            },
        )
        return framed if use else alone

    async def _arithmetic_route(self) -> RouteResponse | None:
        """The question is one arithmetic expression, a percentage of a number or the days between
        two dates: the agents with the `arithmetic` skill, if the federation has any (None: route
        as any question).

        Why: MiniLM places a bare expression near nothing in particular. With the shipped agents,
        "What is 240 * 0.15?" routed to the summariser first (α 0.016, the mathematician 0.015)
        and "What is 15% of 240?" had no mathematician in its top 3; the plan then made "The
        answer is: 17." its subtask. The skill is a gate, so the mathematician's exact tool gets
        the question whatever its similarity."""
        query = self._vector_query(self.job.question, self.max_proposers * 2)
        query = query.model_copy(update={"skills": [ARITHMETIC_SKILL]})
        route = await self.path.waiting("router", self.ports.route(query))
        return route if route.matches else None

    async def _direct(self, route: RouteResponse, skills: list[str] | None = None) -> Dag:
        """The one-node plan with the question verbatim, for the agent that fits it as a whole
        (`skills`: what the node's agents must have, when the question's form asked for them)."""
        dag = Dag.single(self.job.question, skills)
        best = route.matches[0]
        second = route.matches[1].score if len(route.matches) > 1 else 0.0
        self.store.checkpoint(self.job.job_id, "dag", dag.model_dump())
        if skills:
            why = f"the question is arithmetic: an agent with skill {skills[0]!r}, α {best.score:.3f}"
        elif self.plan_mode == "never":
            why = "--plan never"
        else:
            why = f"α {best.score:.3f}, next {second:.3f}"
        await self.emit(
            "decompose",
            f"direct: {best.agent_id} fits the whole question ({why}); no plan",
            {
                "direct": True,
                **({"skills": skills} if skills else {}),
                "agent_id": best.agent_id,
                "score": round(best.score, 6),
                "second": round(second, 6),
                "threshold": route.threshold,
                "dag": dag.summary().model_dump(mode="json"),
            },
        )
        return dag

    # ---- assignment: 1..r_i agents per node, policy-gated and cost-biased -----------------------

    async def assign(self, dag: Dag) -> dict[str, list[Match]]:
        job = self.job
        if "assignments" in self.saved:
            return {n: [Match.model_validate(m) for m in ms] for n, ms in self.saved["assignments"].items()}
        per_node_cost = self.budget.cost_left / max(1, len(dag.nodes)) if job.budget.max_cost is not None else None
        cuts: dict[str, FloorCut] = {}
        if job.options.routing == "random":
            assignments = self._random_assignment(dag)
        else:
            texts = [self._route_text(n.text) for n in dag.nodes]
            await self._embed_ahead(texts)
            vecs = self._embed(texts)  # merging the proposals embedded them: the cache answers
            response = await self.path.waiting(
                "router",
                self.ports.assign(
                    AssignQuery(
                        subtasks=[
                            SubtaskQuery(
                                subtask_id=n.node_id,
                                text=text,
                                policies=self.policies,
                                skills=n.skills,
                                min_agents=1,
                                max_agents=self.agents_per_node,
                                max_cost=per_node_cost,
                                vector=FloatVector.of(vec),
                            )
                            for n, text, vec in zip(dag.nodes, texts, vecs, strict=True)
                        ],
                        candidates_per_subtask=max(10, self.agents_per_node * 3),
                    )
                ),
            )
            assignments, cuts = self._floor(response)
            missing = [n.node_id for n in dag.nodes if not assignments.get(n.node_id)]
            if missing:
                raise NodeFailed(f"no capable agent for subtasks {missing} under policies {self.policies}")
            # a node whose skills the question's form asked for (an arithmetic question) fits its
            # agents by that skill, whatever α says: its exact answer is no "guess"
            gated = {n.node_id for n in dag.nodes if n.skills}
            unfit = [n for n, c in cuts.items() if c.unfit and n not in gated]
            if unfit:  # reported, not silently given to the least-bad agent
                await self._unfit(dag, unfit, cuts, assignments, response.threshold)
        self.store.checkpoint(
            job.job_id, "assignments", {n: [m.model_dump(mode="json") for m in ms] for n, ms in assignments.items()}
        )
        left_out = {n: [lo.model_dump() for lo in c.left_out] for n, c in cuts.items() if c.left_out}
        await self.emit(
            "assign",
            "assigned " + ", ".join(f"{n}: {[m.agent_id for m in ms]}" for n, ms in assignments.items())
            + (f"; left out {sum(map(len, left_out.values()))} below the floor" if left_out else ""),
            {
                "assignments": {
                    n: [{"agent_id": m.agent_id, "score": round(m.score, 3), "factors": m.factors} for m in ms]
                    for n, ms in assignments.items()
                },
                "left_out": left_out,
                "floors": {n: round(c.floor, 6) for n, c in cuts.items()},
            },
        )
        return assignments

    async def _unfit(
        self, dag: Dag, unfit: list[str], cuts: dict[str, FloorCut], assignments: dict[str, list[Match]],
        threshold: float | None,
    ) -> None:
        """Subtasks no agent fits above the abstention threshold leave the plan while other
        subtasks remain (the question is still covered); a plan of only such subtasks runs, flagged."""
        best = {n: f"{cuts[n].kept[0].agent_id} α {cuts[n].kept[0].score:.3g}" for n in unfit}
        drop = set(unfit) if len(unfit) < len(dag.nodes) else set()
        if drop:
            dag.drop(drop)
            for n in drop:
                assignments.pop(n, None)
                cuts.pop(n, None)
            self.store.checkpoint(self.job.job_id, "dag", dag.model_dump())
        else:  # the user reads the answer, not the events: the result says it is a guess
            for n in unfit:
                self.warnings.append(
                    f"no agent fits {n} ({dag.node(n).text[:80]!r}) above the abstention threshold "
                    f"({threshold or 0:.3g}; best {best[n]}): its answer is that agent's guess"
                )
            self.store.checkpoint(self.job.job_id, "warnings", self.warnings)
        await self.emit(
            "unfit",
            f"no agent fits {unfit} above the abstention threshold ({threshold or 0:.3g}; best: {best}): "
            + ("dropped from the plan" if drop else "answered by the best agent there is, flagged"),
            {"nodes": unfit, "threshold": threshold, "dropped": sorted(drop), "best": best,
             "dag": dag.summary().model_dump(mode="json")},
        )

    def _floor(self, response: AssignResponse) -> tuple[dict[str, list[Match]], dict[str, FloorCut]]:
        """Only agents that fit: each node keeps its agents at or above the floor (floor.py)."""
        cuts = {
            n: apply_floor(ms, fraction=self.settings.assign_floor, threshold=response.threshold)
            for n, ms in response.assignments.items()
        }
        return {n: c.kept for n, c in cuts.items() if c.kept}, cuts

    def _random_assignment(self, dag: Dag) -> dict[str, list[Match]]:
        """The paper's random-assignment baseline: policy-eligible agents drawn uniformly."""
        rng = random.Random(self.job.job_id)
        eligible = [v for v in self.ports.live_agents() if set(self.policies) <= set(v.policies)]
        if not eligible:
            raise NodeFailed(f"no live agent holds policies {self.policies}")
        return {
            n.node_id: [
                Match(agent_id=v.agent_id, version=v.version, score=0.0, factors={"random": 1.0})
                for v in rng.sample(eligible, min(self.agents_per_node, len(eligible)))
            ]
            for n in dag.nodes
        }

    # ---- execution: nodes run when their predecessors are done; branches run concurrently ------

    @property
    def _per_call(self) -> int:
        """Tokens one call is expected to cost: prompt plus answer."""
        return 2 * self.max_tokens

    def _reserve(self) -> int:
        """Tokens to keep for the one draft each not-yet-started node needs."""
        return len(self._pending_nodes) * self._per_call

    async def execute(self, dag: Dag, assignments: dict[str, list[Match]]) -> dict[str, NodeResult]:
        results = {k[5:]: NodeResult.model_validate(v) for k, v in self.saved.items() if k.startswith("node:")}
        self._pending_nodes = {n.node_id for n in dag.nodes} - set(results)
        done = {node_id: asyncio.Event() for node_id in (n.node_id for n in dag.nodes)}
        for node_id in results:
            done[node_id].set()

        async def run_node(node_id: str) -> None:
            node = dag.node(node_id)
            for dep in node.depends_on:
                await done[dep].wait()
            if node_id not in results:
                answers = {n: r.answer for n, r in results.items()}
                try:
                    results[node_id] = await wait_within(
                        self.run_node(dag, node_id, assignments[node_id], answers), self.settings.node_timeout_s
                    )
                except TimeoutError:
                    results[node_id] = self._best_draft_after_timeout(
                        node_id, [m.agent_id for m in assignments[node_id]]
                    )
                self.store.checkpoint(self.job.job_id, f"node:{node_id}", results[node_id].model_dump(mode="json"))
            done[node_id].set()

        await asyncio.gather(*(run_node(n.node_id) for n in dag.nodes))
        return results

    async def run_node(self, dag: Dag, node_id: str, matches: list[Match], answers: dict[str, str]) -> NodeResult:
        node = dag.node(node_id)
        job = self.job
        context = predecessor_context(dag, node_id, answers)
        draft_in = DraftInput(
            question=job.question,
            subtask=node.text,
            context=context,
            max_tokens=self.max_tokens,
            history=agent_history(self.history),
        )

        # phase 2: first drafts, in parallel (fewer drafters when the budget is short: a node
        # needs one draft, the others are optional)
        drafts = self._drafts.setdefault(node_id, {})
        self._pending_nodes.discard(node_id)
        drafters = list(matches)
        while len(drafters) > 1 and not self.budget.allows(tokens=len(drafters) * self._per_call + self._reserve()):
            drafters.pop()
        if len(drafters) < len(matches):
            await self.emit(
                "budget", f"{node_id}: {len(drafters)} of {len(matches)} drafters within budget", {"node": node_id}
            )
        matches = drafters

        exact = self._exact.setdefault(node_id, {})  # agent -> its exact result (a tool's output)
        exact_failed: list[str] = []

        async def draft(agent_id: str) -> None:
            try:
                out = (await self._call(agent_id, DRAFT, draft_in, node_id)).output
                if out.answer.strip():
                    drafts[agent_id] = (out.answer, out.confidence)
                    if out.exact:
                        exact[agent_id] = out.answer
            except Exception as exc:  # noqa: BLE001
                self._failures.append(f"draft {node_id} by {agent_id}: {exc}")
                self._contributions.append((agent_id, node_id, ""))
                vcv = self.ports.vcv(agent_id)
                if vcv is not None and is_exact_agent(vcv.tags):  # never hidden behind another's guess
                    exact_failed.append(f"{agent_id}: {exc}")
                    await self.emit(
                        "exact_failed",
                        f"{node_id}: the exact call by {agent_id} failed: {exc}",
                        {"node": node_id, "agent_id": agent_id, "error": str(exc)},
                    )

        await gather_all([draft(m.agent_id) for m in matches])
        if not drafts:  # one more agent; in place of a failed exact call, only one that fits as well
            top = max((m.score for m in matches), default=0.0)
            floor = floor_of(top, self.settings.assign_floor) if exact_failed else 0.0
            replacement = await self._reassign(node, [m.agent_id for m in matches], floor)
            if replacement:
                await draft(replacement)
        if not drafts:
            why = f"; {'; '.join(exact_failed)}" if exact_failed else ""
            raise NodeFailed(f"subtask {node_id} ({node.text[:60]!r}): no agent produced a draft{why}")
        shown = {a: d[0][:200] for a, d in drafts.items()}
        if len(drafts) > 1:  # a single draft is the node's answer: node_done reports it
            await self.emit("draft", f"{node_id}: {len(drafts)} drafts", {"node": node_id, "drafts": shown})

        # phase 3: clusters of similar agents
        if job.options.clustering and len(drafts) > 1:
            await self._embed_ahead([d[0] for d in drafts.values()])
            with self.path.doing("cluster"):
                clusters = self._clusters(list(drafts), drafts)
        else:
            clusters = [[a] for a in drafts]
        if len(drafts) > 1:  # one draft is one cluster: nothing to report
            await self.emit("cluster", f"{node_id}: clusters {clusters}", {"node": node_id, "clusters": clusters})

        # phase 4: each cluster refines on its own channel for ≤ k rounds
        outcomes = await gather_all(
            [
                self._refine(node_id, node.text, f"{job.job_id}-{node_id}-c{i + 1}", members, drafts)
                for i, members in enumerate(clusters)
            ]
        )
        self.outcomes[node_id] = outcomes
        best = pick_node_answer(outcomes, self.reputation.weight)
        for o in outcomes:
            for agent_id, answer in o.final_answers.items():
                self._contributions.append((agent_id, node_id, answer))
        done: dict[str, Any] = {"node": node_id, "representative": best.representative}
        if len(drafts) > 1:
            await self.emit("node_done", f"{node_id} answered by cluster {best.cluster_id}", done)
        else:
            await self.emit(
                "node_done", f"{node_id} answered by its only draft ({best.representative})", done | {"drafts": shown}
            )
        fact = next((exact[m] for m in best.members if m in exact), None) if best.exact else None
        return NodeResult(
            answer=best.answer,
            by=best.representative,
            cluster=best.cluster_id,
            clusters=summarise_rounds(outcomes),
            exact=fact,
            exact_failures=exact_failed,
        )

    def _clusters(self, agent_ids: list[str], drafts: dict[str, tuple[str, float]]) -> list[list[str]]:
        draft_vecs = self._embed([drafts[a][0] for a in agent_ids])
        members = []
        for agent_id, dvec in zip(agent_ids, draft_vecs, strict=True):
            vcv = self.ports.vcv(agent_id)
            if vcv is None:  # left meanwhile: compare on the draft alone
                members.append(Member(agent_id, dvec, np.ones(7), dvec, dvec))
            else:
                members.append(
                    Member(agent_id, vcv.capability_array(), vcv.resources.as_vector(), dvec, vcv.spec_array())
                )
        return cluster_members(
            members, threshold=self.settings.cluster_threshold, max_size=self.settings.cluster_max_size
        )

    async def _refine(
        self, node_id: str, subtask: str, cluster_id: str, members: list[str], drafts: dict[str, tuple[str, float]]
    ) -> ClusterOutcome:
        async def call(agent_id: str, payload: RefineInput) -> tuple[RefineOutput, Usage]:
            res = await self._call(agent_id, REFINE, payload, node_id)
            out = res.output
            await self.path.waiting(
                "publish",
                self.ports.channel(
                    ChannelMessage(
                        cluster_id=cluster_id,
                        node_id=node_id,
                        round=payload.round,
                        agent_id=agent_id,
                        answer=out.answer,
                        vote_done=out.done,
                        confidence=out.confidence,
                        provenance=[self.job.job_id, node_id],
                    )
                ),
            )
            return out, self._charged(res)  # charged to the budget in _call; reported per cluster too

        async def on_round(record: RoundRecord) -> None:
            await self.emit(
                "refine",
                f"{cluster_id} round {record.round}: votes {record.votes}",
                {"node": node_id, "cluster": cluster_id, "round": record.round, "votes": record.votes},
            )

        def may_continue() -> bool:
            # a round costs a call per member; keep a reserve for the drafts still to come
            return self.budget.allows(tokens=len(members) * self._per_call + self._reserve(), seconds=5.0)

        return await refine_cluster(
            cluster_id=cluster_id,
            members=members,
            drafts=drafts,
            question=self.job.question,
            subtask=subtask,
            rounds=self.rounds,
            call=call,
            embed=self._embed,
            embed_ahead=self._embed_ahead,
            reputation=self.reputation.weight,
            may_continue=may_continue,
            on_round=on_round,
            max_tokens=self.max_tokens,
            exact=[m for m in members if m in self._exact.get(node_id, {})],
        )

    async def _reassign(self, node: DagNode, failed: list[str], floor: float) -> str | None:
        """A node whose agents all failed gets one more agent, if the router knows one with α at
        or above `floor` (after a failed exact call, the node's floor: no guess in a tool's place)."""
        route = await self.path.waiting(
            "router",
            self.ports.route(
                RouteQuery(
                    text=self._route_text(node.text),
                    top_k=3,
                    policies=self.policies,
                    exclude=failed,
                    abstain=False,
                )
            ),
        )
        if not route.matches:
            return None
        if route.matches[0].score < floor:
            await self.emit(
                "reassign",
                f"{node.node_id}: no other agent fits (best {route.matches[0].agent_id}, α "
                f"{route.matches[0].score:.3f} < floor {floor:.3f})",
                {"node": node.node_id, "left_out": route.matches[0].agent_id},
            )
            return None
        await self.emit(
            "reassign", f"{node.node_id}: reassigned to {route.matches[0].agent_id}", {"node": node.node_id}
        )
        return route.matches[0].agent_id

    def _best_draft_after_timeout(self, node_id: str, assigned: list[str]) -> NodeResult:
        """The paper's timeout rule: accept the highest-scoring draft (confidence × reputation)."""
        drafts = self._drafts.get(node_id) or {}
        if not drafts:
            raise NodeFailed(f"subtask {node_id} timed out after {self.settings.node_timeout_s}s without a draft")
        exact = self._exact.get(node_id) or {}
        pool = {a: d for a, d in drafts.items() if a in exact} or drafts  # a tool's result beats any opinion
        agent_id, (answer, _) = max(pool.items(), key=lambda kv: kv[1][1] * self.reputation.weight(kv[0]))
        silent = [a for a in assigned if a not in drafts]
        for a in silent:
            self._contributions.append((a, node_id, ""))
        waited = f"{node_id}: timed out after {self.settings.node_timeout_s}s waiting for {silent}"
        self._failures.append(f"{waited}; kept the best draft ({agent_id})")
        return NodeResult(answer=answer, by=agent_id, exact=exact.get(agent_id))

    # ---- phase 6: synthesis ---------------------------------------------------------------------

    async def synthesise(self, dag: Dag, node_results: dict[str, NodeResult]) -> tuple[str, str]:
        answers = {n: r.answer for n, r in node_results.items()}
        mode = self.synth_mode
        if mode != "concat" and not self.budget.allows(tokens=3 * self.max_tokens):
            mode = "concat"
        call = None
        if mode != "concat":
            writer, declared = await self._synthesiser()
            if writer and declared:  # an agent that serves `synthesise` gets the node results as such
                how: Literal["rebase", "merge"] = "merge" if mode == "merge" else "rebase"

                async def call(system: str, user: str, max_tokens: int) -> tuple[str, Usage]:
                    payload = SynthesiseInput(
                        question=self.job.question,
                        mode=how,
                        instructions=INSTRUCTIONS[how],
                        results=synthesis_results(dag, answers),
                        max_tokens=max_tokens,
                    )
                    res = await self._call(writer, SYNTHESISE, payload, None)
                    return res.output.answer, self._charged(res)

            elif writer:  # the fallback every agent serves: the synthesis as one draft

                async def call(system: str, user: str, max_tokens: int) -> tuple[str, Usage]:
                    payload = DraftInput(
                        question=self.job.question,
                        subtask=f"{system}\n\n{user}",
                        max_tokens=max_tokens,
                        history=agent_history(self.history),
                    )
                    res = await self._call(writer, DRAFT, payload, None)
                    return res.output.answer, self._charged(res)

        answer, _, used_mode = await synthesise(
            dag, answers, question=self.job.question, mode=mode, call=call, max_tokens=self.max_tokens * 2
        )
        # exact results reach the answer verbatim; failed exact calls are stated (exactness.py)
        answer = carry_exact(
            answer,
            {dag.node(n).text: r.exact for n, r in node_results.items() if r.exact},
            {dag.node(n).text: r.exact_failures for n, r in node_results.items() if r.exact_failures},
        )
        await self.emit("synthesise", f"answer synthesised ({used_mode})", {"mode": used_mode, "chars": len(answer)})
        return answer, used_mode

    async def _synthesiser(self) -> tuple[str | None, bool]:
        """The writer for LLM synthesis, and whether it declares the `synthesise` kind: the best
        of the top 3 that lists the skill, else the best match (which gets a draft)."""
        route = await self.path.waiting(
            "router",
            self.ports.route(
                RouteQuery(
                    text="merge several expert answers into one clear answer",
                    top_k=3,
                    policies=self.policies,
                    abstain=False,
                )
            ),
        )
        for m in route.matches:
            vcv = self.ports.vcv(m.agent_id)
            if vcv is not None and SYNTHESISE.skill in vcv.skills:
                return m.agent_id, True
        return (route.matches[0].agent_id, False) if route.matches else (None, False)

    # ---- accounting, reputation, events ---------------------------------------------------------

    async def _call(self, agent_id: str, kind: TaskKind[InT, OutT], payload: InT, node_id: str | None) -> Answer[OutT]:
        reason = self.budget.exhausted()
        if reason:
            raise NodeFailed(f"budget: {reason}")
        timeout = min(self.settings.node_timeout_s, max(1.0, self.budget.time_left))
        sent = time.perf_counter()

        async def send(payload: InT) -> Answer[OutT]:
            return await self.path.waiting(
                "calls",
                self.ports.call(
                    agent_id,
                    kind,
                    payload,
                    job_id=self.job.job_id,
                    node_id=node_id,
                    timeout=timeout,
                    max_tokens=self.max_tokens,
                    traceparent=child_traceparent(self.traceparent),
                ),
            )

        try:
            res = await send(payload)
        except TaskError as exc:
            if not (isinstance(payload, WithHistory) and payload.history and history_refused(exc)):
                raise
            # an agent built before conversations: its input model forbids the field; it gets the task without it
            log.info("agent refused the conversation history; sent without it", extra={"agent_id": agent_id})
            res = await send(payload.model_copy(update={"history": []}))
        self.path.call_done(time.perf_counter() - sent, res.result.latency_ms / 1000)
        self.budget.charge(self._charged(res))
        # lazy: only a resume reads it, and the round's event or the node's checkpoint commits it
        self.store.checkpoint(self.job.job_id, "usage", self.budget.used.model_dump(), lazy=True)
        return res

    def _route_text(self, text: str) -> str:
        """A node's routing text: in a follow-up routed with its conversation's subject, with it in
        front (the one-node plan is the follow-up verbatim; a weak planner's subtasks may omit it)."""
        return routing_text(text, self.history) if self.routing_text != self.job.question else text

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        with self.path.doing("embed"):
            vecs = self.ports.embed(texts)
        if len(self._vectors) < 256:
            self._vectors.update(zip(texts, vecs, strict=False))
        return vecs

    async def _embed_ahead(self, texts: Sequence[str]) -> None:
        """Embed what the next synchronous step (plan check, merging, clustering, choosing a
        representative, reputations) will ask `_embed` for, off the event loop and batched with
        the other nodes' texts, so that `_embed` then reads the cache. Measured on
        job_overhead.py: the model call was ~8% of the loop's time, with the loop blocked."""
        todo = [t for t in dict.fromkeys(texts) if t and t not in self._vectors]
        if todo:
            await self.path.waiting("embed", self.ports.embed_ahead(todo))

    @staticmethod
    def _charged(res: Answer[Any]) -> Usage:
        """What one call costs: its reported usage, counted as at least one call."""
        return res.result.usage.model_copy(update={"calls": max(1, res.result.usage.calls)})

    async def _update_reputations(self, node_results: dict[str, NodeResult]) -> None:
        if not self._contributions:
            return
        texts = [a for _, _, a in self._contributions if a] + [r.answer for r in node_results.values()]
        await self._embed_ahead(texts)
        vecs = self._embed(texts) if texts else np.zeros((0, 1))
        index = {t: vecs[i] for i, t in enumerate(texts)}
        for agent_id, node_id, answer in self._contributions:
            node_answer = node_results[node_id].answer if node_id in node_results else None
            quality = float(np.clip(index[answer] @ index[node_answer], 0, 1)) if answer and node_answer else 0.0
            record = self.reputation.observe(agent_id, quality)
            try:
                await self.path.waiting("publish", self.ports.publish_reputation(record))
            except Exception:  # noqa: BLE001 - reputation is advisory
                log.warning("could not publish reputation", extra={"agent_id": agent_id})

    async def _publish_outcomes(
        self, dag: Dag, assignments: dict[str, list[Match]], node_results: dict[str, NodeResult]
    ) -> None:
        """One NodeOutcome per answered node of a completed job: routers learn from it which
        agents do such subtasks well (router/learning.py). Kept = the winning cluster's members.
        A node's vector goes along when this run embedded its text anyway (planning did);
        otherwise the router embeds the text, off this job's critical path."""
        for node in dag.nodes:
            result = node_results.get(node.node_id)
            if result is None:
                continue
            cluster = result.clusters.get(result.cluster or "")
            outcome = NodeOutcome(
                job_id=self.job.job_id,
                node_id=node.node_id,
                subtask=node.text[:4000],
                vector=self._vectors.get(node.text),
                assigned=[m.agent_id for m in assignments.get(node.node_id, [])][:64],
                kept=(cluster.members if cluster else [result.by])[:64],
                completed=True,
            )
            try:
                await self.path.waiting("publish", self.ports.publish_outcome(outcome))
            except Exception:  # noqa: BLE001 - learning is advisory, like reputation
                log.warning("could not publish a node outcome", extra={"job_id": self.job.job_id, "node": node.node_id})

    async def emit(self, phase: str, message: str, data: dict[str, Any] | None = None) -> None:
        event = JobEvent(job_id=self.job.job_id, seq=self._seq, phase=phase, message=message, data=data or {})
        self._seq += 1
        self.store.add_event(event)
        log.info(message, extra={"job_id": self.job.job_id, "phase": phase, "trace_id": trace_id_of(self.traceparent)})
        try:
            await self.path.waiting("publish", self.ports.emit(event))
        except Exception:  # noqa: BLE001 - progress is best effort; the store has it
            log.debug("could not publish event", exc_info=True)

    async def _finish(self, result: JobResult) -> JobResult:
        result.timings = result.timings or self.timings
        for key, value in self.path.breakdown().items():  # this run's, added to earlier runs' of a resumed job
            result.timings[key] = round(result.timings.get(key, 0.0) + value, 6)
        result.timings["total"] = round(time.time() - self.budget.started_at, 3)
        result.conversation_id = self.conversation_id
        if result.status == "completed":  # the turn lands before the result: a follow-up sent on it finds it
            agents = dict.fromkeys(m.agent_id for ms in result.assignments.values() for m in ms)
            self.store.add_turn(
                self.conversation_id,
                ConversationTurn(
                    job_id=self.job.job_id,
                    question=self.job.question,
                    answer=result.answer[:ANSWER_SUMMARY_CHARS],
                    agents=list(agents),
                    policies=self.policies,
                    at=time.time(),
                ),
            )
        self.store.finish(result)
        await self.emit(
            "done",
            f"job {result.status}" + (f": {result.failure_reason}" if result.failure_reason else ""),
            {"status": result.status},
        )
        return result
