"""Synthesis (paper Alg. 5): node results in topological order become the job's answer.

- `concat` (the paper's default, no LLM): every node's answer under its subtask, in topological
  order, so each part of the answer shows where it came from.
- `rebase`: an LLM call that resolves conflicting assertions across node results.
- `merge`: an LLM call that summarises divergent perspectives into one answer.
If the LLM output is empty or fails, the answer falls back to `concat`: a job never loses its
results to a failed synthesis.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fabric.messages import Usage
from fabric.orchestrator.dag import Dag
from fabric.tasks import PeerAnswer

log = logging.getLogger("foa.orchestrator.synthesis")

#: (system, user, max_tokens) -> (text, usage)
SynthCall = Callable[[str, str, int], Awaitable[tuple[str, Usage]]]

INSTRUCTIONS = {
    "rebase": (
        "You combine expert results into one answer. Where results contradict each other, decide "
        "which assertion is better supported, keep it, and drop the other. Keep every safety warning."
    ),
    "merge": (
        "You combine expert results into one answer. Summarise the different perspectives into a "
        "single clear answer to the question, without repeating yourself. Keep every safety warning."
    ),
}


def predecessor_context(dag: Dag, node_id: str, answers: dict[str, str]) -> list[PeerAnswer]:
    """What a node's drafters see of the subtasks it depends on (the SYNTH of partial results)."""
    node = dag.node(node_id)
    return [
        PeerAnswer(agent_id=dep, answer=f"{dag.node(dep).text}\n{answers[dep]}")
        for dep in node.depends_on
        if dep in answers
    ]


def synthesis_results(dag: Dag, answers: dict[str, str]) -> list[PeerAnswer]:
    """The node results a `synthesise` task carries: subtask and answer, in topological order."""
    return [
        PeerAnswer(agent_id=n.node_id, answer=f"{n.text}\n{answers[n.node_id].strip()}")
        for n in dag.topological()
        if n.node_id in answers
    ]


def concat(dag: Dag, answers: dict[str, str]) -> str:
    if len(dag.nodes) == 1:
        return answers.get(dag.nodes[0].node_id, "").strip()
    parts = []
    for node in dag.topological():
        if node.node_id in answers:
            parts.append(f"## {node.text}\n{answers[node.node_id].strip()}")
    return "\n\n".join(parts)


async def synthesise(
    dag: Dag,
    answers: dict[str, str],
    *,
    question: str,
    mode: str,
    call: SynthCall | None,
    max_tokens: int = 400,
) -> tuple[str, Usage, str]:
    """Returns (answer, usage, mode actually used)."""
    joined = concat(dag, answers)
    if mode == "concat" or call is None or len(answers) < 2:
        return joined, Usage(), "concat"
    user = (
        f"Question: {question}\n\nExpert results, in dependency order:\n\n{joined}\n\n"
        "Write the final answer to the question."
    )
    try:
        text, usage = await call(INSTRUCTIONS[mode], user, max_tokens)
    except Exception as exc:  # noqa: BLE001 - fall back rather than lose the job
        log.warning("synthesis failed; falling back to concat", extra={"mode": mode, "error": str(exc)})
        return joined, Usage(), "concat"
    if not text.strip():
        return joined, usage, "concat"
    return text.strip(), usage, mode
