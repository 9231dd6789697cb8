"""Reputation: an exponentially weighted record of each agent's contributions.

A contribution's quality is how much the agent's final answer agreed with what its node finally
answered (cosine of embeddings, clipped to [0, 1]); a failed or timed-out task scores 0. The
score starts at 0.5 (unknown) and moves by `rate` per contribution; routers multiply it into α,
so agents that keep disagreeing with the consensus or failing get fewer subtasks. Scores are also
kept per capability area (the subtask's best-matching shipped skill is not known here, so the
area is the node's first word bucket given by the caller).
"""

from __future__ import annotations

import time

from fabric.messages import Reputation

PRIOR = 0.5


class ReputationBook:
    def __init__(self, rate: float = 0.2) -> None:
        self.rate = rate
        self.records: dict[str, Reputation] = {}

    def score(self, agent_id: str) -> float:
        rec = self.records.get(agent_id)
        return rec.score if rec else PRIOR

    def weight(self, agent_id: str) -> float:
        """The multiplier used in votes: 1.0 for an unknown agent, 0.5..1.5 with history."""
        return 0.5 + self.score(agent_id)

    def observe(self, agent_id: str, quality: float, area: str | None = None) -> Reputation:
        quality = min(1.0, max(0.0, quality))
        rec = self.records.get(agent_id) or Reputation(agent_id=agent_id, score=PRIOR, jobs=0)
        score = (1 - self.rate) * rec.score + self.rate * quality
        by_area = dict(rec.by_area)
        if area:
            by_area[area] = (1 - self.rate) * by_area.get(area, PRIOR) + self.rate * quality
        updated = Reputation(agent_id=agent_id, score=score, jobs=rec.jobs + 1, by_area=by_area, at=time.time())
        self.records[agent_id] = updated
        return updated

    def load(self, rec: Reputation) -> None:
        current = self.records.get(rec.agent_id)
        if current is None or rec.at >= current.at:
            self.records[rec.agent_id] = rec
