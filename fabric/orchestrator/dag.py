"""The job's subtask DAG: merging agents' proposals into one graph and keeping it acyclic.

Merge rule (paper App. C): subtasks from different proposals are the same node when their
embeddings have cosine ≥ `merge_similarity` (0.5). Subtasks of one proposal are never merged
with each other (their author meant them as distinct). A node's text is the member closest to
the node's mean embedding; its support is the number of proposals that contributed to it.
When there are more nodes than `subtasks_max`, the best-supported ones are kept (ties: earlier
proposals first). Cycles are broken by dropping, in each cycle found, the edge with the least
support (ties: the edge that closes the cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from fabric.messages import DagSummary, DagSummaryNode
from fabric.tasks import Plan, ProposedSubtask

EmbedFn = Callable[[Sequence[str]], np.ndarray]


class DagNode(BaseModel):
    node_id: str
    text: str
    depends_on: list[str] = Field(default_factory=list)
    proposers: list[str] = Field(default_factory=list)
    support: int = 1
    skills: list[str] = Field(
        default_factory=list, description="skills every agent of the node must have (a gate of its assignment)"
    )


class Dag(BaseModel):
    nodes: list[DagNode]
    dropped_edges: list[tuple[str, str]] = Field(default_factory=list, description="edges removed to break cycles")
    _by_id: dict[str, DagNode] = PrivateAttr(default_factory=dict)

    def graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        for node in self.nodes:
            g.add_node(node.node_id)
        for node in self.nodes:
            for dep in node.depends_on:
                g.add_edge(dep, node.node_id)
        return g

    def node(self, node_id: str) -> DagNode:
        by_id = self._by_id
        if len(by_id) != len(self.nodes):  # first call (or nodes changed): index them
            by_id.clear()
            by_id.update((n.node_id, n) for n in self.nodes)
        return by_id[node_id]

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(dep, n.node_id) for n in self.nodes for dep in n.depends_on]

    def topological(self) -> list[DagNode]:
        """The nodes, every one after its dependencies: as listed when that already holds
        (merge_proposals lists them so), else networkx's lexicographical order."""
        seen: set[str] = set()
        for n in self.nodes:
            if not seen.issuperset(n.depends_on):
                order = list(nx.lexicographical_topological_sort(self.graph()))
                return [self.node(i) for i in order]
            seen.add(n.node_id)
        return list(self.nodes)

    def summary(self) -> DagSummary:
        return DagSummary(
            nodes=[
                DagSummaryNode(id=n.node_id, text=n.text, support=n.support, proposers=list(n.proposers))
                for n in self.nodes
            ],
            edges=self.edges,
        )

    def drop(self, node_ids: set[str]) -> None:
        """Remove nodes (and the dependencies on them) in place: subtasks no agent fits."""
        self.nodes = [
            n.model_copy(update={"depends_on": [d for d in n.depends_on if d not in node_ids]})
            for n in self.nodes
            if n.node_id not in node_ids
        ]
        self._by_id.clear()

    @classmethod
    def single(cls, question: str, skills: list[str] | None = None) -> Dag:
        """The fallback plan: the whole question as one node."""
        return cls(nodes=[DagNode(node_id="n1", text=question, proposers=[], support=0, skills=skills or [])])

    @classmethod
    def of_parts(cls, parts: list[str]) -> Dag:
        """The plan a compound question gives itself: one independent node per part."""
        return cls(nodes=[DagNode(node_id=f"n{i}", text=t, proposers=[], support=0) for i, t in enumerate(parts, 1)])


@dataclass
class _Item:
    proposal: int
    local_id: str
    text: str
    deps: list[str]
    proposer: str
    vec: np.ndarray


@dataclass
class _Group:
    items: list[_Item] = field(default_factory=list)

    @property
    def proposals(self) -> set[int]:
        return {i.proposal for i in self.items}

    def centroid(self) -> np.ndarray:
        mean = np.mean([i.vec for i in self.items], axis=0)
        return mean / (np.linalg.norm(mean) or 1.0)


