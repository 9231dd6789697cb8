"""Intra-cluster refinement (paper Alg. 4) and the choice of a representative answer.

Each round every member reads its peers' current answers, revises its own and votes whether
to stop; the cluster stops after `rounds` rounds or as soon as every member votes done. Before
each round `may_continue()` is asked (the job's budget and deadline), so refinement is the
first work dropped when money or time runs short.

The representative ("majority or highest weight"): each answer's support is the weighted sum of
its similarity to every answer; weights are confidence × reputation. With equal weights this is
the medoid, the answer most others agree with (majority); with reputations it is the
reputation-weighted vote. An exact member (a tool's result; `exactness.py`) is not asked to
refine, keeps its answer, votes done, and only answers that carry it may represent the cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence

import numpy as np
from pydantic import BaseModel, Field

from fabric.messages import ClusterSummary, Usage
from fabric.orchestrator.dag import EmbedFn
from fabric.orchestrator.exactness import eligible_answers
from fabric.tasks import PeerAnswer, RefineInput, RefineOutput

log = logging.getLogger("foa.orchestrator.consensus")

#: (agent_id, payload) -> (RefineOutput, Usage); raises on failure
RefineCall = Callable[[str, RefineInput], Awaitable[tuple[RefineOutput, Usage]]]


class RoundRecord(BaseModel):
    round: int
    answers: dict[str, str]
    votes: dict[str, bool]
    failed: list[str] = Field(default_factory=list)


class ClusterOutcome(BaseModel):
    cluster_id: str
    members: list[str]
    answer: str
    representative: str
    rounds_run: int
    stopped: str = Field(description="consensus | max_rounds | budget | single | failed")
    confidence: float
    exact: bool = Field(default=False, description="the representative carries an exact result (a tool's output)")
    history: list[RoundRecord] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    final_answers: dict[str, str] = Field(default_factory=dict)


def representative(
    answers: dict[str, str],
    weights: dict[str, float],
    embed: EmbedFn,
    topics: Sequence[str] = (),
) -> str:
    """The agent whose answer carries the most weighted agreement, scaled by how near the answer
    stays to `topics` (the subtask and the question: the nearer of the two, cosine, floor 0.05).

    Why the topic: agreement alone cannot choose between two answers (a two-member channel's
    support is the same for both, and the first listed won), and a small model's revision can
    drift off the subject. A user trial's answer to "my father has sudden chest pain and is
    sweating" kept "A nspell of kindness and compassion can be found in the world ..." over its
    peer's "seek medical help immediately ..." (MiniLM cosine to the question −0.03 vs 0.54; an
    on-topic answer 0.79)."""
    ids = list(answers)
    if len(ids) == 1:
        return ids[0]
    vecs = embed([answers[i] for i in ids])
    sims = np.clip(vecs @ vecs.T, 0.0, 1.0)
    w = np.array([max(weights.get(i, 1.0), 1e-6) for i in ids])
    support = w * (sims @ w)
    if topics:
        relevance = (vecs @ embed(list(topics)).T).max(axis=1)
        support = support * np.clip(relevance, 0.05, 1.0)
    return ids[int(np.argmax(support))]


async def refine_cluster(
    *,
    cluster_id: str,
    members: Sequence[str],
    drafts: dict[str, tuple[str, float]],
    question: str,
    subtask: str,
    rounds: int,
    call: RefineCall,
    embed: EmbedFn,
    reputation: Callable[[str], float],
    may_continue: Callable[[], bool],
    on_round: Callable[[RoundRecord], Awaitable[None] | None] | None = None,
    max_tokens: int | None = None,
    exact: Collection[str] = (),
    embed_ahead: Callable[[list[str]], Awaitable[None]] | None = None,
) -> ClusterOutcome:
    """`embed_ahead`: embeds the final answers off the event loop before `representative` asks
    `embed` for them (the orchestrator's cache then answers)."""
    answers = {m: drafts[m][0] for m in members if m in drafts}
    facts = {m: answers[m] for m in exact if m in answers}  # exact members: their answers never change
    confidence = {m: drafts[m][1] for m in answers}
    usage = Usage()
    history: list[RoundRecord] = []
    stopped = "single" if len(answers) < 2 else "max_rounds"
    if not answers:
        raise ValueError(f"cluster {cluster_id} has no drafts")

    for rnd in range(1, rounds + 1 if len(answers) >= 2 else 1):
        if not may_continue():
            stopped = "budget"
            break
        active = [a for a in answers if a not in facts]
        if not active:  # only exact members: nothing to refine
            stopped = "consensus"
            break

        async def one(agent_id: str, rnd: int = rnd) -> tuple[str, RefineOutput | None, Usage]:
            peers = [PeerAnswer(agent_id=p, answer=answers[p]) for p in answers if p != agent_id]
            payload = RefineInput(
                question=question,
                subtask=subtask,
                cluster_id=cluster_id,
                round=rnd,
                own_answer=answers[agent_id],
                peers=peers,
                max_tokens=max_tokens,
            )
            try:
                out, used = await call(agent_id, payload)
                return agent_id, out, used
            except Exception as exc:  # noqa: BLE001 - one silent member must not stop the channel
                log.warning("refine failed", extra={"cluster_id": cluster_id, "agent_id": agent_id, "error": str(exc)})
                return agent_id, None, Usage()

        results = await asyncio.gather(*(one(a) for a in active))
        record = RoundRecord(round=rnd, answers={}, votes={f: True for f in facts})
        for agent_id, out, used in results:
            usage = usage + used
            if out is None:
                record.failed.append(agent_id)
                continue
            if out.answer.strip():
                answers[agent_id] = out.answer
            confidence[agent_id] = out.confidence
            record.answers[agent_id] = answers[agent_id]
            record.votes[agent_id] = out.done
        history.append(record)
        if on_round is not None:
            maybe = on_round(record)
            if asyncio.iscoroutine(maybe):
                await maybe
        if record.votes and all(record.votes.values()) and not record.failed:
            stopped = "consensus"
            break

    eligible = eligible_answers(answers, facts)
    weights = {a: confidence.get(a, 0.5) * reputation(a) for a in eligible}
    topics = [t for t in (subtask, question) if t.strip()]
    if embed_ahead is not None and len(eligible) > 1:
        await embed_ahead([*eligible.values(), *topics])
    rep = representative(eligible, weights, embed, topics)
    return ClusterOutcome(
        cluster_id=cluster_id,
        members=list(members),
        answer=answers[rep],
        representative=rep,
        rounds_run=len(history),
        stopped=stopped,
        confidence=float(confidence.get(rep, 0.5)),
        exact=bool(facts),
        history=history,
        usage=usage,
        final_answers=dict(answers),
    )


def pick_node_answer(outcomes: Sequence[ClusterOutcome], reputation: Callable[[str], float]) -> ClusterOutcome:
    """Across a node's clusters: the outcome with the most weight (size × confidence × reputation);
    a cluster that carries an exact result beats every cluster of opinions."""
    exact = [o for o in outcomes if o.exact]
    outcomes = exact or outcomes

    def weight(o: ClusterOutcome) -> float:
        rep = float(np.mean([reputation(m) for m in o.members]))
        return len(o.members) * max(o.confidence, 0.05) * rep

    return max(outcomes, key=weight)


def summarise_rounds(outcomes: Sequence[ClusterOutcome]) -> dict[str, ClusterSummary]:
    return {
        o.cluster_id: ClusterSummary(
            members=list(o.members),
            rounds=o.rounds_run,
            stopped=o.stopped,
            representative=o.representative,
            votes=[dict(r.votes) for r in o.history],
        )
        for o in outcomes
    }
