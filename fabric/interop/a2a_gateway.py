"""An A2A agent joins the federation: its agent card becomes a VCV, FoA tasks become A2A messages.

    gateway = A2AGateway("http://127.0.0.1:9101", settings, spec=load_gateway_spec(path))
    await gateway.start()        # `foa agent a2a URL [--id] [--spec]`; gateway.stop() to leave

The card → VCV mapping (what the router sees):
- capability c = embedding of the card's description plus every skill's description,
- skills s = skill ids and tags,
- spec embedding e = embedding of the skills' examples (the card's description when none),
- resources, costs and policies from the spec overrides (fabric/interop/specs.py: a card carries
  no costs; the defaults are documented there), version v from the broker's retained copy.

The gateway re-reads the card every `refresh_s`: a changed card is a new VCV version; after
`offline_after` failed reads in a row the agent goes `offline` (the router stops routing to it)
and it comes back `online` at the first read that works. A card that carries signatures is
verified (keys from `card_keys`, else the signature's `jku`) and refused when none verifies.
The VCV is signed with the gateway's key (FOA_AGENT_KEY_DIR/{id}.key) as native agents' are.

Tasks: `draft` and `refine` are sent as one A2A message (text: the subtask, its inputs, and for
refine the peers' answers; a data part carries the same as JSON) and completed by a blocking
`message/send` or by `message/stream` when the card supports streaming. The final A2A task state
maps to the FoA outcome: completed → the answer (artifacts' text); failed, rejected, canceled,
input-required, auth-required → a failed FoA task whose error carries the agent's own message.
A FoA deadline (or `timeout_s`) that passes cancels the A2A task (`tasks/cancel`). `decompose`
is answered only when the card declares a planning skill (the agent is asked for a JSON plan,
validated against the orchestrator's Plan model); other agents decline, and the orchestrator
skips a declining proposer as it skips an absent one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from a2a.client import A2ACardResolver, A2AClientError, Client, ClientConfig, ClientFactory
from a2a.helpers import get_artifact_text, get_data_parts, get_message_text, new_data_part
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)
from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError

from agents.sdk import Agent, TaskFailed
from agents.spec import AgentSpec
from fabric.aio import wait_within
from fabric.bus import BrokerAddress
from fabric.embeddings import Embedder
from fabric.interop.specs import A2A_DEFAULT_RESOURCES, A2AConfig, GatewayError, GatewaySpec, slug
from fabric.llm.structured import extract_json
from fabric.messages import TaskRequest
from fabric.settings import Settings
from fabric.tasks import DecomposeInput, DraftInput, DraftOutput, Plan, RefineInput, RefineOutput
from fabric.vcv import MAX_VIEWS

log = logging.getLogger("foa.interop.a2a")

TaskHandler = Callable[[TaskRequest], Awaitable[dict[str, Any]]]

#: A2A task states that end a task, and the FoA outcome each maps to
FINAL_STATES: dict[int, str] = {
    TaskState.TASK_STATE_COMPLETED: "completed",
    TaskState.TASK_STATE_FAILED: "failed",
    TaskState.TASK_STATE_REJECTED: "rejected",
    TaskState.TASK_STATE_CANCELED: "canceled",
    TaskState.TASK_STATE_INPUT_REQUIRED: "input-required",
    TaskState.TASK_STATE_AUTH_REQUIRED: "auth-required",
}


def bind_sdk(agent: Agent, handlers: dict[str, TaskHandler]) -> Agent:
    """The one place this gateway touches the agent SDK's handler API (named handlers)."""
    for kind, fn in handlers.items():
        agent.add_handler(kind, fn)
    return agent


def card_hash(card: AgentCard) -> str:
    return hashlib.blake2b(card.SerializeToString(deterministic=True), digest_size=16).hexdigest()


def card_to_spec(card: AgentCard, overrides: GatewaySpec, agent_id: str) -> AgentSpec:
    """The AgentSpec whose VCV represents the card (see the module docstring for the mapping)."""
    if not card.skills:
        raise GatewayError(
            f"the agent card of {card.name or agent_id!r} declares no skills: the router needs at least one skill "
            "(with a description) to route to an A2A agent; add skills to the card"
        )
    parts = [card.description.strip()] + [f"{s.name}: {s.description}".strip(": ") for s in card.skills]
    if overrides.description:
        parts.append(overrides.description)
    description = "\n".join(p for p in parts if p)
    if not description:
        raise GatewayError(
            f"the agent card of {agent_id!r} has neither a description nor skill descriptions to route by"
        )
    skills: list[str] = []
    for s in card.skills:
        for item in [s.id, *s.tags]:
            if item and item not in skills:
                skills.append(item)
    skills += [s for s in overrides.skills if s not in skills]
    examples = [e for s in card.skills for e in s.examples]
    return AgentSpec(
        id=agent_id,
        name=overrides.name or card.name or agent_id,
        description=description,
        skills=skills,
        policies=overrides.policies,
        resources=overrides.resources or A2A_DEFAULT_RESOURCES,
        spec=overrides.spec or "\n".join(examples),
        tags=["a2a"],
        examples=(examples or [f"{s.name}: {s.description}" for s in card.skills if s.description])[:MAX_VIEWS],
    )


