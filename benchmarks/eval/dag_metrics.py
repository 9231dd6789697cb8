"""Scoring a decomposition against a gold call DAG.

Matching rule (predicted subtask ↔ gold call), one-to-one:
1. a subtask *names* a gold call's API when the API name, lower-cased with every
   non-alphanumeric character removed, occurs in the subtask's text (or its `agent` field)
   normalised the same way ("calculate_route" matches "Calculate route between ...");
2. the pair score is 2·named + cos(subtask text, gold call text), where the gold text is the
   API's description plus its literal arguments (so two calls of one API are told apart);
3. the Hungarian algorithm (scipy linear_sum_assignment) maximises the total score, and an
   assigned pair counts only if it is named or its cosine is ≥ `min_similarity` (default 0.5).
Node F1 = 2·matched / (|predicted| + |gold|). A predicted edge (dependency → dependent) is a
true positive when both ends are matched and the mapped pair is a gold edge; edge F1 uses the
same formula, and is 1 when both edge sets are empty. A plan is a valid DAG when it has at
least one subtask, unique ids, every dependency names another existing subtask, and no cycle.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import networkx as nx
import numpy as np
from pydantic import BaseModel, Field
from scipy.optimize import linear_sum_assignment

from benchmarks.eval.nestful_data import ApiSpec, GoldCall, GoldDAG, references

NAME_WEIGHT = 2.0


class PlanNode(BaseModel):
    id: str
    text: str
    depends_on: list[str] = Field(default_factory=list)
    agent: str | None = None


class DagScore(BaseModel):
    sample_id: str
    valid: bool
    invalid_reason: str = ""
    n_pred: int
    n_gold: int
    matched: int
    named_matches: int
    node_f1: float
    pred_edges: int
    gold_edges: int
    edge_tp: int
    edge_f1: float
    matching: dict[str, int] = Field(default_factory=dict, description="subtask id -> gold call index")
    proposals_valid: float | None = Field(default=None, description="share of raw proposals that were valid DAGs")


def _get(obj: Any, *names: str) -> Any:
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return None


def normalise_plan(plan: Any) -> list[PlanNode]:
    """Any Plan-like object (pydantic model, dict, list of subtasks) → PlanNodes."""
    subtasks = _get(plan, "subtasks") if not isinstance(plan, list) else plan
    nodes: list[PlanNode] = []
    for i, st in enumerate(subtasks or []):
        deps = _get(st, "depends_on", "dependencies") or []
        agent = _get(st, "agent", "agent_id", "assigned_agent")
        nodes.append(PlanNode(id=str(_get(st, "id") if _get(st, "id") is not None else f"s{i}"),
                              text=str(_get(st, "text", "description", "task") or ""),
                              depends_on=[str(d) for d in deps], agent=str(agent) if agent else None))
    return nodes


def validity(nodes: Sequence[PlanNode]) -> tuple[bool, str]:
    if not nodes:
        return False, "empty plan"
    ids = [n.id for n in nodes]
    if len(set(ids)) != len(ids):
        return False, "duplicate subtask ids"
    known = set(ids)
    graph = nx.DiGraph()
    graph.add_nodes_from(ids)
    for n in nodes:
        for d in n.depends_on:
            if d == n.id:
                return False, f"{n.id} depends on itself"
            if d not in known:
                return False, f"{n.id} depends on unknown {d!r}"
            graph.add_edge(d, n.id)
    if not nx.is_directed_acyclic_graph(graph):
        return False, f"cycle {nx.find_cycle(graph)}"
    return True, ""


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def names_api(node: PlanNode, api_name: str) -> bool:
    key = _norm(api_name)
    return bool(key) and (key in _norm(node.text) or (node.agent is not None and key == _norm(node.agent)))


def gold_call_text(call: GoldCall, catalog: dict[str, ApiSpec]) -> str:
    literal = {k: v for k, v in call.arguments.items() if not references(v)}
    spec = catalog.get(call.name)
    desc = spec.description if spec else ""
    args = ", ".join(f"{k}={v}" for k, v in literal.items())
    return f"{call.name}: {desc}" + (f" ({args})" if args else "")


def f1(tp: int, n_pred: int, n_gold: int) -> float:
    return 1.0 if n_pred + n_gold == 0 else 2.0 * tp / (n_pred + n_gold)


def proposals_validity(plan: Any) -> float | None:
    """For planners that merge several proposals (FoA): the share of raw proposals that were
    valid DAGs before the orchestrator cleaned and merged them; None for single-shot planners."""
    raw = _get(plan, "proposals")
    if not raw:
        return None
    return sum(validity(normalise_plan(_get(p, "plan") or {}))[0] for p in raw) / len(raw)


def score_plan(plan: Any, gold: GoldDAG, catalog: dict[str, ApiSpec],
               embed: Callable[[list[str]], np.ndarray], min_similarity: float = 0.5) -> DagScore:
    """Match one plan to its gold DAG and score nodes, edges and validity."""
    nodes = normalise_plan(plan)
    valid, reason = validity(nodes)
    n_pred, n_gold = len(nodes), len(gold.calls)
    matching: dict[str, int] = {}
    named = 0
    if nodes and gold.calls:
        vecs = embed([n.text for n in nodes] + [gold_call_text(c, catalog) for c in gold.calls])
        cos = vecs[:n_pred] @ vecs[n_pred:].T
        hit = np.array([[names_api(n, c.name) for c in gold.calls] for n in nodes], dtype=float)
        rows, cols = linear_sum_assignment(NAME_WEIGHT * hit + cos, maximize=True)
        for r, c in zip(rows, cols, strict=False):
            if hit[r, c] or cos[r, c] >= min_similarity:
                matching[nodes[r].id] = int(c)
                named += int(hit[r, c])
    ids = {n.id for n in nodes}
    pred_edges = {(d, n.id) for n in nodes for d in n.depends_on if d in ids and d != n.id}
    mapped = {(matching[a], matching[b]) for a, b in pred_edges if a in matching and b in matching}
    gold_edges = set(gold.edges)
    tp = len(mapped & gold_edges)
    return DagScore(
        sample_id=gold.sample_id, valid=valid, invalid_reason=reason, n_pred=n_pred, n_gold=n_gold,
        matched=len(matching), named_matches=named, node_f1=f1(len(matching), n_pred, n_gold),
        pred_edges=len(pred_edges), gold_edges=len(gold_edges), edge_tp=tp,
        edge_f1=f1(tp, len(pred_edges), len(gold_edges)), matching=matching,
        proposals_valid=proposals_validity(plan),
    )
