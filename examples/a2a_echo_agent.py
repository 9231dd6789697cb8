"""A small A2A agent built with the official `a2a-sdk`: an `echo` skill and a `word-stats` skill.

    python examples/a2a_echo_agent.py --port 9101
    foa agent a2a http://127.0.0.1:9101          # it joins a running federation

Besides the two skills, a few message prefixes make the agent show every A2A task state, so the
gateway's mapping of states to FoA outcomes can be seen (and is tested) against a real server:

    sleep:SECONDS   works for that long, then echoes (a FoA deadline cancels it)
    fail:REASON     the task ends `failed` with REASON
    reject:REASON   the task ends `rejected` with REASON
    ask:QUESTION    the task ends `input-required` with QUESTION

`--planner` adds a `planning` skill: asked for a plan, the agent answers with a JSON plan of two
subtasks. `--extra-skill-file PATH`: while PATH exists, its JSON (an AgentSkill: id, name,
description, tags, examples) is one more skill on the card, so a card can change while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
from pathlib import Path

import uvicorn
from a2a.helpers import new_data_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Message,
    Part,
    Task,
    TaskState,
    TaskStatus,
)
from starlette.applications import Starlette

log = logging.getLogger("a2a-echo")

ECHO = AgentSkill(
    id="echo",
    name="Echo",
    description="Repeats the text it is given, unchanged.",
    tags=["echo", "repeat", "text"],
    examples=["echo hello world", "repeat this sentence"],
)
WORD_STATS = AgentSkill(
    id="word-stats",
    name="Word statistics",
    description="Counts the words, characters and sentences of a text.",
    tags=["count", "words", "text statistics"],
    examples=["how many words are in this paragraph?"],
)
PLANNING = AgentSkill(
    id="planning",
    name="Planning",
    description="Splits a request into subtasks and answers with a JSON plan.",
    tags=["planning", "decomposition"],
    examples=["plan the steps to answer this question"],
)


def stats_of(text: str) -> dict[str, int]:
    sentences = len([s for s in re.split(r"[.!?]+", text) if s.strip()])
    return {"words": len(text.split()), "characters": len(text), "sentences": sentences}


def word_stats(text: str) -> str:
    stats = stats_of(text)
    return f"{stats['words']} words, {stats['characters']} characters, {stats['sentences']} sentences"


def plan_for(text: str) -> str:
    """A deterministic plan: understand the request, then answer it."""
    topic = (text.rsplit("Request:", 1)[-1].strip() or text).split("\n", 1)[0][:120]
    return json.dumps(
        {
            "subtasks": [
                {"id": "s1", "text": f"Collect the facts needed for: {topic}", "depends_on": []},
                {"id": "s2", "text": f"Write the answer to: {topic}", "depends_on": ["s1"]},
            ]
        }
    )


class EchoExecutor(AgentExecutor):
    """Answers every message with a task: submitted → working → one text artifact → final state."""

    def __init__(self, planner: bool) -> None:
        self.planner = planner

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message, task_id, context_id = context.message, context.task_id, context.context_id
        if message is None or not task_id or not context_id:
            return
        await event_queue.enqueue_event(
            Task(
                id=task_id,
                context_id=context_id,
                status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                history=[message],
            )
        )
        updater = TaskUpdater(event_queue=event_queue, task_id=task_id, context_id=context_id)
        text = context.get_user_input()
        command, _, rest = text.partition(":")
        command = command.strip().lower()

        def say(words: str) -> Message:
            return updater.new_agent_message(parts=[Part(text=words)])

        if command == "fail":
            await updater.failed(message=say(rest.strip() or "failed on purpose"))
            return
        if command == "reject":
            await updater.reject(message=say(rest.strip() or "rejected on purpose"))
            return
        if command == "ask":
            await updater.requires_input(message=say(rest.strip() or "which one do you mean?"))
            return
        await updater.start_work()
        if command == "sleep":
            seconds = float(rest.strip().split()[0]) if rest.strip() else 1.0
            await asyncio.sleep(seconds)
            text = f"slept {seconds:g}s"
        data: list[Part] = []
        if "plan" in text.lower() and "json" in text.lower() and self.planner:
            answer = plan_for(text)
        elif text.lower().startswith(("how many words", "count", "word stats")):
            counted = text.partition(":")[2] or text
            answer = word_stats(counted)
            data = [new_data_part(stats_of(counted))]  # the numbers as a data part: a result, not prose
        else:
            answer = text
        await updater.add_artifact(parts=[Part(text=answer), *data], name="answer", last_chunk=True)
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = TaskUpdater(
            event_queue=event_queue, task_id=context.task_id or "", context_id=context.context_id or ""
        )
        await updater.cancel(message=updater.new_agent_message(parts=[Part(text="canceled by the client")]))


def build_card(base_url: str, planner: bool, extra_skill_file: Path | None) -> AgentCard:
    skills = [ECHO, WORD_STATS] + ([PLANNING] if planner else [])
    if extra_skill_file is not None and extra_skill_file.exists():
        try:
            skills.append(AgentSkill(**json.loads(extra_skill_file.read_text())))
        except (ValueError, TypeError) as exc:
            log.warning("ignoring the extra skill file %s: %s", extra_skill_file, exc)
    return AgentCard(
        name="Echo agent",
        description="A small text utility agent: repeats text and counts its words.",
        version="1.0.0",
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text"],
        default_output_modes=["text"],
        skills=skills,
        supported_interfaces=[
            AgentInterface(protocol_binding="JSONRPC", protocol_version="1.0", url=f"{base_url}/a2a")
        ],
    )


def build_app(host: str, port: int, *, planner: bool = False, extra_skill_file: Path | None = None) -> Starlette:
    base = f"http://{host}:{port}"
    card = build_card(base, planner, extra_skill_file)
    handler = DefaultRequestHandler(
        agent_executor=EchoExecutor(planner), task_store=InMemoryTaskStore(), agent_card=card
    )

    async def live_card(_: AgentCard) -> AgentCard:
        return build_card(base, planner, extra_skill_file)  # re-read on every request: the card can change

    routes = [*create_agent_card_routes(card, card_modifier=live_card), *create_jsonrpc_routes(handler, rpc_url="/a2a")]
    return Starlette(routes=routes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--planner", action="store_true", help="also declare (and serve) a planning skill")
    parser.add_argument("--extra-skill-file", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    app = build_app(args.host, args.port, planner=args.planner, extra_skill_file=args.extra_skill_file)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
