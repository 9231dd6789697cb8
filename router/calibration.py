"""Abstention threshold from data: the cut on the best α that separates relevant from
irrelevant queries best (max F1 of "abstain" on the irrelevant ones).

Probes for a live federation come from the agents themselves: a relevant probe is a random
60% of the words of an agent's description (a crude paraphrase that still names the job); an
irrelevant probe is text about nothing a software agent federation does (OFF_TOPIC). For
BFCL the dev splits give labelled relevant / irrelevant questions directly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

OFF_TOPIC: tuple[str, ...] = (
    "What is your favourite colour and why?",
    "Tell me a joke about penguins.",
    "Who won the football world cup in 1998?",
    "How tall is the Eiffel Tower?",
    "Write a haiku about autumn leaves.",
    "What did you have for breakfast today?",
    "Is it going to rain in Lisbon tomorrow?",
    "Recommend a good romantic comedy from the nineties.",
    "How do I get red wine out of a carpet?",
    "What is the capital of Mongolia?",
    "Sing me happy birthday.",
    "How many legs does a spider have?",
    "Who painted the ceiling of the Sistine Chapel?",
    "What is the best way to train a puppy to sit?",
    "Describe the smell of fresh bread.",
    "Which came first, the chicken or the egg?",
    "What time does the sun set in Oslo in June?",
    "Suggest a name for my goldfish.",
    "How do you fold a paper crane?",
    "Why is the sky blue?",
    "What rhymes with orange?",
    "Plan a birthday party for a seven year old.",
    "Who is the lead singer of the Rolling Stones?",
    "How long should I boil an egg?",
)


@dataclass
class Calibration:
    threshold: float
    f1: float
    precision: float
    recall: float
    relevant: int
    irrelevant: int

    def info(self) -> dict[str, float | int]:
        return {"f1": self.f1, "precision": self.precision, "recall": self.recall,
                "relevant": self.relevant, "irrelevant": self.irrelevant}


def abstain_metrics(
    top_relevant: np.ndarray, top_irrelevant: np.ndarray, threshold: float
) -> tuple[float, float, float]:
    """(precision, recall, f1) of abstaining (top α < threshold) on the irrelevant queries."""
    tp = float((top_irrelevant < threshold).sum())
    fp = float((top_relevant < threshold).sum())
    fn = float(len(top_irrelevant) - tp)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def calibrate(top_relevant: Sequence[float], top_irrelevant: Sequence[float]) -> Calibration:
    """The F1-best cut on the best α (abstain below it). Between the two scores that bound the
    best cut it sits at a quarter of the gap above the lower one: probes built from the agents'
    own descriptions score higher than real relevant queries, so the cut leans to answering."""
    rel = np.asarray(top_relevant, dtype=np.float64)
    irr = np.asarray(top_irrelevant, dtype=np.float64)
    if len(rel) == 0 or len(irr) == 0:
        raise ValueError("calibration needs at least one relevant and one irrelevant query")
    values = np.unique(np.concatenate([rel, irr, [0.0, 1.5]]))
    cuts = values[:-1] + 0.25 * (values[1:] - values[:-1])
    best: tuple[float, float, float, float] | None = None
    for cut in cuts:
        p, r, f = abstain_metrics(rel, irr, float(cut))
        if best is None or f > best[3] + 1e-12:
            best = (float(cut), p, r, f)
    assert best is not None
    return Calibration(best[0], best[3], best[1], best[2], len(rel), len(irr))


def relevant_probes(descriptions: Sequence[str], seed: int = 0, per_agent: int = 1) -> list[str]:
    """Word-dropout paraphrases of agents' descriptions (each keeps ~60% of the words)."""
    rng = random.Random(seed)
    out = []
    for text in descriptions:
        words = text.split()
        if not words:
            continue
        for _ in range(per_agent):
            keep = [w for w in words if rng.random() < 0.6] or words[:1]
            out.append(" ".join(keep))
    return out
