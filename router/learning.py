"""Learned views: what each agent has been seen to do well, from the orchestrators' node outcomes.

An agent's description says what it claims; the subtasks it answered well say what it does
(Tool2Vec's point: tools described by the queries they served route better). For every agent
whose answer a completed job kept, the router keeps the subtask's embedding: the 8 latest per
agent (a reservoir; `reservoir=1` is a decayed centroid instead). For a task, ℓ is the best
cosine between it and those subtasks, and the evidence n is how many of them are nearer to the
task than the agent's own description is (each counted by how much nearer, scaled down by
unlearning). α's similarity moves toward ℓ by `weight · n / (n + prior)` of the gap
(router/scoring.py `learned_lift`), so:

- evidence must be a preference: an outcome where every assigned agent was kept (one agent, one
  cluster) teaches nothing, or the router would learn its own choices back;
- evidence is needed, and it must be about this task: subtasks the agent was kept for that are
  no closer to the task than its description add nothing; one near-identical one gives at most
  weight · 1/(1 + 0.5) = 2/3 of the gap;
- it only lifts: a learned view never lowers an agent below what its description earns;
- it is bounded: sim moves at most `weight` of the way to ℓ, never past it;
- it is paced: an agent takes at most `max_per_minute` outcomes a minute (the rest are counted
  and dropped), so a burst of forged or replayed outcomes cannot move it far;
- it can be unlearned: an agent assigned but not kept loses support in proportion to how close
  the subtask was to its learned view (wrong feedback decays instead of accumulating).

Learned words: the words of those kept subtasks that the agent's own BM25 document lacks
(router/lexical.py) count in its lexical factor too, at most `WORDS_MAX`, newest first, and leave
with them. A small embedder misses exactly what a served query names ("IMAX", "Reggae", a
product's name): the description never said it, the users did. They are gated like the vectors:
their BM25 is scaled by the same confidence n/(n + prior), so they count only for a task near
what the agent was kept for (`router/scoring.py`, factor `learned_words`).

State is keyed by agent id, not index row: an agent that leaves and comes back keeps what it
learned. Only agents the router knows get a learned view (an outcome naming unknown ids cannot
grow the state without bound). It is saved with the index snapshot.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Container
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from fabric.messages import NodeOutcome
from fabric.vectors import INT8_SCALE, to_int8
from router.lexical import tokenize

#: learned words per agent that count (256 bytes a learned agent)
WORDS_MAX = 64


@dataclass
class LearningConfig:
    """Chosen on BFCL's dev stream by `benchmarks/routing_learning.py --fit` (docs/architecture.md
    §8 has the runs): the 8 latest kept subtasks, evidence = those nearer to the task than the
    agent's description, weight 1, prior 0.5."""

    weight: float = 1.0  # the most of the gap to the learned cosine that sim may close
    prior: float = 0.5  # evidence at which an agent gets half of `weight`
    decay: float = 0.97  # per outcome: old evidence's share of the centroid and the support
    max_support: float = 50.0  # evidence saturates: old habits can still be unlearned
    unlearn: float = 0.5  # an assigned agent not kept loses this share of support · cos(subtask, view)
    max_per_minute: int = 30  # outcomes one agent takes per minute
    # 1 = one decayed centroid per agent; K > 1 = the K latest kept subtasks, scored by the best
    reservoir: int = 8
    # what counts as evidence n for a task (with a reservoir; a centroid always counts outcomes):
    # "count" = every outcome kept (decayed); "near" = Σ over the kept subtasks of
    # clip((cos − near) / (1 − near), 0, 1); "nearer" = the same with the agent's own similarity
    # before learning as the floor (only kept subtasks closer to the task than its description
    # count). "near"/"nearer" are scaled down by unlearning; a near-duplicate of a kept subtask
    # counts fully, an unrelated one not at all, so one wrong outcome lifts little elsewhere
    evidence: Literal["count", "near", "nearer"] = "nearer"
    near: float = 0.75
    # learned words: the first `words` distinct words of each kept subtask in the reservoir count in
    # the agent's lexical factor, gated by the evidence (0 = vectors only); they leave with it
    words: int = 32


@dataclass
class LearnStats:
    applied: int = 0
    rate_limited: int = 0
    not_completed: int = 0
    uncontested: int = 0  # every assigned agent was kept (one agent, one cluster): no preference shown
    rejected: int = 0  # wrong dimension, not unit length, ...


