"""Cluster formation (paper Alg. 3): which of a node's agents refine together on one channel.

S_ij = w1·cos(c_i, c_j) + w2·cos(r_i, r_j) + w3·cos(ψ(draft_i), ψ(draft_j)) + w4·cos(e_i, e_j)

Weights (the paper gives none): drafts 0.4, capability 0.3, spec 0.2, resources 0.1. The drafts
weigh most because refinement reconciles answers; resources least because log-scaled resource
profiles are all-positive and so always look alike. Cosines are clipped at 0.

The cut: average-linkage agglomerative clustering on distance 1 − S, cut where the average
similarity falls below `threshold` (paper: 0.2), i.e. at distance 1 − threshold. We read the
paper's 0.2 as a similarity threshold: as a distance cut (S ≥ 0.8) almost every agent would sit
alone and no channel would ever form. Clusters above `max_size` (paper: 1–4) are split into
chunks of agents ordered by similarity to the cluster's medoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

DEFAULT_WEIGHTS = {"capability": 0.3, "resources": 0.1, "draft": 0.4, "spec": 0.2}


@dataclass(frozen=True)
class Member:
    agent_id: str
    capability: np.ndarray
    resources: np.ndarray
    draft: np.ndarray
    spec: np.ndarray


def _cos_matrix(rows: Sequence[np.ndarray]) -> np.ndarray:
    m = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    m = m / norms
    return np.clip(m @ m.T, 0.0, 1.0)


def similarity_matrix(members: Sequence[Member], weights: dict[str, float] | None = None) -> np.ndarray:
    w = weights or DEFAULT_WEIGHTS
    total = sum(w.values())
    s = (
        w["capability"] * _cos_matrix([m.capability for m in members])
        + w["resources"] * _cos_matrix([m.resources for m in members])
        + w["draft"] * _cos_matrix([m.draft for m in members])
        + w["spec"] * _cos_matrix([m.spec for m in members])
    ) / total
    np.fill_diagonal(s, 1.0)
    return s


#: up to this many agents (a node has 1-4) the cut is computed in Python: scipy's `linkage` and
#: `fcluster` cost ~75 µs of argument checking for 3 agents, ~0.2 ms a node inside a running job
SMALL = 16


def average_linkage_cut(dist: np.ndarray, cut: float) -> list[list[int]]:
    """Average-linkage (UPGMA) agglomerative clustering of a distance matrix, cut at `cut`: the
    groups scipy's `fcluster(linkage(d, "average"), cut, "distance")` forms, each in index order,
    ordered by first index. Average linkage is monotone, so the flat clusters are the merges of
    height ≤ cut; merges run closest pair first with scipy's update (size-weighted average)."""
    n = len(dist)
    d = dist.tolist()
    groups: dict[int, list[int]] = {i: [i] for i in range(n)}  # cluster (its first slot) -> items
    between = {(i, j): d[i][j] for i in range(n) for j in range(i + 1, n)}
    while len(groups) > 1:
        (a, b), height = min(between.items(), key=lambda kv: kv[1])
        if height > cut:
            break
        size_a, size_b = len(groups[a]), len(groups[b])
        groups[a] = sorted(groups[a] + groups.pop(b))
        for k in groups:
            if k == a:
                continue
            d_ka = between.pop((min(k, a), max(k, a)))
            d_kb = between.pop((min(k, b), max(k, b)))
            between[(min(k, a), max(k, a))] = (size_a * d_ka + size_b * d_kb) / (size_a + size_b)
        del between[(a, b)]
    return sorted(groups.values(), key=lambda g: g[0])


def cluster_members(
    members: Sequence[Member],
    *,
    threshold: float = 0.2,
    max_size: int = 4,
    weights: dict[str, float] | None = None,
) -> list[list[str]]:
    """Partition the agents into clusters; each cluster is listed medoid first."""
    if not members:
        return []
    if len(members) == 1:
        return [[members[0].agent_id]]
    s = similarity_matrix(members, weights)
    dist = np.clip(1.0 - s, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    if len(members) <= SMALL:
        groups = average_linkage_cut(dist, 1.0 - threshold)
    else:
        z = linkage(squareform(dist, checks=False), method="average")
        labels = fcluster(z, t=1.0 - threshold, criterion="distance")
        firsts = sorted(set(labels), key=lambda lab: int(np.where(labels == lab)[0][0]))
        groups = [[i for i in range(len(members)) if labels[i] == label] for label in firsts]
    clusters: list[list[str]] = []
    for idx in groups:
        medoid = max(idx, key=lambda i: float(s[i, idx].sum()))
        ordered = sorted(idx, key=lambda i: (-s[medoid, i], i))
        for start in range(0, len(ordered), max_size):
            clusters.append([members[i].agent_id for i in ordered[start : start + max_size]])
    return clusters
