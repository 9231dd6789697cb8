"""Each orchestration phase on its own: merge rule, cycle breaking, clustering cut, early stop,
budget stop, synthesis order. Refinement runs against scripted stand-in agents (named as such)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fabric.messages import Budget, Usage
from fabric.orchestrator.budget import BudgetError, BudgetTracker, check_feasible
from fabric.orchestrator.clusters import Member, cluster_members, similarity_matrix
from fabric.orchestrator.consensus import refine_cluster, representative
from fabric.orchestrator.dag import Dag, DagNode, clean_plan, merge_proposals
from fabric.orchestrator.synthesis import concat, predecessor_context, synthesise
from fabric.tasks import Plan, ProposedSubtask, RefineInput, RefineOutput


def plan(*subs: tuple[str, str, list[str]]) -> Plan:
    return Plan(subtasks=[ProposedSubtask(id=i, text=t, depends_on=d) for i, t, d in subs])


def test_merge_joins_similar_subtasks_across_proposals(embedder) -> None:
    a = plan(("s1", "List the symptoms of a heart attack", []), ("s2", "Explain when to call an ambulance", ["s1"]))
    b = plan(("x", "Describe heart attack symptoms", []), ("y", "Recommend a healthy diet for the heart", []))
    dag = merge_proposals([("gp", a), ("cardio", b)], embedder.embed, merge_similarity=0.5, subtasks_max=4)
    texts = [n.text for n in dag.nodes]
    assert len(dag.nodes) == 3, texts
    symptoms = next(n for n in dag.nodes if "symptoms" in n.text)
    assert symptoms.support == 2 and symptoms.proposers == ["cardio", "gp"]
    ambulance = next(n for n in dag.nodes if "ambulance" in n.text)
    assert ambulance.depends_on == [symptoms.node_id]  # the edge was remapped onto the merged node


def test_merge_never_joins_subtasks_of_one_proposal(embedder) -> None:
    a = plan(("s1", "Describe heart attack symptoms", []), ("s2", "Describe the symptoms of a heart attack", ["s1"]))
    dag = merge_proposals([("gp", a)], embedder.embed, merge_similarity=0.5)
    assert len(dag.nodes) == 2

    def no_model(texts):
        raise AssertionError("a single proposal needs no embeddings")

    assert merge_proposals([("gp", a)], no_model, merge_similarity=0.5) == dag


def test_merge_threshold_is_respected(embedder) -> None:
    a = plan(("s1", "Translate the text into French", []))
    b = plan(("s1", "Compute the integral of x squared", []))
    assert len(merge_proposals([("t", a), ("m", b)], embedder.embed, merge_similarity=0.5).nodes) == 2
    assert len(merge_proposals([("t", a), ("m", b)], embedder.embed, merge_similarity=-1.0).nodes) == 1


def test_cycles_are_broken_at_the_weakest_edge(embedder) -> None:
    # a→b supported by two proposals, b→a by one: the cycle loses b→a
    p1 = plan(("a", "Gather the patient history", []), ("b", "Write the discharge summary", ["a"]))
    p2 = plan(("a", "Collect the patient's history", []), ("b", "Draft a discharge summary", ["a"]))
    p3 = plan(("a", "Take the patient history", ["b"]), ("b", "Prepare the discharge summary", []))
    dag = merge_proposals([("1", p1), ("2", p2), ("3", p3)], embedder.embed)
    assert len(dag.nodes) == 2
    assert dag.graph().number_of_edges() == 1
    history = next(n for n in dag.nodes if "history" in n.text)
    summary = next(n for n in dag.nodes if "summary" in n.text)
    assert summary.depends_on == [history.node_id]
    assert dag.dropped_edges == [(summary.node_id, history.node_id)]
    assert [n.node_id for n in dag.topological()] == [history.node_id, summary.node_id]


def test_subtasks_max_keeps_best_supported(embedder) -> None:
    p1 = plan(
        ("a", "Explain the diagnosis of diabetes", []),
        ("b", "Write a poem about autumn", []),
        ("c", "List the causes of diabetes", []),
    )
    p2 = plan(("a", "Explain how diabetes is diagnosed", []), ("c", "Causes of diabetes", []))
    dag = merge_proposals([("1", p1), ("2", p2)], embedder.embed, subtasks_max=2)
    assert len(dag.nodes) == 2 and all(n.support == 2 for n in dag.nodes)


def test_clean_plan_drops_dangling_and_self_dependencies() -> None:
    p = plan(
        ("a", "first part", ["a", "zzz"]), ("b", "second part", ["a"]), ("b", "duplicate id", []), ("c", "third", [])
    )
    cleaned = clean_plan(p, subtasks_max=2)
    assert [(s.id, s.depends_on) for s in cleaned.subtasks] == [("a", []), ("b", ["a"])]


def _member(agent_id: str, vec: np.ndarray) -> Member:
    return Member(agent_id, vec, np.ones(7), vec, vec)


def test_clustering_cut_and_size_cap() -> None:
    rng = np.random.default_rng(0)
    base_a, base_b = rng.normal(size=16), rng.normal(size=16)
    base_b -= base_b @ base_a / (base_a @ base_a) * base_a  # orthogonal groups
    members = [_member(f"a{i}", base_a + 0.05 * rng.normal(size=16)) for i in range(3)]
    members += [_member(f"b{i}", base_b + 0.05 * rng.normal(size=16)) for i in range(2)]
    s = similarity_matrix(members)
    assert s.shape == (5, 5) and np.allclose(s, s.T)
    clusters = cluster_members(members, threshold=0.5, max_size=4)
    assert sorted(sorted(c) for c in clusters) == [["a0", "a1", "a2"], ["b0", "b1"]]
    # a permissive cut joins everything, and the cap splits it back to ≤ 2 per cluster
    capped = cluster_members(members, threshold=0.0, max_size=2)
    assert all(len(c) <= 2 for c in capped) and sum(len(c) for c in capped) == 5
    # a strict cut leaves everyone alone
    assert len(cluster_members(members, threshold=0.9999, max_size=4)) == 5


def test_representative_is_the_majority_answer(embedder) -> None:
    answers = {
        "a": "Call emergency services immediately: chest pain with sweating may be a heart attack.",
        "b": "This could be a heart attack; call an ambulance now.",
        "c": "Try a warm bath and some herbal tea.",
    }
    assert representative(answers, {}, embedder.embed) in ("a", "b")
    # reputation-weighted: a heavily trusted outlier wins
    assert representative(answers, {"a": 0.01, "b": 0.01, "c": 50.0}, embedder.embed) == "c"


def test_representative_of_two_is_the_answer_that_stays_on_the_subject(embedder) -> None:
    """Two members agree with each other equally: agreement cannot choose, the topic does (the
    off-topic revision below is the embedded 135M model's, from a user trial of the main job)."""
    question = "What should I do if my father has sudden chest pain and is sweating?"
    subtask = "How to help a friend with chest pain."
    drifted = (
        "A nspell of kindness and compassion can be found in the world, where it is not only possible but also "
        "justifiable. It's about making someone who has suffered loss feel more whole again."
    )
    on_topic = "Do not hesitate to seek medical help immediately: take him to the emergency room."
    for first, second in ((drifted, on_topic), (on_topic, drifted)):
        answers = {"physician": first, "cardiologist": second}
        expected = "physician" if first is on_topic else "cardiologist"
        assert representative(answers, {}, embedder.embed, [subtask, question]) == expected
    # without topics, the tie goes to the first listed, whatever it says
    assert representative({"physician": drifted, "cardiologist": on_topic}, {}, embedder.embed) == "physician"


class ScriptedPeers:
    """Scripted stand-in agents for refinement logic: vote done from a given round on."""

    def __init__(self, done_from: dict[str, int]) -> None:
        self.done_from = done_from
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, agent_id: str, payload: RefineInput) -> tuple[RefineOutput, Usage]:
        self.calls.append((agent_id, payload.round))
        assert all(p.agent_id != agent_id for p in payload.peers)
        done = payload.round >= self.done_from[agent_id]
        return RefineOutput(answer=payload.own_answer + f" (r{payload.round})", done=done, confidence=0.8), Usage(
            output_tokens=5
        )