@dataclass
class LearnedViews:
    dim: int
    config: LearningConfig = field(default_factory=LearningConfig)
    slots: dict[str, int] = field(default_factory=dict)
    pool: np.ndarray = field(init=False)
    support: np.ndarray = field(init=False)
    filled: np.ndarray = field(init=False)  # kept subtasks stored per slot (≤ k)
    stats: LearnStats = field(default_factory=LearnStats)
    # per agent, the words of its kept subtasks (newest first, as many as the reservoir holds);
    # per slot, the lexical token ids of those its BM25 document lacks (router/index.py sets them)
    texts: dict[str, collections.deque[tuple[str, ...]]] = field(default_factory=dict)
    word_ids: np.ndarray = field(init=False)
    _recent: dict[str, collections.deque[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pool = np.zeros((0, self.k, self.dim), dtype=np.int8)  # to_int8, like the views
        self.support = np.zeros(0, dtype=np.float32)
        self.filled = np.zeros(0, dtype=np.int16)
        self.word_ids = np.full((0, WORDS_MAX), -1, dtype=np.int32)

    @property
    def k(self) -> int:
        return max(1, self.config.reservoir)

    def slot(self, agent_id: str, create: bool = False) -> int | None:
        slot = self.slots.get(agent_id)
        if slot is None and create:
            slot = self.slots[agent_id] = len(self.slots)
            if slot >= len(self.pool):
                cap = max(64, 2 * len(self.pool))
                pool, support = np.zeros((cap, self.k, self.dim), np.int8), np.zeros(cap, np.float32)
                filled = np.zeros(cap, np.int16)
                word_ids = np.full((cap, WORDS_MAX), -1, np.int32)
                pool[: len(self.pool)], support[: len(self.support)] = self.pool, self.support
                filled[: len(self.filled)] = self.filled
                word_ids[: len(self.word_ids)] = self.word_ids
                self.pool, self.support, self.filled, self.word_ids = pool, support, filled, word_ids
            self.pool[slot] = 0
            self.support[slot] = 0.0
            self.filled[slot] = 0
            self.word_ids[slot] = -1
        return slot

    def _paced(self, agent_id: str, now: float) -> bool:
        recent = self._recent.setdefault(agent_id, collections.deque())
        while recent and recent[0] <= now - 60.0:
            recent.popleft()
        if len(recent) >= self.config.max_per_minute:
            self.stats.rate_limited += 1
            return False
        recent.append(now)
        return True

    def observe(self, outcome: NodeOutcome, now: float | None = None,
                known: Container[str] | None = None) -> list[str]:
        """Fold one node outcome in; returns the agents whose learned view changed. `known`: the
        agent ids that may get a learned view (the index's agents)."""
        if not outcome.completed:
            self.stats.not_completed += 1
            return []
        if not set(outcome.assigned) - set(outcome.kept):
            # kept is evidence only against someone not kept: a node with one agent, or one cluster
            # of all its agents, keeps whoever was assigned, and learning from it would only
            # reinforce the router's own choice (seen in use: the same question asked five times
            # went direct to one agent on its own learned view)
            self.stats.uncontested += 1
            return []
        vec = np.asarray(outcome.vector, dtype=np.float32)
        norm = float(np.linalg.norm(vec)) if vec.shape == (self.dim,) else 0.0
        if norm < 0.5:
            self.stats.rejected += 1
            return []
        vec = vec / norm
        now = time.monotonic() if now is None else now
        cfg = self.config
        changed = []
        kept = {a for a in outcome.kept if known is None or a in known}
        for agent_id in kept:
            if not self._paced(agent_id, now):
                continue
            slot = self.slot(agent_id, create=True)
            assert slot is not None
            n = float(self.support[slot]) * cfg.decay
            if self.k == 1:
                centroid = n * self.vectors(slot)[0] + vec
                self.pool[slot, 0] = to_int8(centroid / max(float(np.linalg.norm(centroid)), 1e-9))
            else:  # the newest replaces the oldest
                self.pool[slot] = np.roll(self.pool[slot], 1, axis=0)
                self.pool[slot, 0] = to_int8(vec)
            self.filled[slot] = min(int(self.filled[slot]) + 1, self.k)
            self.support[slot] = min(n + 1.0, cfg.max_support)
            if cfg.words:
                texts = self.texts.setdefault(agent_id, collections.deque(maxlen=self.k))
                texts.appendleft(tuple(dict.fromkeys(tokenize(outcome.subtask)))[: cfg.words])
            changed.append(agent_id)
        for agent_id in set(outcome.assigned) - kept:
            slot = self.slot(agent_id)
            if slot is None or not self._paced(agent_id, now):
                continue
            closeness = max(0.0, float((self.vectors(slot) @ vec).max()))
            self.support[slot] *= 1.0 - cfg.unlearn * closeness
            changed.append(agent_id)
        self.stats.applied += 1
        return changed

    def similarity(self, slots: np.ndarray, qvec: np.ndarray,
                   sim: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(cosine to the learned view, support) for slots (-1 = none: 0 and 0); `sim`: the
        agents' similarity before learning (the floor of the relative local evidence)."""
        cos = np.zeros(len(slots), dtype=np.float32)
        support = np.zeros(len(slots), dtype=np.float32)
        sel = np.flatnonzero(slots >= 0)
        if len(sel):
            s = slots[sel]
            each = (self.pool[s].astype(np.float32) @ np.asarray(qvec, dtype=np.float32)) / INT8_SCALE  # (agents, K)
            cos[sel] = each.max(axis=1)
            support[sel] = self.support[s]
            cfg = self.config
            if cfg.evidence != "count" and self.k > 1:
                filled = np.maximum(self.filled[s], 1)
                if cfg.evidence == "nearer" and sim is not None:
                    floor = np.clip(sim[sel], 0.0, 0.99)[:, None]
                else:
                    floor = np.full((len(sel), 1), min(cfg.near, 0.99), dtype=np.float32)
                kernel = np.clip((each - floor) / (1.0 - floor), 0.0, 1.0).sum(axis=1)
                support[sel] = kernel * np.minimum(1.0, self.support[s] / filled)
        return cos, support

    def lift(self, sim: np.ndarray, cos: np.ndarray, support: np.ndarray) -> np.ndarray:
        """How much the learned views add to sim: weight · n/(n + prior) · max(0, cos − sim)."""
        cfg = self.config
        confidence = support / (support + cfg.prior)
        return np.asarray(cfg.weight * confidence * np.maximum(0.0, cos - sim), dtype=np.float32)

    def words_of(self, agent_id: str) -> list[str]:
        """The agent's learned words, newest subtask first, each once."""
        return list(dict.fromkeys(w for text in self.texts.get(agent_id, ()) for w in text))

    def set_word_ids(self, slot: int, ids: list[int]) -> None:
        self.word_ids[slot] = -1
        self.word_ids[slot, : min(len(ids), WORDS_MAX)] = ids[:WORDS_MAX]

    def of(self, agent_id: str) -> tuple[np.ndarray, float] | None:
        slot = self.slots.get(agent_id)
        return None if slot is None else (self.vectors(slot)[0], float(self.support[slot]))

    def vectors(self, slot: int) -> np.ndarray:
        """The slot's kept subtasks as float vectors (K, dim); empty entries are zero."""
        return np.asarray(self.pool[slot].astype(np.float32) / INT8_SCALE)

    # ---- snapshot -------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        n = len(self.slots)
        ids = sorted(self.slots, key=self.slots.__getitem__)
        np.save(folder / "learned_ids.npy", np.frombuffer("\0".join(ids).encode(), dtype=np.uint8), allow_pickle=False)
        np.save(folder / "learned_pool.npy", self.pool[:n], allow_pickle=False)
        np.save(folder / "learned_support.npy", self.support[:n], allow_pickle=False)
        np.save(folder / "learned_word_ids.npy", self.word_ids[:n], allow_pickle=False)
        (folder / "learned_words.json").write_text(json.dumps({a: [list(t) for t in texts]
                                                                for a, texts in self.texts.items()}))

    @classmethod
    def load(cls, folder: Path, dim: int, config: LearningConfig | None = None) -> LearnedViews:
        config = config or LearningConfig()
        if not (folder / "learned_ids.npy").exists():  # a snapshot older than learning
            return cls(dim, config)
        raw = np.load(folder / "learned_ids.npy").tobytes().decode()
        ids = raw.split("\0") if raw else []
        pool = np.load(folder / "learned_pool.npy")
        if pool.ndim != 3 or pool.shape[0] != len(ids) or pool.shape[2] != dim:
            raise ValueError(f"learned views in {folder}: {pool.shape} for {len(ids)} agents of dimension {dim}")
        views = cls(dim, replace(config, reservoir=pool.shape[1]))  # as saved
        views.slots = {agent_id: i for i, agent_id in enumerate(ids)}
        if pool.dtype != np.int8:
            raise ValueError(f"learned views in {folder}: {pool.dtype}, expected int8")
        views.pool = np.array(pool)
        views.filled = (np.abs(pool.astype(np.int16)).sum(axis=2) > 0).sum(axis=1).astype(np.int16)  # as stored
        views.support = np.array(np.load(folder / "learned_support.npy"), dtype=np.float32)
        views.word_ids = np.full((len(ids), WORDS_MAX), -1, dtype=np.int32)
        if (folder / "learned_words.json").exists():  # a snapshot older than learned words has none
            views.texts = {a: collections.deque(map(tuple, texts), maxlen=views.k)
                           for a, texts in json.loads((folder / "learned_words.json").read_text()).items()}
            word_ids = np.load(folder / "learned_word_ids.npy")
            views.word_ids[:, : word_ids.shape[1]] = word_ids[:, :WORDS_MAX]
        return views
