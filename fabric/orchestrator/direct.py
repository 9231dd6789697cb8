"""A direct route when one agent fits the whole question: no plan, one node, the question verbatim.

Planning costs a model call per proposer and, on a weak planner, the question's facts ("What
weekday is 2025-12-25?" was planned as "... 2025-12-26?" by the 135M model). When the question
routes with a clear winner, the plan adds nothing: the winner gets the question as it is.

A winner is clear when its α reaches the router's calibrated abstention threshold (it is
capable at all) and the second agent's α is at most `margin` times the winner's (nobody else
is close). `margin` (FOA_DIRECT_MARGIN, 0.5) is the largest that sends no multi-intent BFCL
dev question (`parallel_multiple`) directly; `benchmarks/plan_route.py --json`, BFCL's 1,006
dev functions as agents:

| margin | dev single intent: direct (gold) | dev multi intent | live_simple | NESTFUL multi-step |
|---|---|---|---|---|
| 0.4 | 0.09 (0.96) | 0.00 | 0.13 | 0.02 |
| **0.5** | 0.16 (0.98) | 0.00 | 0.14 | 0.05 |
| 0.6 | 0.26 (0.96) | 0.03 | 0.17 | 0.10 |
| 0.8 | 0.48 (0.94) | 0.19 | 0.21 | 0.30 |

A direct route is rare among a thousand look-alike functions and common in a small federation
of distinct agents (the weekday question in examples/mixed: α 0.075, next 0.012).

A question that asks several things ("Translate 'good morning' into French, and calculate 12 *
12.") can have a clear winner for its larger part (the translator, α 0.073, next 0.023) that
would answer half of it. So a direct route also needs every part (`question_parts`) to have no
other capable best agent; otherwise the orchestrator plans the question by its own parts, one
node each. `plan_route.py --json` (`with_parts`): dev single intent 0.16 direct either way,
held-out live_simple 0.143 either way, held-out NESTFUL multi-step 0.05 -> 0.03.

`--plan always` never routes directly; `--plan never` always does (the best agent, clear or not).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from fabric.messages import Match

PlanMode = Literal["auto", "always", "never"]


def clear_winner(matches: Sequence[Match], *, threshold: float | None, margin: float) -> bool:
    """Whether the best match fits the question on its own (see the module docstring)."""
    if not matches:
        return False
    ranked = sorted(matches, key=lambda m: -m.score)
    best = ranked[0].score
    if best <= 0 or (threshold is not None and best < threshold):
        return False
    second = ranked[1].score if len(ranked) > 1 else 0.0
    return second <= margin * best


def route_directly(mode: PlanMode, matches: Sequence[Match], *, threshold: float | None, margin: float) -> bool:
    if mode == "always" or not matches:
        return False
    return mode == "never" or clear_winner(matches, threshold=threshold, margin=margin)


#: where a question asks a second thing: a sentence end, or a joining word before a request verb
_PART_BREAK = re.compile(
    r"(?<=[.?!;])\s+|,?\s+(?:and\s+then|and\s+also|and|then|also)\s+(?=(?:please\s+)?(?:calculate|compute|"
    r"translate|write|find|tell|give|list|explain|summari[sz]e|convert|check|get|show|search|look|book|send|"
    r"create|make|draft|estimate|determine|identify|recommend|suggest|describe|compare|what|how|who|when|where|"
    r"which|why)\b)",
    re.IGNORECASE,
)


def question_parts(question: str) -> list[str]:
    """The question's parts when it asks several things ("Translate 'good morning' into French,
    and calculate 12 * 12."), each of at least three words; one part otherwise."""
    parts = [p.strip(" ,") for p in _PART_BREAK.split(question.strip())]
    parts = [p for p in parts if len(p.split()) >= 3]
    return parts if len(parts) > 1 else [question]