def _refine(peers: ScriptedPeers, rounds: int, may=lambda: True, embedder=None):
    drafts = {a: (f"answer of {a}", 0.5) for a in peers.done_from}
    return asyncio.run(
        refine_cluster(
            cluster_id="c1",
            members=list(drafts),
            drafts=drafts,
            question="q",
            subtask="s",
            rounds=rounds,
            call=peers,
            embed=embedder.embed,
            reputation=lambda a: 1.0,
            may_continue=may,
        )
    )


def test_refinement_stops_early_when_all_vote_done(embedder) -> None:
    peers = ScriptedPeers({"a": 1, "b": 2, "c": 2})
    out = _refine(peers, rounds=3, embedder=embedder)
    assert out.stopped == "consensus" and out.rounds_run == 2
    assert len(peers.calls) == 6
    assert out.answer.endswith("(r1) (r2)")


def test_refinement_runs_at_most_k_rounds(embedder) -> None:
    peers = ScriptedPeers({"a": 9, "b": 9})
    out = _refine(peers, rounds=3, embedder=embedder)
    assert out.stopped == "max_rounds" and out.rounds_run == 3 and len(peers.calls) == 6


def test_refinement_stops_when_budget_says_so(embedder) -> None:
    peers = ScriptedPeers({"a": 9, "b": 9})
    budget = BudgetTracker(Budget(max_tokens=12))

    def may() -> bool:
        budget.charge(Usage(output_tokens=5))
        return budget.allows(tokens=1)

    out = _refine(peers, rounds=3, may=may, embedder=embedder)
    assert out.stopped == "budget" and out.rounds_run == 2


