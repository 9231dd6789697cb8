"""Assignment: constraints hold, milp is optimal on small instances, greedy's gap is small."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.assignment import (
    AssignmentProblem,
    optimality_gap,
    random_problem,
    solve,
    solve_exact,
    solve_greedy,
    solve_uncontended,
)


def brute_force(p: AssignmentProblem) -> float:
    """Enumerate every 0/1 matrix over the candidate pairs (tiny instances only)."""
    pairs = list(zip(*np.nonzero(p.alpha > 0), strict=False))
    best = -1.0
    for bits in itertools.product([0, 1], repeat=len(pairs)):
        x = np.zeros(p.alpha.shape, dtype=int)
        for b, (i, j) in zip(bits, pairs, strict=False):
            x[i, j] = b
        team = x.sum(1)
        if (team < p.min_agents).any() or (team > p.max_agents).any() or (x.sum(0) > p.capacity).any():
            continue
        best = max(best, float((p.alpha * x).sum()))
    return best


def check_constraints(p: AssignmentProblem, x: np.ndarray) -> None:
    assert (x.sum(1) <= p.max_agents).all(), "more agents than r_i"
    assert (x.sum(0) <= p.capacity).all(), "agent over capacity"
    assert not (x & (p.alpha <= 0)).any(), "assigned a gated-out pair"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), s=st.integers(1, 3), a=st.integers(1, 4))
def test_milp_is_optimal_and_feasible_on_small_instances(seed: int, s: int, a: int) -> None:
    rng = np.random.default_rng(seed)
    p = random_problem(rng, s, a, density=0.6, max_team=2, max_capacity=2)
    exact = solve_exact(p)
    check_constraints(p, exact.x)
    optimum = brute_force(p)
    if optimum >= 0:  # feasible: milp meets every minimum and is optimal
        assert exact.unassigned == []
        assert exact.objective == pytest.approx(optimum, abs=1e-6)
    else:
        assert exact.unassigned, "infeasible minimums must be reported"
    greedy = solve_greedy(p)
    check_constraints(p, greedy.x)
    assert greedy.objective <= exact.objective + 1e-9 or greedy.unassigned


def test_uncontended_shortcut_is_optimal_or_declines() -> None:
    rng = np.random.default_rng(3)
    taken = declined = 0
    for _ in range(80):
        p = random_problem(rng, 4, 8, density=0.6, max_team=2, max_capacity=2)
        quick = solve_uncontended(p)
        exact = solve_exact(p)
        if quick is None:
            declined += 1
            assert solve(p).solver == "milp"
            continue
        taken += 1
        check_constraints(p, quick.x)
        assert quick.unassigned == exact.unassigned
        assert quick.objective == pytest.approx(exact.objective, abs=1e-6)
        assert solve(p).solver == "uncontended"
    assert taken >= 10 and declined >= 10  # both branches exercised


def test_auto_uses_milp_small_and_greedy_large() -> None:
    rng = np.random.default_rng(1)
    contended = AssignmentProblem(
        np.array([[0.9, 0.2], [0.8, 0.3]]), np.ones(2, dtype=int), np.ones(2, dtype=int), np.array([1, 1])
    )
    assert solve(contended).solver == "milp"
    big = random_problem(rng, 200, 400, density=0.5)
    result = solve(big)
    assert result.solver == "greedy"
    check_constraints(big, result.x)


def test_greedy_gap_is_small() -> None:
    rng = np.random.default_rng(2)
    gaps = [optimality_gap(random_problem(rng, 8, 30)) for _ in range(30)]
    assert max(gaps) < 0.15 and np.mean(gaps) < 0.03


def test_capacity_forces_spreading() -> None:
    # one star agent everyone wants, capacity 1: only one subtask may have it
    alpha = np.array([[0.9, 0.2, 0.0], [0.8, 0.0, 0.3], [0.85, 0.1, 0.1]])
    p = AssignmentProblem(alpha, np.ones(3, dtype=int), np.ones(3, dtype=int), np.array([1, 2, 2]))
    res = solve_exact(p)
    check_constraints(p, res.x)
    assert res.x[:, 0].sum() == 1 and res.unassigned == []
    assert res.objective == pytest.approx(brute_force(p))
