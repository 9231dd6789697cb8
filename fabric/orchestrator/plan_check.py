"""Plans that fit the question: every proposed subtask must be an instruction about it.

A 135M planner, and sometimes a large one, writes subtasks that are not instructions at all:
a timestamp copied out of the prompt ("20-Nov-20, 23:45:56.789,"), a two-word fragment, the
planning instructions echoed back. Such a subtask used to become a DAG node, the router gave it
to whichever agents were least bad at nothing, and the agents that fit the question never saw
it. Three checks, cheapest first:

- **degenerate**: fewer than `MIN_WORDS` alphabetic words (dates, times, numbers, fragments),
  mostly the planning prompt's own words (an echo of the instructions), or chat instead of an
  instruction: a statement that opens with a pronoun or a greeting ("I love this product",
  "This is a great idea", "Hi Dr. Alvarez, ..."), which the 135M planner writes often and no
  gold step does (0 of NESTFUL's 797 gold steps, 0 of HealthBench's 4,106 positive rubric
  criteria; `benchmarks/plan_check.py`);
- **an altered copy**: the question in its own words with its values changed ("What weekday
  is 2025-12-26?" for "What weekday is 2025-12-25?", seen in a `foa run` of that question): a
  subtask that shares `COPY_WORDS` of its distinct words and of the question's, and whose
  numbers, dates or amounts differ from the question's. MiniLM puts it next to the question
  (cosine ~0.95), so no similarity floor can tell; it answers a question nobody asked;
- **off-question**: cosine between the subtask and the question below `similarity_floor`
  (FOA_PLAN_SIMILARITY_FLOOR, -0.05). Measured with `benchmarks/plan_check.py --json`: NESTFUL's
  gold steps sit far above any floor (1st percentile 0.145), but HealthBench's positive rubric
  criteria, which read like the parts of a clinical plan ("Advises the user to seek emergency
  care ..."), reach down to -0.06 (1st percentile) against their own prompt. The largest floor
  that keeps 98% of both suites' gold steps is -0.05; it drops 1.6% of HealthBench's gold
  steps and only 3-5% of steps set against a *different* question. So MiniLM's cosine only
  removes what is clearly about something else; the text checks above do the main work.

A plan left with no usable subtask becomes the one-node plan (the question verbatim); the
orchestrator reports every dropped subtask with its reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from fabric.orchestrator.dag import EmbedFn
from fabric.tasks import Plan

#: a subtask needs this many words of 2+ letters: "20-Nov-20, 23:45:56.789," has one
MIN_WORDS = 3
#: the planning instructions (agents/worker.py's decompose prompt), echoed back by weak planners
PROMPT_WORDS = frozenset(
    "split this request into subtasks that different experts could work on each subtask is one short "
    "instruction if a subtask needs the result of another list that subtask's id in depends_on".split()
)
_WORD = re.compile(r"[^\W\d_]{2,}")
#: how chat opens, and no instruction does
CHAT_OPENERS = frozenset(
    "i i'm i've i'd we we're she he they it it's this that these those my our your hi hello hey thanks thank "
    "yes no ok okay sure".split()
)
_FIRST = re.compile(r"[A-Za-z']+")
#: a literal value: a token with a digit ("2025-12-25", "1234", "3.5", "10am")
_VALUE = re.compile(r"[\w.:/-]*\d[\w.:/-]*")
#: a subtask and a question that share this much of each one's distinct words are one text
COPY_WORDS = 0.8


class DroppedSubtask(BaseModel):
    """A proposed subtask the plan check removed, and why (shown in events and the console)."""

    proposer: str
    subtask_id: str
    text: str
    reason: str
    similarity: float | None = None


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def degenerate_reason(text: str) -> str | None:
    """Why `text` is not an instruction at all (None: it may be one)."""
    words = _words(text)
    if len(words) < MIN_WORDS:
        return f"a fragment, not an instruction ({len(words)} word(s) of text)"
    echoed = sum(w in PROMPT_WORDS for w in words)
    if len(words) >= 6 and echoed / len(words) >= 0.7:
        return "an echo of the planning instructions"
    first = _FIRST.search(text)
    if first is not None and first.group().lower() in CHAT_OPENERS and not text.rstrip().endswith("?"):
        return f"a statement, not an instruction (it opens with {first.group()!r})"
    return None


_ENUMERATOR = re.compile(r"^\s*\d+[.)]\s+")  # "1. Act as ...": a list's numbering is not a value


def _values(text: str) -> set[str]:
    return {v.strip(".:/-") for v in _VALUE.findall(_ENUMERATOR.sub("", text.lower()))}


def altered_copy_reason(text: str, question: str) -> str | None:
    """Why `text` is the question with its values changed (None: it is not). A subtask may
    bring values of its own (a step of a calculation); only one that also repeats the question's
    words and leaves out some of its values is a different instance of the same question."""
    values, asked = _values(text), _values(question)
    new, missing = values - asked, asked - values
    if not new or not missing:
        return None
    words, asked_words = set(_words(text)), set(_words(question))
    shared = len(words & asked_words)
    if not words or shared < COPY_WORDS * len(words) or shared < COPY_WORDS * len(asked_words):
        return None  # not the question's wording, or only a part of it (a step of a longer request)
    return f"the question with its values changed ({', '.join(sorted(new))} instead of {', '.join(sorted(missing))})"


def check_plans(
    question: str,
    proposals: Sequence[tuple[str, Plan]],
    embed: EmbedFn,
    *,
    similarity_floor: float,
    verbatim: str | None = None,
) -> tuple[list[tuple[str, Plan]], list[DroppedSubtask]]:
    """The proposals with unusable subtasks removed (a proposal left empty is removed), and what
    was dropped. Dependencies on a dropped subtask are dropped with it (the edge, not the node).
    `question` is what subtasks are compared with (a follow-up's routing text, with its
    conversation's subject); `verbatim`, the user's own question, is never a fragment either."""
    own = {" ".join(t.split()) for t in (question, verbatim) if t}
    asked = " ".join(own)  # the values and words of the question and of the user's own text
    dropped: list[DroppedSubtask] = []
    candidates: list[tuple[int, int]] = []  # (proposal, subtask) that passed the text check
    for p, (proposer, plan) in enumerate(proposals):
        for s, sub in enumerate(plan.subtasks):
            reason = None if sub.text in own else degenerate_reason(sub.text) or altered_copy_reason(sub.text, asked)
            if reason is None:
                candidates.append((p, s))
            else:
                dropped.append(DroppedSubtask(proposer=proposer, subtask_id=sub.id, text=sub.text, reason=reason))
    sims: dict[tuple[int, int], float] = {}
    if candidates:
        texts = [proposals[p][1].subtasks[s].text for p, s in candidates]
        vecs = np.asarray(embed([question, *texts]))
        for key, sim in zip(candidates, (vecs[1:] @ vecs[0]).tolist(), strict=True):
            sims[key] = float(sim)
    kept: list[tuple[str, Plan]] = []
    for p, (proposer, plan) in enumerate(proposals):
        subs = []
        for s, sub in enumerate(plan.subtasks):
            if (p, s) not in sims:
                continue
            if sims[(p, s)] < similarity_floor:
                dropped.append(
                    DroppedSubtask(
                        proposer=proposer,
                        subtask_id=sub.id,
                        text=sub.text,
                        reason=f"off the question (similarity {sims[(p, s)]:.2f} < {similarity_floor:.2f})",
                        similarity=round(sims[(p, s)], 4),
                    )
                )
                continue
            subs.append(sub)
        if subs:
            ids = {x.id for x in subs}
            fixed = [x.model_copy(update={"depends_on": [d for d in x.depends_on if d in ids]}) for x in subs]
            kept.append((proposer, Plan(subtasks=fixed)))
    return kept, dropped
