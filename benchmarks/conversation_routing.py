"""Follow-up questions without their subject: routed alone, or with their conversation's context?

Conversations built from BFCL's single-turn questions (data no one here wrote): the first
question is a BFCL question (simple_python, multiple) whose one gold call has a numeric
argument; the follow-up changes that argument and names nothing else, as people write them:

- `value_only`: "And what about 20 instead?"
- `with_parameter`: "And what if the height is 20?" (the parameter's name, as words)

The follow-up's gold agent is the first question's function. Every question is routed through the
real router path (CapabilityIndex + RouterEngine: α with its lexical and spec factors) over BFCL's
dev federation (the functions of simple_python, multiple, parallel_multiple, irrelevance; as
`bfcl_routing.py` builds it), in the same run:

- `alone`: the follow-up's own text (what every job was routed by before conversations);
- `context`: `fabric.orchestrator.conversation.routing_text` (the earlier question, then the
  follow-up: what the orchestrator routes a follow-up by);
- `context_last_only`: only the most recent earlier question (differs from `context` on the third turn);
- `context_after`: the follow-up, then the earlier question (the other order, for comparison);
- `adaptive@g`: both routed, the context kept only when its best α exceeds g times the follow-up's
  own (`adaptive@1.5` is what the orchestrator does: `conversation.prefer_context`).

A third turn: "And what if the height is 40?" after the first question and "And what about 20
instead?" (context: both earlier questions, or `context_last_only`).

A control, `topic_change`: the second question is another BFCL question in full (another gold
function), asked in the same conversation: context must not drag it back to the first subject.
`orchestrator` sums up hit@1 without context (as before conversations) and with the rule the
orchestrator uses.

Usage: benchmarks/conversation_routing.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, progress
from benchmarks.bfcl_routing import DEV, Federation, data_dir, load_split
from fabric.embeddings import shared_embedder
from fabric.messages import RouteQuery
from fabric.orchestrator.conversation import CONTEXT_GAIN, routing_text
from fabric.tasks import Turn

SOURCES = ["simple_python", "multiple"]
TEMPLATES: dict[str, Callable[[str, str], str]] = {
    "value_only": lambda param, value: f"And what about {value} instead?",
    "with_parameter": lambda param, value: f"And what if the {param.replace('_', ' ')} is {value}?",
}
FRAMINGS: dict[str, Callable[[list[str], str], str]] = {
    "alone": lambda earlier, asked: asked,
    "context": lambda earlier, asked: routing_text(asked, [Turn(question=q) for q in earlier]),
    "context_last_only": lambda earlier, asked: routing_text(asked, [Turn(question=q) for q in earlier], questions=1),
    "context_after": lambda earlier, asked: " ".join([asked, *earlier]),
}
GAINS = (1.0, 1.25, CONTEXT_GAIN, 2.0)


def numeric_argument(split: str) -> dict[str, tuple[str, str]]:
    """Question id -> (a numeric parameter of its one gold call, a changed value)."""
    out: dict[str, tuple[str, str]] = {}
    path = data_dir() / "possible_answer" / f"BFCL_v4_{split}.json"
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if len(row["ground_truth"]) != 1:
            continue
        ((_, args),) = row["ground_truth"][0].items()
        for param, accepted in args.items():
            if accepted and isinstance(accepted[0], int | float) and not isinstance(accepted[0], bool):
                value = accepted[0]
                changed = value * 2 if value else 1
                out[row["id"]] = (param, str(int(changed)) if float(changed).is_integer() else f"{changed:g}")
                break
    return out


def conversations() -> list[dict[str, Any]]:
    pairs = []
    for split in SOURCES:
        args = numeric_argument(split)
        for q in load_split(split):
            if q["id"] in args and len(q["gold"]) == 1:
                param, value = args[q["id"]]
                pairs.append({"first": q["text"], "gold": q["gold"], "param": param, "value": value})
    return pairs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    started = time.perf_counter()
    embedder = shared_embedder(model="all-MiniLM-L6-v2")
    fed = Federation([q for s in DEV for q in load_split(s)], embedder)
    pairs = conversations()
    progress(f"{len(fed.functions)} agents, {len(pairs)} conversations")

    def tops(texts: list[str]) -> list[tuple[str, float]]:
        """Each text's first agent (its function's name) and α."""
        vecs = embedder.embed([t[:2000] for t in texts])
        out = []
        for text, vec in zip(texts, vecs, strict=True):
            res = fed.engine.route(RouteQuery(text=text[:4000], top_k=1, abstain=False), vec).response
            out.append((fed.name_of[res.matches[0].agent_id], res.matches[0].score) if res.matches else ("", 0.0))
        return out

    def hit_at_1(earlier: list[list[str]], asked: list[str], golds: list[list[str]]) -> dict[str, float]:
        """hit@1 of the last question under every framing, and `adaptive@g`: the context only when
        its best α exceeds g times the question's own (what the orchestrator does at CONTEXT_GAIN)."""
        routed = {name: tops([frame(e, q) for e, q in zip(earlier, asked, strict=True)])
                  for name, frame in FRAMINGS.items()}
        for gain in GAINS:
            routed[f"adaptive@{gain}"] = [c if c[1] > gain * a[1] else a
                                          for a, c in zip(routed["alone"], routed["context"], strict=True)]
        return {name: round(sum(t[0] in g for t, g in zip(got, golds, strict=True)) / len(golds), 4)
                for name, got in routed.items()}

    golds = [p["gold"] for p in pairs]
    first = hit_at_1([[] for _ in pairs], [p["first"] for p in pairs], golds)["alone"]
    follow_ups: dict[str, dict[str, float]] = {}
    for template, write in TEMPLATES.items():
        follow_ups[template] = hit_at_1([[p["first"]] for p in pairs], [write(p["param"], p["value"]) for p in pairs],
                                        golds)
        progress(f"{template}: {follow_ups[template]}")
    # a third turn: "And what if the height is 40?" after the first question and "And what about 20 instead?"
    third = hit_at_1([[p["first"], TEMPLATES["value_only"](p["param"], p["value"])] for p in pairs],
                     [TEMPLATES["with_parameter"](p["param"], twice(p["value"])) for p in pairs], golds)
    progress(f"third turn: {third}")
    # control: a full question of another subject (the pair half the set away) in the same conversation
    half = len(pairs) // 2
    others = [pairs[(i + half) % len(pairs)] for i in range(len(pairs))]
    changed = [(p, o) for p, o in zip(pairs, others, strict=True) if set(o["gold"]) != set(p["gold"])]
    topic_change = hit_at_1([[p["first"]] for p, _ in changed], [o["first"] for _, o in changed],
                            [o["gold"] for _, o in changed])
    progress(f"topic_change: {topic_change}")
    chosen = f"adaptive@{CONTEXT_GAIN}"
    emit(
        {
            "agents": len(fed.functions),
            "conversations": len(pairs),
            "first_question_hit1": first,
            "follow_up_hit1": follow_ups,
            "third_turn_hit1": third,
            "topic_change_hit1": topic_change | {"pairs": len(changed)},
            "orchestrator": {
                "rule": chosen,
                "follow_up_without_context": {t: v["alone"] for t, v in follow_ups.items()},
                "follow_up_with_context": {t: v[chosen] for t, v in follow_ups.items()},
                "third_turn": {"without_context": third["alone"], "with_context": third[chosen]},
                "topic_change": {"without_context": topic_change["alone"], "with_context": topic_change[chosen]},
            },
            "seconds": round(time.perf_counter() - started, 1),
        },
        args.json,
    )
    return 0


def twice(value: str) -> str:
    number = float(value) * 2
    return str(int(number)) if number.is_integer() else f"{number:g}"


if __name__ == "__main__":
    raise SystemExit(main())
