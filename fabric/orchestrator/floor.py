"""Only agents that fit are assigned: the floor on α below which an agent is left out.

In a small federation every node used to get `agents_per_node` agents whatever their fit: a
time-zone tool at α 0.18 shared its node with a clinician at α 0.019, whose guess became the
answer when the tool failed. Now an agent is assigned only when its α reaches

    floor = fraction · the best α of the node        (FOA_ASSIGN_FLOOR, 0.8)

and the node's best agent is always kept, so a node may run with one agent. A node whose best
agent is below the router's calibrated abstention threshold still runs with that agent alone,
reported as `unfit`: nobody fits it well.

Measured with `benchmarks/assign_floor.py --json` (BFCL, teams of 3; dev chooses, live is held
out). Over the questions whose gold agent ranks 2nd or 3rd (where a second agent helps), and
over the non-gold agents of the top 3 (the fillers):

| floor | dev: gold kept | dev: fillers left out | live: gold kept | live: fillers left out |
|---|---|---|---|---|
| none | 1.00 | 0.00 | 1.00 | 0.00 |
| 0.5 · best | 1.00 | 0.21 | 1.00 | 0.08 |
| 0.7 · best | 0.92 | 0.46 | 0.97 | 0.16 |
| **0.8 · best** | 0.81 | 0.60 | 0.91 | 0.28 |
| the abstention threshold (0.198) as a floor too | 0.70 | 0.50 | 0.52 | 0.78 |

0.8 has the largest gold kept + fillers left out on dev. The threshold as a per-agent floor,
which the first design had, left out a third (dev) to a half (live) of the useful second
agents, so it only marks a node `unfit`. The same fraction picks the proposers in `decompose`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from fabric.messages import Match


class LeftOut(BaseModel):
    """An agent the router offered for a node that the floor left out (events, console)."""

    agent_id: str
    score: float
    floor: float

    def why(self) -> str:
        return f"{self.agent_id} (α {self.score:.3g} < floor {self.floor:.3g})"


@dataclass
class FloorCut:
    kept: list[Match]
    left_out: list[LeftOut] = field(default_factory=list)
    floor: float = 0.0
    unfit: bool = False  # the best agent is below the abstention threshold: it runs alone, reported


def floor_of(best: float, fraction: float) -> float:
    return fraction * best


def apply_floor(matches: Sequence[Match], *, fraction: float, threshold: float | None) -> FloorCut:
    """Keep the matches at or above the floor (ranked best first); the best one always stays;
    `threshold` (the abstention threshold) only marks a node whose best agent is under it."""
    ranked = sorted(matches, key=lambda m: -m.score)
    if not ranked:
        return FloorCut(kept=[])
    best = ranked[0].score
    floor = floor_of(best, fraction)
    kept = [ranked[0], *(m for m in ranked[1:] if m.score >= floor)]
    left = [LeftOut(agent_id=m.agent_id, score=round(m.score, 6), floor=round(floor, 6)) for m in ranked[1:]
            if m.score < floor]
    return FloorCut(kept=kept, left_out=left, floor=floor, unfit=threshold is not None and best < threshold)
