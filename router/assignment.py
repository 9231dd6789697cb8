"""Subtask × agent assignment maximising Σα (paper §2.4, docs/architecture.md §5).

    max Σ_ij α_ij x_ij   s.t.  min_i ≤ Σ_j x_ij ≤ max_i  (team size 1..r_i per subtask)
                               Σ_i x_ij ≤ cap_j          (agent capacity = max_concurrency)
                               x_ij ∈ {0, 1}, x_ij = 0 where α_ij = 0 (gated out)

Exact with scipy.optimize.milp (HiGHS) up to EXACT_MAX_VARS candidate pairs; beyond, greedy:
first give every subtask its minimum (hardest subtasks — fewest candidates — first), then
add the best remaining pairs by α while capacity and max_i allow. `optimality_gap` measures
greedy against milp on the same instance. If the minimums cannot all be met (too little
capacity), the subtasks left short are reported as unassigned instead of failing the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

EXACT_MAX_VARS = 20_000


@dataclass
class AssignmentProblem:
    alpha: np.ndarray  # (subtasks, agents), 0 = not a candidate
    min_agents: np.ndarray  # (subtasks,)
    max_agents: np.ndarray  # (subtasks,)
    capacity: np.ndarray  # (agents,)


@dataclass
class AssignmentResult:
    x: np.ndarray  # bool (subtasks, agents)
    objective: float
    solver: str
    unassigned: list[int] = field(default_factory=list)  # subtasks below their minimum


def solve(problem: AssignmentProblem, method: str = "auto") -> AssignmentResult:
    if method == "auto":
        best = solve_uncontended(problem)
        if best is not None:
            return best
    pairs = int((problem.alpha > 0).sum())
    if method == "exact" or (method == "auto" and pairs <= EXACT_MAX_VARS):
        return solve_exact(problem)
    return solve_greedy(problem)


def _check(problem: AssignmentProblem) -> None:
    s, a = problem.alpha.shape
    if problem.min_agents.shape != (s,) or problem.max_agents.shape != (s,) or problem.capacity.shape != (a,):
        raise ValueError("assignment problem arrays do not match alpha's shape")
    if np.any(problem.min_agents < 0) or np.any(problem.max_agents < problem.min_agents):
        raise ValueError("need 0 <= min_agents <= max_agents for every subtask")


def solve_exact(problem: AssignmentProblem) -> AssignmentResult:
    """MILP over the candidate pairs only. Minimums are soft (a heavy penalty per missing agent)
    so an infeasible instance still yields the best partial assignment."""
    _check(problem)
    alpha = problem.alpha
    s, a = alpha.shape
    ii, jj = np.nonzero(alpha > 0)
    n = len(ii)
    if n == 0:
        return AssignmentResult(
            np.zeros_like(alpha, dtype=bool), 0.0, "milp", [i for i in range(s) if problem.min_agents[i] > 0]
        )
    # variables: x (n pairs) then shortfall y_i >= 0 per subtask
    big = float(alpha.max()) * (n + 1) + 1.0
    c = np.concatenate([-alpha[ii, jj], np.full(s, big)])
    rows_sub = coo_matrix((np.ones(n), (ii, np.arange(n))), shape=(s, n + s)).tolil()
    for i in range(s):
        rows_sub[i, n + i] = 1.0  # Σ_j x_ij + y_i >= min_i
    team_hi = coo_matrix((np.ones(n), (ii, np.arange(n))), shape=(s, n + s))
    cap = coo_matrix((np.ones(n), (jj, np.arange(n))), shape=(a, n + s))
    constraints = [
        LinearConstraint(rows_sub.tocsr(), lb=problem.min_agents.astype(float), ub=np.inf),
        LinearConstraint(team_hi.tocsr(), lb=-np.inf, ub=problem.max_agents.astype(float)),
        LinearConstraint(cap.tocsr(), lb=-np.inf, ub=problem.capacity.astype(float)),
    ]
    integrality = np.concatenate([np.ones(n), np.zeros(s)])
    bounds = Bounds(np.zeros(n + s), np.concatenate([np.ones(n), problem.min_agents.astype(float)]))
    res = milp(c, constraints=constraints, integrality=integrality, bounds=bounds)
    if res.x is None:
        raise RuntimeError(f"milp failed: {res.message}")
    x = np.zeros((s, a), dtype=bool)
    chosen = res.x[:n] > 0.5
    x[ii[chosen], jj[chosen]] = True
    return _result(problem, x, "milp")


def solve_uncontended(problem: AssignmentProblem) -> AssignmentResult | None:
    """Every subtask takes its best max_i candidates, if that fits every agent's capacity.

    Dropping the capacity constraints can only raise the optimum, and this choice is the
    optimum without them (α > 0, so a full team beats a smaller one); when it is also feasible
    it is optimal. That is the common case — plenty of capacity — and it costs microseconds
    where the MILP costs milliseconds. None when agents are contended: solve properly."""
    _check(problem)
    alpha = problem.alpha
    x = np.zeros(alpha.shape, dtype=bool)
    for i in range(alpha.shape[0]):
        candidates = np.flatnonzero(alpha[i] > 0)
        top = candidates[np.argsort(-alpha[i, candidates], kind="stable")][: int(problem.max_agents[i])]
        x[i, top] = True
    if np.any(x.sum(0) > problem.capacity):
        return None
    return _result(problem, x, "uncontended")


def solve_greedy(problem: AssignmentProblem) -> AssignmentResult:
    _check(problem)
    alpha = problem.alpha
    s, a = alpha.shape
    x = np.zeros((s, a), dtype=bool)
    cap = problem.capacity.astype(np.int64).copy()
    count = np.zeros(s, dtype=np.int64)
    # phase 1: minimums, subtasks with the fewest candidates first
    order = np.argsort((alpha > 0).sum(1), kind="stable")
    for i in order.tolist():
        for j in np.argsort(-alpha[i]).tolist():
            if count[i] >= problem.min_agents[i] or alpha[i, j] <= 0:
                break
            if cap[j] > 0 and not x[i, j]:
                x[i, j] = True
                cap[j] -= 1
                count[i] += 1
    # phase 2: best remaining pairs up to the team caps
    ii, jj = np.nonzero((alpha > 0) & ~x)
    for k in np.argsort(-alpha[ii, jj], kind="stable").tolist():
        i, j = int(ii[k]), int(jj[k])
        if count[i] < problem.max_agents[i] and cap[j] > 0:
            x[i, j] = True
            cap[j] -= 1
            count[i] += 1
    return _result(problem, x, "greedy")


def _result(problem: AssignmentProblem, x: np.ndarray, solver: str) -> AssignmentResult:
    objective = float((problem.alpha * x).sum())
    short = [i for i in range(x.shape[0]) if x[i].sum() < problem.min_agents[i]]
    return AssignmentResult(x, objective, solver, short)


def optimality_gap(problem: AssignmentProblem) -> float:
    """(exact − greedy) / exact on one instance; 0 when both are empty."""
    exact = solve_exact(problem).objective
    greedy = solve_greedy(problem).objective
    return 0.0 if exact <= 0 else (exact - greedy) / exact


def random_problem(
    rng: np.random.Generator, subtasks: int, agents: int, density: float = 0.3, max_team: int = 3, max_capacity: int = 2
) -> AssignmentProblem:
    """A random instance (for the optimality-gap measurement and tests)."""
    alpha = rng.random((subtasks, agents)) * (rng.random((subtasks, agents)) < density)
    hi = rng.integers(1, max_team + 1, subtasks)
    return AssignmentProblem(
        alpha.astype(np.float64), np.ones(subtasks, dtype=np.int64), hi, rng.integers(1, max_capacity + 1, agents)
    )