def clean_plan(plan: Plan, subtasks_max: int) -> Plan:
    """Unique ids, known dependencies only, no self-dependencies, at most `subtasks_max` subtasks."""
    seen: set[str] = set()
    kept: list[ProposedSubtask] = []
    for sub in plan.subtasks:
        if sub.id in seen or len(kept) >= subtasks_max:
            continue
        seen.add(sub.id)
        kept.append(sub)
    ids = {s.id for s in kept}
    fixed = [
        s.model_copy(update={"depends_on": [d for d in dict.fromkeys(s.depends_on) if d in ids and d != s.id]})
        for s in kept
    ]
    return Plan(subtasks=fixed)


def merge_proposals(
    proposals: Sequence[tuple[str, Plan]],
    embed: EmbedFn,
    *,
    merge_similarity: float = 0.5,
    subtasks_max: int = 4,
) -> Dag:
    """SYNTH_PROPOSALS + VALIDATE_DAG of the paper's Algorithm 1."""
    items: list[_Item] = []
    texts = [sub.text for _, plan in proposals for sub in plan.subtasks]
    if not texts:
        raise ValueError("no subtasks to merge")
    # one proposal has nothing to merge with (its own subtasks never merge): no embeddings needed
    vecs = embed(texts) if len(proposals) > 1 else np.zeros((len(texts), 1), dtype=np.float32)
    k = 0
    for p_idx, (proposer, plan) in enumerate(proposals):
        for sub in plan.subtasks:
            items.append(_Item(p_idx, sub.id, sub.text, list(sub.depends_on), proposer, vecs[k]))
            k += 1

    groups: list[_Group] = []
    for item in items:
        best, best_sim = None, merge_similarity
        for group in groups:
            if item.proposal in group.proposals:
                continue
            sim = float(group.centroid() @ item.vec)
            if sim >= best_sim:
                best, best_sim = group, sim
        if best is None:
            groups.append(_Group([item]))
        else:
            best.items.append(item)

    # keep the best-supported groups (stable: earlier groups win ties)
    ranked = sorted(range(len(groups)), key=lambda g: (-len(groups[g].proposals), g))
    keep = sorted(ranked[:subtasks_max])
    where = {(it.proposal, it.local_id): new for new, g in enumerate(keep) for it in groups[g].items}

    edge_support: dict[tuple[int, int], int] = {}
    for item in items:
        dst = where.get((item.proposal, item.local_id))
        if dst is None:
            continue
        for dep in item.deps:
            src = where.get((item.proposal, dep))
            if src is not None and src != dst:
                edge_support[(src, dst)] = edge_support.get((src, dst), 0) + 1

    g = nx.DiGraph()
    g.add_nodes_from(range(len(keep)))
    for (src, dst), support in edge_support.items():
        g.add_edge(src, dst, support=support)
    dropped: list[tuple[int, int]] = []
    while not nx.is_directed_acyclic_graph(g):  # the common case costs one check, not an exception
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            break
        weakest = min(reversed(cycle), key=lambda e: g.edges[e[0], e[1]]["support"])
        g.remove_edge(weakest[0], weakest[1])
        dropped.append((weakest[0], weakest[1]))

    order = list(nx.lexicographical_topological_sort(g))
    name = {old: f"n{i + 1}" for i, old in enumerate(order)}
    nodes = []
    for old in order:
        group = groups[keep[old]]
        if len(group.items) == 1:
            text = group.items[0].text
        else:
            centre = group.centroid()
            text = max(group.items, key=lambda it: float(it.vec @ centre)).text
        nodes.append(
            DagNode(
                node_id=name[old],
                text=text,
                depends_on=sorted((name[src] for src in g.predecessors(old)), key=lambda n: int(n[1:])),
                proposers=sorted({it.proposer for it in group.items}),
                support=len(group.proposals),
            )
        )
    return Dag(nodes=nodes, dropped_edges=[(name[a], name[b]) for a, b in dropped])