def test_budget_tracker_and_impossible_budgets() -> None:
    t = BudgetTracker(Budget(max_tokens=100, max_cost=0.01))
    t.charge(Usage(input_tokens=60, output_tokens=30, cost=0.004))
    assert t.tokens_left == 10 and t.allows(tokens=10) and not t.allows(tokens=11)
    t.charge(Usage(output_tokens=20, cost=0.01))
    assert "token budget of 100 spent" == t.exhausted()
    with pytest.raises(BudgetError, match="below the 16 tokens"):
        check_feasible(Budget(max_tokens=5), min_tokens=16)
    with pytest.raises(BudgetError, match="too short"):
        check_feasible(Budget(deadline_s=0.01), min_tokens=16)


def test_synthesis_follows_topological_order() -> None:
    dag = Dag(
        nodes=[
            DagNode(node_id="n3", text="final advice", depends_on=["n1", "n2"]),
            DagNode(node_id="n2", text="second", depends_on=["n1"]),
            DagNode(node_id="n1", text="first"),
        ]
    )
    answers = {"n1": "A", "n2": "B", "n3": "C"}
    assert concat(dag, answers) == "## first\nA\n\n## second\nB\n\n## final advice\nC"
    ctx = predecessor_context(dag, "n3", answers)
    assert [c.agent_id for c in ctx] == ["n1", "n2"] and ctx[0].answer == "first\nA"

    async def failing(system: str, user: str, max_tokens: int) -> tuple[str, Usage]:
        raise RuntimeError("model down")

    async def merging(system: str, user: str, max_tokens: int) -> tuple[str, Usage]:
        assert user.index("## first") < user.index("## second") < user.index("## final advice")
        return "merged", Usage(output_tokens=1)

    answer, _, mode = asyncio.run(synthesise(dag, answers, question="q", mode="merge", call=failing))
    assert mode == "concat" and answer.startswith("## first")  # falls back, loses nothing
    answer, usage, mode = asyncio.run(synthesise(dag, answers, question="q", mode="rebase", call=merging))
    assert (answer, mode, usage.output_tokens) == ("merged", "rebase", 1)