def plans(card: AgentCard, config: A2AConfig) -> bool:
    """Whether the card declares a planning skill (by id or tag)."""
    wanted = {p.lower() for p in config.planning_skills}
    return any(s.id.lower() in wanted or any(t.lower() in wanted for t in s.tags) for s in card.skills)


def draft_text(inp: DraftInput) -> str:
    parts = [inp.subtask]
    if inp.question.strip() != inp.subtask.strip():
        parts.append(f"This is part of: {inp.question}")
    if inp.context:
        parts.append("Results you can build on:\n" + "\n".join(f"- {c.answer}" for c in inp.context))
    return "\n\n".join(parts)


def refine_text(inp: RefineInput) -> str:
    peers = "\n".join(f"[{p.agent_id}] {p.answer}" for p in inp.peers)
    return (
        f"{inp.subtask}\n\nThis is part of: {inp.question}\n\nYour earlier answer:\n{inp.own_answer}\n\n"
        f"Other agents answered:\n{peers}\n\nRevise your answer: keep what is right, adopt what the others got right."
    )


def plan_text(inp: DecomposeInput) -> str:
    schema = json.dumps(Plan.model_json_schema())
    return (
        f"Plan this request as {inp.subtasks_min} to {inp.subtasks_max} subtasks. Answer with JSON only, "
        f"matching this schema: {schema}\n\nRequest: {inp.question}"
    )


def whole_numbers(value: Any) -> Any:
    """A2A data parts travel as protobuf Values, where 4326 comes back as 4326.0: undo that."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value


class A2AOutcome:
    """What one A2A exchange ended with: the final state, the answer text, the agent's reason."""

    def __init__(self) -> None:
        self.task_id: str | None = None
        self.state: str | None = None
        self.artifacts: dict[str, list[str]] = {}
        self.data: dict[str, list[Any]] = {}  # data parts per artifact: results, not prose
        self.status_text = ""
        self.direct_text = ""

    def absorb(self, event: StreamResponse) -> None:
        if event.HasField("message"):
            self.direct_text = get_message_text(event.message)
            self.state = "completed"
        elif event.HasField("task"):
            self._task(event.task)
        elif event.HasField("status_update"):
            update = event.status_update
            self.task_id = update.task_id or self.task_id
            self._status(
                update.status.state,
                get_message_text(update.status.message) if update.status.HasField("message") else "",
            )
        elif event.HasField("artifact_update"):
            update = event.artifact_update
            self.task_id = update.task_id or self.task_id
            text = get_artifact_text(update.artifact)
            chunks = self.artifacts.setdefault(update.artifact.artifact_id, [])
            data = self.data.setdefault(update.artifact.artifact_id, [])
            if not update.append:
                chunks.clear()
                data.clear()
            chunks.append(text)
            data.extend(get_data_parts(update.artifact.parts))

    def _task(self, task: Task) -> None:
        self.task_id = task.id
        for artifact in task.artifacts:
            self.artifacts[artifact.artifact_id] = [get_artifact_text(artifact)]
            self.data[artifact.artifact_id] = get_data_parts(artifact.parts)
        self._status(
            task.status.state, get_message_text(task.status.message) if task.status.HasField("message") else ""
        )

    def _status(self, state: int, text: str) -> None:
        if text:
            self.status_text = text
        if state in FINAL_STATES:
            self.state = FINAL_STATES[state]

    @property
    def exact(self) -> bool:
        """A data artifact is a result: the orchestrator keeps it verbatim (exactness.py)."""
        return any(self.data.values())

    @property
    def answer(self) -> str:
        text = "\n".join("".join(chunks) for chunks in self.artifacts.values()).strip()
        data = [whole_numbers(d) for parts in self.data.values() for d in parts]
        if data:
            dumped = json.dumps(data[0] if len(data) == 1 else data, sort_keys=True)
            text = f"{text}\n\n{dumped}".strip() if dumped not in text else text
        return text or self.direct_text.strip() or self.status_text.strip()


