"""A job's budget: tokens, cost and wall-clock, charged with every call's real usage.

The orchestrator asks before optional work (extra proposers, refinement rounds, LLM synthesis)
whether the budget still allows it, keeping a reserve for the work that must still happen.
"""

from __future__ import annotations

import time

from fabric.errors import ConfigError
from fabric.messages import Budget, Usage


class BudgetError(ConfigError):
    """A budget that no job could meet (e.g. a deadline already in the past)."""


class BudgetTracker:
    def __init__(self, budget: Budget, started_at: float | None = None, used: Usage | None = None) -> None:
        self.budget = budget
        self.started_at = started_at or time.time()
        self.used = used or Usage()

    def charge(self, usage: Usage) -> None:
        self.used = self.used + usage

    @property
    def tokens_left(self) -> float:
        return float("inf") if self.budget.max_tokens is None else self.budget.max_tokens - self.used.tokens

    @property
    def cost_left(self) -> float:
        return float("inf") if self.budget.max_cost is None else self.budget.max_cost - self.used.cost

    @property
    def time_left(self) -> float:
        if self.budget.deadline_s is None:
            return float("inf")
        return self.budget.deadline_s - (time.time() - self.started_at)

    def allows(self, tokens: int = 0, cost: float = 0.0, seconds: float = 0.0) -> bool:
        """Whether work of this expected size fits in what is left."""
        return self.tokens_left >= tokens and self.cost_left >= cost and self.time_left >= seconds

    def exhausted(self) -> str | None:
        if self.tokens_left <= 0:
            return f"token budget of {self.budget.max_tokens} spent"
        if self.cost_left <= 0:
            return f"cost budget of {self.budget.max_cost} spent"
        if self.time_left <= 0:
            return f"deadline of {self.budget.deadline_s}s passed"
        return None


def check_feasible(budget: Budget, min_tokens: int) -> None:
    """Refuse at submission a budget no plan could fit, with a reason the user can act on."""
    if budget.max_tokens is not None and budget.max_tokens < min_tokens:
        raise BudgetError(f"token budget {budget.max_tokens} is below the {min_tokens} tokens one draft needs")
    if budget.deadline_s is not None and budget.deadline_s < 1.0:
        raise BudgetError(f"deadline {budget.deadline_s}s is too short for any job")
