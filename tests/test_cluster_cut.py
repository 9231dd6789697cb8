"""The in-Python average-linkage cut used for a node's few agents forms exactly scipy's clusters."""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from fabric.orchestrator.clusters import SMALL, Member, average_linkage_cut, cluster_members, similarity_matrix


def scipy_groups(dist: np.ndarray, cut: float) -> list[list[int]]:
    labels = fcluster(linkage(squareform(dist, checks=False), method="average"), t=cut, criterion="distance")
    firsts = sorted(set(labels), key=lambda lab: int(np.where(labels == lab)[0][0]))
    return [[i for i in range(len(dist)) if labels[i] == lab] for lab in firsts]


def test_the_cut_matches_scipy_on_random_and_degenerate_matrices() -> None:
    rng = np.random.default_rng(7)
    checked = 0
    for trial in range(3000):
        n = int(rng.integers(2, SMALL + 1))
        members = [
            Member(f"a{i}", rng.normal(size=8), rng.random(7), rng.normal(size=8), rng.normal(size=8)) for i in range(n)
        ]
        if trial % 5 == 0:  # identical agents: zero distances and ties
            members[-1] = Member("twin", members[0].capability, members[0].resources, members[0].draft, members[0].spec)
        s = similarity_matrix(members)
        dist = np.clip(1.0 - s, 0.0, None)
        np.fill_diagonal(dist, 0.0)
        for cut in (0.8, float(rng.uniform(0.0, 1.0)), 0.0, 1.0):
            assert average_linkage_cut(dist, cut) == scipy_groups(dist, cut), (trial, n, cut)
            checked += 1
    assert checked == 12000


def test_cluster_members_uses_scipy_above_the_small_size() -> None:
    rng = np.random.default_rng(1)
    members = [
        Member(f"a{i}", rng.normal(size=8), rng.random(7), rng.normal(size=8), rng.normal(size=8))
        for i in range(SMALL + 4)
    ]
    clusters = cluster_members(members, threshold=0.2, max_size=4)
    assert sorted(a for c in clusters for a in c) == sorted(m.agent_id for m in members)
    assert all(1 <= len(c) <= 4 for c in clusters)