class A2AGateway:
    """One A2A agent as a federation member. See the module docstring."""

    def __init__(
        self,
        url: str,
        settings: Settings,
        *,
        spec: GatewaySpec | None = None,
        agent_id: str | None = None,
        broker: BrokerAddress | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        spec = spec or GatewaySpec()
        config = spec.a2a or A2AConfig(url=url)
        self.config = config.model_copy(update={"url": url.rstrip("/")}) if url else config
        self.overrides = spec
        self.settings = settings
        self._wanted_id = agent_id or spec.id
        self.agent_id = self._wanted_id or ""
        self._broker = broker
        self._embedder = embedder
        self.card: AgentCard | None = None
        self._card_hash: str | None = None
        self.agent: Agent | None = None
        self.online = False
        self.misses = 0
        self.checks = 0
        self.last_error: str | None = None
        self.card_errors = 0
        self._http: httpx.AsyncClient | None = None
        self._client: Client | None = None
        self._refresher: asyncio.Task[None] | None = None

    # ---- the card --------------------------------------------------------------------------

    async def read_card(self) -> AgentCard:
        """Fetch, parse (current A2A version and the 0.3 shape) and verify the agent card."""
        assert self._http is not None
        resolver = A2ACardResolver(self._http, self.config.url)
        try:
            card = await resolver.get_agent_card(relative_card_path=self.config.card_path)
        except A2AClientError as exc:
            raise GatewayError(f"cannot read the agent card at {self.config.url}: {exc}") from exc
        if card.signatures:
            await asyncio.to_thread(self._verify, card)
        return card

    def _verify(self, card: AgentCard) -> None:
        from a2a.utils.signing import SignatureVerificationError, create_signature_verifier

        def key_for(kid: str | None, jku: str | None) -> Any:
            if kid and kid in self.config.card_keys:
                return Path(self.config.card_keys[kid]).read_bytes()
            if jku:
                import jwt

                return jwt.PyJWKClient(jku).get_signing_key(kid or "").key
            raise GatewayError(
                f"no key to verify the card signature (kid {kid!r}): add it to a2a.card_keys in the spec"
            )

        verifier = create_signature_verifier(key_for, algorithms=["ES256", "ES384", "RS256", "PS256", "EdDSA"])
        try:
            verifier(card)
        except SignatureVerificationError as exc:
            raise GatewayError(
                f"the agent card at {self.config.url} carries a signature that does not verify: {exc}"
            ) from exc

    def _use_card(self, card: AgentCard) -> AgentSpec:
        spec = card_to_spec(card, self.overrides, self.agent_id)
        streaming = self.config.stream if self.config.stream is not None else bool(card.capabilities.streaming)
        assert self._http is not None
        self._client = ClientFactory(ClientConfig(streaming=streaming, httpx_client=self._http)).create(card)
        self.card, self._card_hash = card, card_hash(card)
        return spec

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the card (a clear GatewayError when it cannot be used), then join online."""
        self._http = httpx.AsyncClient(
            headers=self.config.auth.headers(), timeout=httpx.Timeout(self.config.timeout_s, connect=10.0)
        )
        try:
            card = await self.read_card()
            self.agent_id = self._wanted_id or slug(card.name, "a2a-agent")
            spec = self._use_card(card)
        except BaseException:
            await self._http.aclose()
            raise
        await self._join(spec)
        self._refresher = asyncio.create_task(self._refresh_forever())
        log.info("A2A agent joined", extra={"agent_id": self.agent_id, "url": self.config.url})

    async def _join(self, spec: AgentSpec) -> None:
        from fabric.security import agent_key_for, sign_vcv

        key = agent_key_for(self.settings, spec.id)
        signer = (lambda vcv: sign_vcv(vcv, key)) if key is not None else None
        agent = Agent(
            spec, self.settings, broker=self._broker, embedder=self._embedder, replica_id="a2a", signer=signer
        )
        self.agent = bind_sdk(agent, {"draft": self.draft, "refine": self.refine, "decompose": self.decompose})
        await agent.start()
        self.online = True

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self.agent is not None:
            await self.agent.stop()
        self.online = False
        if self._http is not None:
            await self._http.aclose()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad check
                log.exception("A2A card check failed", extra={"agent_id": self.agent_id})

    async def check(self) -> None:
        """One card re-read: version bump on change, offline after repeated failures, back online."""
        self.checks += 1
        try:
            card = await self.read_card()
            spec = card_to_spec(card, self.overrides, self.agent_id)
        except GatewayError as exc:
            self.misses += 1
            self.card_errors += 1
            self.last_error = str(exc)
            log.warning("A2A card check failed (%d in a row): %s", self.misses, exc, extra={"agent_id": self.agent_id})
            if self.online and self.misses >= self.config.offline_after and self.agent is not None:
                await self.agent.stop()
                self.online = False
                log.warning(
                    "A2A agent offline after %d failed card reads", self.misses, extra={"agent_id": self.agent_id}
                )
            return
        self.misses = 0
        changed = card_hash(card) != self._card_hash
        if changed:
            spec = self._use_card(card)
        if not self.online:
            await self._join(spec)
            log.info("A2A agent back online", extra={"agent_id": self.agent_id})
        elif changed and self.agent is not None:
            await self.agent.update(
                **{k: getattr(spec, k) for k in ("name", "description", "skills", "spec", "examples")}
            )
            log.info(
                "A2A card changed",
                extra={"agent_id": self.agent_id, "version": self.agent.vcv and self.agent.vcv.version},
            )

    # ---- tasks -----------------------------------------------------------------------------

    async def draft(self, task: TaskRequest) -> dict[str, Any]:
        inp = DraftInput.model_validate(task.input)
        outcome = await self.exchange(task, draft_text(inp), {"task_kind": "draft", **inp.model_dump(mode="json")})
        exact = outcome.exact
        return DraftOutput(answer=outcome.answer, confidence=0.9 if exact else 0.6, exact=exact).model_dump()

    async def refine(self, task: TaskRequest) -> dict[str, Any]:
        inp = RefineInput.model_validate(task.input)
        outcome = await self.exchange(task, refine_text(inp), {"task_kind": "refine", **inp.model_dump(mode="json")})
        # an A2A agent casts no stop vote: its revision is final for this round
        return RefineOutput(answer=outcome.answer or inp.own_answer, done=True, confidence=0.6).model_dump()

    async def decompose(self, task: TaskRequest) -> dict[str, Any]:
        inp = DecomposeInput.model_validate(task.input)
        if self.card is None or not plans(self.card, self.config):
            raise TaskFailed(f"{self.agent_id} declines decompose: its agent card declares no planning skill")
        outcome = await self.exchange(task, plan_text(inp), {"task_kind": "decompose", **inp.model_dump(mode="json")})
        try:
            return Plan.model_validate(extract_json(outcome.answer)).model_dump()
        except (ValueError, ValidationError) as exc:
            raise TaskFailed(f"{self.agent_id} answered decompose without a valid JSON plan: {exc}") from exc

    async def exchange(self, task: TaskRequest, text: str, data: dict[str, Any]) -> A2AOutcome:
        """Send one message; wait for a final state within the deadline; cancel the A2A task if not."""
        if self._client is None:
            raise TaskFailed(f"{self.agent_id} has no A2A client (the card was never read)")
        message = Message(
            role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=text), new_data_part({"foa": data})]
        )
        request = SendMessageRequest(
            message=message, configuration=SendMessageConfiguration(accepted_output_modes=["text"])
        )
        limit = self.config.timeout_s if task.deadline_at is None else max(0.05, task.deadline_at - time.time())
        outcome = A2AOutcome()
        try:
            await wait_within(self._consume(self._client.send_message(request), outcome), limit)
        except TimeoutError:
            await self._cancel_remote(outcome)
            raise TaskFailed(
                f"A2A agent {self.agent_id} did not finish within {limit:.1f}s"
                + (f"; its task {outcome.task_id} was canceled" if outcome.task_id else "")
            ) from None
        except (A2AClientError, httpx.HTTPError) as exc:
            raise TaskFailed(f"A2A agent {self.agent_id} at {self.config.url} failed the request: {exc}") from exc
        if outcome.state != "completed":
            reason = outcome.status_text or "no reason given"
            state = outcome.state or "no final state (the stream ended early)"
            raise TaskFailed(f"A2A agent {self.agent_id} ended the task {state}: {reason}")
        return outcome

    @staticmethod
    async def _consume(events: AsyncIterator[StreamResponse], outcome: A2AOutcome) -> None:
        try:
            async for event in events:
                outcome.absorb(event)
                if outcome.state is not None:
                    break
        finally:
            close = getattr(events, "aclose", None)  # an async generator: release its HTTP stream now
            if close is not None:
                await close()

    async def _cancel_remote(self, outcome: A2AOutcome) -> None:
        if outcome.task_id is None or self._client is None:
            return
        try:
            await wait_within(self._client.cancel_task(CancelTaskRequest(id=outcome.task_id)), 5.0)
        except Exception as exc:  # noqa: BLE001 - best effort: the FoA task fails either way
            log.warning("could not cancel A2A task %s: %s", outcome.task_id, exc, extra={"agent_id": self.agent_id})

    def card_json(self) -> dict[str, Any]:
        return MessageToDict(self.card) if self.card is not None else {}
