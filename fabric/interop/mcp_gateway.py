"""An MCP server joins the federation: its tools become one agent (or one agent per tool), and
a `draft` is answered by one tool call.

    gateway = MCPGateway(MCPConfig(stdio="python examples/mcp_tools_server.py"), settings)
    await gateway.start()        # `foa agent mcp --stdio "CMD ARGS" | --url URL [--per-tool]`

VCV: description = the server's instructions plus each tool's description, skills = the tool
names (per tool: that tool's description and name). A `tools/list_changed` notification (or a
`subscriptions/listen` event on 2026-07-28 connections) re-lists the tools: a changed list is a
new VCV version; per-tool agents of removed tools leave, new tools join.

A draft: the tool is picked by embedding similarity between the subtask and the tools'
descriptions, among those whose parameters can take every value the subtask names where any
can; when the best two are within `tie_margin`, the agent's LLM decides between them.
Arguments (`fill_arguments`): a tool whose only parameter is free text (query, text, question,
...) gets the subtask itself, with no LLM; otherwise what the schema makes checkable is read from
the subtask first (`fabric/interop/tool_arguments.py`: enum values, bounded numbers, booleans,
dates, time zones, quoted spans, expressions; zones, dates, enum values and URLs also from the
job's question when the subtask leaves them open), and the LLM writes only the required parameters
still missing, under a schema reduced to them (a grammar on the embedded model, `json_schema`
on OpenAI-compatible servers), seeing each one's description and the values already found.
The merged arguments are validated against the tool's schema and re-asked with the validation
error fed back, up to `argument_retries` times. A tool that answers `isError` (or refuses the
call as invalid params) most often got a wrong argument: its message goes back to the LLM,
which rewrites the arguments, up to `argument_retries` times; then the task fails with the
tool's own message. Before any call, the arguments must carry every value the subtask names (a
date, time, URL, e-mail or number: `values_not_carried`); a call that drops one would answer
another question exactly, so it goes back to the LLM like a refusal, or fails at once when no
parameter of the tool could take the value ("What weekday is 2025-12-25?" to a current-time
tool). The answer is the result's text plus its structured content, marked exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shlex
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import numpy as np
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, TextContent, Tool, ToolListChangedNotification

from agents.host import AgentHost, HostedAgent
from agents.sdk import TaskFailed
from agents.spec import AgentSpec
from fabric.aio import wait_within
from fabric.bus import BrokerAddress
from fabric.embeddings import Embedder, shared_embedder
from fabric.interop.specs import MCP_DEFAULT_RESOURCES, GatewayError, GatewaySpec, MCPConfig, slug
from fabric.interop.tool_arguments import (
    extract,
    extract_named,
    fits_in_typed_parameters,
    is_free_text,
    parameters_taking,
    primary_type,
    task_values,
    trim_run_on,
    values_not_carried,
)
from fabric.llm.base import ChatMessage, LLMBackend, LLMError
from fabric.llm.structured import JSONExtractError, extract_json
from fabric.messages import TaskRequest, Usage
from fabric.settings import Settings
from fabric.tasks import DraftInput, DraftOutput, RefineInput, RefineOutput
from fabric.views import tool_views

log = logging.getLogger("foa.interop.mcp")


def bind_sdk(agent: HostedAgent, gateway: MCPGateway, tools: list[str] | None) -> HostedAgent:
    """The one place this gateway touches the agent SDK's handler API (named handlers)."""

    async def draft(task: TaskRequest) -> tuple[dict[str, Any], Usage]:
        return await gateway.draft(task, tools)

    agent.add_handler("draft", draft)
    agent.add_handler("refine", gateway.refine)
    agent.add_handler("decompose", gateway.decompose)
    return agent


def first_leaf(exc: BaseException) -> BaseException:
    """anyio wraps failures in exception groups; the first leaf is what the user needs to see."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def single_string_parameter(tool: Tool) -> str | None:
    """The parameter name when the tool takes exactly one string."""
    props = props_of(tool)
    if len(props) != 1:
        return None
    name, schema = next(iter(props.items()))
    return name if isinstance(schema, dict) and schema.get("type") == "string" else None


def whole_text_parameter(tool: Tool) -> str | None:
    """The parameter that gets the subtask itself: the tool's one parameter, when it is free text."""
    only = single_string_parameter(tool)
    return only if only is not None and is_free_text(only, props_of(tool)[only]) else None


def result_answer(result: CallToolResult) -> tuple[str, Any]:
    """The result's text and structured content, as one answer text (structured appended when it
    says more than the text)."""
    text = "\n".join(c.text for c in result.content if isinstance(c, TextContent)).strip()
    structured = result.structured_content
    if structured is not None:
        dumped = json.dumps(structured, sort_keys=True)
        plain = structured.get("result") if isinstance(structured, dict) and set(structured) == {"result"} else None
        if not text:
            text = dumped if plain is None else str(plain)
        elif text != dumped and text != str(plain) and _json_of(text) != structured:
            text = f"{text}\n\nstructured: {dumped}"
    return text, structured


def _json_of(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


class ArgumentsRefused(TaskFailed):
    """The server refused the call as invalid params: the arguments may be corrected."""


@dataclass
class FilledArguments:
    arguments: dict[str, Any]
    usage: Usage = field(default_factory=Usage)
    extracted: list[str] = field(default_factory=list)  # parameters read from the text, without the LLM
    whole_text: bool = False  # the free-text shortcut: the subtask itself is the argument


def _schema_error(args: Any, schema: dict[str, Any]) -> str | None:
    try:
        jsonschema.validate(args, schema)
    except jsonschema.ValidationError as exc:
        return f"{exc.message} at {'/'.join(str(p) for p in exc.absolute_path) or 'the top level'}"
    return None


def _parameter_lines(props: dict[str, Any], names: list[str], required: set[str]) -> str:
    lines = []
    for name in names:
        raw = props.get(name)
        spec: dict[str, Any] = raw if isinstance(raw, dict) else {}
        kind = primary_type(spec) or ("one of " + json.dumps(spec["enum"]) if "enum" in spec else "any")
        need = "required" if name in required else "optional"
        lines.append(f"- {name} ({kind}, {need}): {spec.get('description') or spec.get('title') or name}")
    return "\n".join(lines)


def _not_empty(spec: Any) -> Any:
    """A string parameter as the LLM may write it: not empty (no task gives an empty value; the
    embedded model under a grammar writes "" when unsure)."""
    if not isinstance(spec, dict) or spec.get("type") != "string" or "enum" in spec or "const" in spec:
        return spec
    return {"minLength": 1, **spec}


async def fill_arguments(
    tool: Tool,
    text: str,
    backend: LLMBackend | None,
    retries: int,
    *,
    question: str = "",
    refused: tuple[dict[str, Any], str] | None = None,
) -> FilledArguments:
    """Arguments for the tool (see the module docstring). `question`: the job's question, which
    may name what the subtask leaves open (`extract_named`). `refused`: the arguments the tool
    refused and its message; the LLM then rewrites all of them, seeing both."""
    schema: dict[str, Any] = tool.input_schema or {"type": "object"}
    props: dict[str, Any] = schema.get("properties") or {}
    if not props:
        return FilledArguments({})
    only = whole_text_parameter(tool)
    if only is not None and refused is None:
        return FilledArguments({only: text}, extracted=[only], whole_text=True)
    required = set(schema.get("required") or [])
    if refused is None:
        found, left = extract(schema, text)
        if left and question and question != text:
            found |= extract_named(schema, left, question)
            left = [n for n in left if n not in found]
        if not left and _schema_error(found, schema) is None:
            return FilledArguments(found, extracted=sorted(found))
        if not left:  # what the text said does not fit together: the LLM writes it all
            found, left = {}, [n for n in props if n in required]
    else:
        found, left = {}, list(props)
    if backend is None:
        raise TaskFailed(
            f"the tool {tool.name} needs structured arguments and this gateway has no LLM to write "
            f"{', '.join(left)}: configure FOA_LLM_* (an OpenAI-compatible server) or the embedded model"
        )
    reduced: dict[str, Any] = {
        "title": f"{tool.name}_arguments",
        "type": "object",
        "properties": {n: _not_empty(props[n]) for n in left},
        "required": [n for n in left if n in required],
    }
    for key in ("$defs", "definitions"):
        if key in schema:
            reduced[key] = schema[key]
    prompt = f"Arguments to write:\n{_parameter_lines(props, left, required)}"
    if found:
        prompt += f"\n\nAlready known from the task: {json.dumps(found)}"
    if refused is not None:
        prompt += (
            f"\n\nThese arguments were sent: {json.dumps(refused[0])}\nThe tool answered: {refused[1]}\n"
            "Correct the arguments."
        )
    prompt += f"\n\nTask: {text}"
    messages = [
        ChatMessage.system(
            f"You call the tool `{tool.name}`: {tool.description or ''}\nAnswer with the JSON arguments only."
        ),
        ChatMessage.user(prompt),
    ]
    args, usage = await ask_for_arguments(tool, messages, reduced, found, backend, retries, task=text)
    return FilledArguments(args, usage, extracted=sorted(found))


async def ask_for_arguments(
    tool: Tool,
    messages: list[ChatMessage],
    schema: dict[str, Any],
    found: dict[str, Any],
    backend: LLMBackend,
    retries: int,
    *,
    task: str | None = None,
) -> tuple[dict[str, Any], Usage]:
    """The LLM's JSON under `schema` (its properties only), merged with `found`, validated
    against the tool's whole schema; re-asked with the validation error up to `retries` times.
    With the `task` text, strings that run on past the task's words are cut (`trim_run_on`)."""
    usage = Usage()
    error = "no attempt"
    for _attempt in range(1 + retries):
        try:
            out = await backend.complete(messages, max_tokens=256, temperature=0.0, json_schema=schema)
        except LLMError as exc:
            raise TaskFailed(f"LLM unavailable to fill the arguments of {tool.name}: {exc}") from exc
        usage = usage + out.usage
        try:
            props = schema.get("properties") or {}
            written = {k: v for k, v in extract_json(out.text).items() if k in props}
            if task is not None:
                written = {k: trim_run_on(v, task) if isinstance(v, str) else v for k, v in written.items()}
            args = {**written, **found}
            schema_error = _schema_error(args, tool.input_schema or {"type": "object"})
            if schema_error is None:
                return args, usage
            error = schema_error
        except JSONExtractError as exc:
            error = str(exc)
        messages = [
            *messages,
            ChatMessage.assistant(out.text),
            ChatMessage.user(f"Those arguments do not fit the schema: {error}. Answer with corrected JSON only."),
        ]
    raise TaskFailed(
        f"arguments for the tool {tool.name} never fit its input schema after {1 + retries} attempts; "
        f"last error: {error}"
    )


def props_of(tool: Tool) -> dict[str, Any]:
    props = (tool.input_schema or {}).get("properties") or {}
    return props if isinstance(props, dict) else {}


def tool_text(tool: Tool) -> str:
    return f"{tool.name}: {tool.description or tool.title or tool.name}"


class MCPGateway:
    """One MCP server as one agent (or one agent per tool). See the module docstring."""

    def __init__(
        self,
        config: MCPConfig,
        settings: Settings,
        *,
        spec: GatewaySpec | None = None,
        backend: LLMBackend | None = None,
        broker: BrokerAddress | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.overrides = spec or GatewaySpec()
        self.backend = backend
        self._broker = broker
        self._embedder = embedder
        self.server_name = ""
        self.instructions = ""
        self.tools: dict[str, Tool] = {}
        self._tool_vecs: dict[str, np.ndarray] = {}
        self._tools_hash = ""
        self.host: AgentHost | None = None
        self.agents: dict[str, HostedAgent] = {}  # agent id -> agent
        self._client: Client | None = None
        self._holder: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._relist_lock = asyncio.Lock()
        self.list_changes = 0
        self.lost: str | None = None  # why the session to the server ended, when it did
        self._tasks: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones
        self.calls = 0
        self.failures = 0

    @property
    def where(self) -> str:
        return f"`{self.config.stdio}`" if self.config.stdio else str(self.config.url)

    # ---- connection ------------------------------------------------------------------------

    def _target(self) -> StdioServerParameters | Any:
        if self.config.stdio is not None:
            argv = shlex.split(self.config.stdio)
            if not argv:
                raise GatewayError('--stdio needs a command line, e.g. --stdio "python server.py"')
            return StdioServerParameters(command=argv[0], args=argv[1:])
        headers = self.config.auth.headers()
        if not headers:
            return self.config.url
        import httpx2  # the HTTP client the mcp SDK uses; headers are how auth is configured
        from mcp.client.streamable_http import streamable_http_client

        return streamable_http_client(str(self.config.url), http_client=httpx2.AsyncClient(headers=headers))

    async def _hold(self, ready: asyncio.Future[None]) -> None:
        """Owns the client session for its whole life (anyio scopes must exit in the task that
        entered them); watches for tool-list changes while it lives."""
        try:
            async with Client(
                self._target(),
                read_timeout_seconds=self.config.timeout_s,
                message_handler=self._on_message,
                client_info=None,
            ) as client:
                self._client = client
                ready.set_result(None)
                await self._watch(client)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(first_leaf(exc) if isinstance(exc, BaseExceptionGroup) else exc)
            elif not isinstance(exc, asyncio.CancelledError):
                log.error("MCP session to %s ended: %s; its agents go offline", self.where, first_leaf(exc))
                self.lost = str(first_leaf(exc))
                if self.host is not None and not self._stopped.is_set():
                    self._background(self.host.stop())
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._client = None

    async def _watch(self, client: Client) -> None:
        """Re-list on every tools change; a listen stream that ends means the server went away
        (raised, so `_hold` takes the agents offline). Earlier protocol versions have no stream:
        their notifications/tools/list_changed reach `_on_message`."""
        from mcp.client.subscriptions import ListenNotSupportedError, SubscriptionLost

        try:
            async with client.listen(tools_list_changed=True) as sub:
                async for _event in sub:
                    await self.relist()
        except ListenNotSupportedError:
            await asyncio.Event().wait()
        except SubscriptionLost as exc:
            raise GatewayError(f"lost the MCP server {self.where}: {exc}") from exc
        except MCPError as exc:  # the server refused subscriptions/listen: notifications still work
            log.info("MCP server %s offers no subscriptions/listen stream (%s)", self.where, exc.error.message)
            await asyncio.Event().wait()
        raise GatewayError(f"the MCP server {self.where} closed its session")

    async def _on_message(self, message: Any) -> None:
        if (
            isinstance(message, ToolListChangedNotification)
            or getattr(message, "method", "") == "notifications/tools/list_changed"
        ):
            self._background(self.relist())
        elif isinstance(message, Exception):
            log.warning("MCP transport error from %s: %s", self.where, message)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> Client:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._holder = asyncio.create_task(self._hold(ready))
        try:
            await wait_within(asyncio.shield(ready), self.config.timeout_s)
        except TimeoutError:
            await self._drop_holder()
            raise GatewayError(
                f"the MCP server {self.where} did not complete initialize within {self.config.timeout_s:g}s: "
                "is it an MCP server speaking on stdout (or at that URL)? raise timeout_s if it starts slowly"
            ) from None
        except Exception as exc:
            await self._drop_holder()
            raise GatewayError(
                f"the MCP server {self.where} failed to start or exited during initialize: {exc!r}"
            ) from exc
        assert self._client is not None
        return self._client

    async def _drop_holder(self) -> None:
        if self._holder is not None:
            self._holder.cancel()
            with contextlib.suppress(BaseException):
                await self._holder
            self._holder = None

    # ---- tools -> VCVs ---------------------------------------------------------------------

    async def _list_tools(self, client: Client) -> list[Tool]:
        tools: list[Tool] = []
        cursor: str | None = None
        for _ in range(100):
            page = await client.list_tools(cursor=cursor, cache_mode="refresh")
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    def _embedder_now(self) -> Embedder:
        if self._embedder is None:
            self._embedder = shared_embedder(
                self.settings.embedding_model, self.settings.embedding_dim, self.settings.embedding_device
            )
        return self._embedder

    async def _absorb(self, tools: list[Tool]) -> bool:
        """Remember the tools and their embeddings; whether the list changed."""
        digest = hashlib.blake2b(
            json.dumps([t.model_dump(mode="json") for t in tools], sort_keys=True).encode(), digest_size=16
        ).hexdigest()
        if digest == self._tools_hash:
            return False
        embedder = self._embedder_now()
        vecs: list[np.ndarray] = (
            list(await asyncio.to_thread(embedder.embed, [tool_text(t) for t in tools])) if tools else []
        )
        self.tools = {t.name: t for t in tools}
        self._tool_vecs = {t.name: np.asarray(v) for t, v in zip(tools, vecs, strict=True)}
        self._tools_hash = digest
        return True

    def base_id(self) -> str:
        return self.overrides.id or slug(self.server_name, "mcp-server")

    def specs(self) -> dict[str, tuple[AgentSpec, list[str] | None]]:
        """agent id -> (its spec, the tools it serves; None = all of them)."""
        resources = self.overrides.resources or MCP_DEFAULT_RESOURCES
        policies = self.overrides.policies
        if not self.config.per_tool:
            description = "\n".join(
                p
                for p in [self.instructions, *(tool_text(t) for t in self.tools.values()), self.overrides.description]
                if p
            )
            spec = AgentSpec(
                id=self.base_id(),
                name=self.overrides.name or self.server_name or self.base_id(),
                description=description or self.base_id(),
                skills=[*self.tools, *self.overrides.skills],
                spec=self.overrides.spec,
                policies=policies,
                resources=resources,
                tags=["mcp"],
                examples=[tool_views(t.name, t.description or "", props_of(t))[1] for t in self.tools.values()],
            )
            return {spec.id: (spec, None)}
        out: dict[str, tuple[AgentSpec, list[str] | None]] = {}
        for tool in self.tools.values():
            agent_id = f"{self.base_id()}.{slug(tool.name, 'tool')}"
            spec = AgentSpec(
                id=agent_id,
                name=tool.title or tool.name,
                description=tool_text(tool),
                skills=[tool.name, *self.overrides.skills],
                spec=self.instructions,
                policies=policies,
                resources=resources,
                tags=["mcp"],
                examples=tool_views(tool.name, tool.description or "", props_of(tool)),
            )
            out[agent_id] = (spec, [tool.name])
        return out

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        client = await self._connect()
        try:
            info = client.server_info
            self.server_name = (info.name if info else "") or "mcp-server"
            self.instructions = client.instructions or ""
            tools = await wait_within(self._list_tools(client), self.config.timeout_s)
            if not tools:
                raise GatewayError(f"the MCP server {self.where} lists no tools: there is nothing to route to")
            await self._absorb(tools)
            self.host = AgentHost(self.settings, f"{self.base_id()}-gw", broker=self._broker, embedder=self._embedder)
            for agent_id, (spec, served) in self.specs().items():
                self.agents[agent_id] = bind_sdk(self.host.add(spec, signer=self._signer(agent_id)), self, served)
            await self.host.start()
        except BaseException:
            await self._drop_holder()
            raise
        log.info(
            "MCP server joined",
            extra={"server": self.server_name, "agents": len(self.agents), "tools": len(self.tools)},
        )

    def _signer(self, agent_id: str) -> Any:
        from fabric.security import agent_key_for, sign_vcv

        key = agent_key_for(self.settings, agent_id)
        return (lambda vcv: sign_vcv(vcv, key)) if key is not None else None

    async def relist(self) -> None:
        """Re-read the tool list; publish new VCV versions, add and remove per-tool agents."""
        async with self._relist_lock:
            if self._client is None or self.host is None:
                return
            try:
                tools = await self._list_tools(self._client)
            except Exception as exc:  # noqa: BLE001 - keep serving the tools we know
                log.warning("could not re-list the tools of %s: %s", self.where, exc)
                return
            if not await self._absorb(tools):
                return
            self.list_changes += 1
            wanted = self.specs()
            for agent_id in [a for a in self.agents if a not in wanted]:
                await self.host.remove(agent_id, leave=True)
                del self.agents[agent_id]
            for agent_id, (spec, served) in wanted.items():
                agent = self.agents.get(agent_id)
                if agent is None:
                    new = await self.host.add_live(spec)
                    self.agents[agent_id] = bind_sdk(new, self, served)
                else:
                    await agent.update(
                        **{k: getattr(spec, k) for k in ("name", "description", "skills", "spec", "examples")}
                    )
            log.info("MCP tool list changed", extra={"server": self.server_name, "tools": len(self.tools)})

    async def stop(self) -> None:
        self._stopped.set()
        if self.host is not None:
            await self.host.stop()
        await self._drop_holder()

    # ---- tasks -----------------------------------------------------------------------------

    async def pick_tool(self, text: str, allowed: list[str] | None) -> tuple[Tool, Usage]:
        names = [n for n in (allowed or list(self.tools)) if n in self.tools]
        if not names:
            raise TaskFailed(f"the MCP server {self.server_name} no longer lists the tool(s) {allowed}")
        # only tools that can take every value the task names, where some can ("3pm" rules
        # out a current-time tool with one time-zone parameter, not a converter)
        values = task_values(text)
        able = [n for n in names if all(parameters_taking(self.tools[n].input_schema, v) for v in values)]
        names = able or names
        if len(names) == 1:
            return self.tools[names[0]], Usage()
        embedder = self._embedder_now()
        hit = embedder.cached([text])  # a repeated subtask (retries, refine rounds) costs no model call
        query = np.asarray((hit if hit is not None else await asyncio.to_thread(embedder.embed, [text]))[0])
        ranked = sorted(names, key=lambda n: -float(query @ self._tool_vecs[n]))
        if whole_text_parameter(self.tools[ranked[0]]) is not None:
            # a tool that takes the whole text "carries" every value without using them: a tool
            # whose own parameters the task fills goes first (`fits_in_typed_parameters`; on
            # BFCL's multiple and live_multiple questions this never changes the choice)
            typed = [n for n in ranked if fits_in_typed_parameters(self.tools[n].input_schema, text)]
            if typed:
                return self.tools[typed[0]], Usage()
        best, second = ranked[0], ranked[1]
        gap = float(query @ self._tool_vecs[best]) - float(query @ self._tool_vecs[second])
        if gap >= self.config.tie_margin or self.backend is None:
            return self.tools[best], Usage()
        close = [
            n
            for n in ranked
            if float(query @ self._tool_vecs[best]) - float(query @ self._tool_vecs[n]) < self.config.tie_margin
        ][:4]
        schema = {
            "title": "ToolChoice",
            "type": "object",
            "properties": {"tool": {"type": "string", "enum": close}},
            "required": ["tool"],
        }
        prompt = (
            "Which tool does this task need?\n\n"
            + "\n".join(f"- {tool_text(self.tools[n])}" for n in close)
            + f"\n\nTask: {text}"
        )
        try:
            out = await self.backend.complete(
                [ChatMessage.user(prompt)], max_tokens=40, temperature=0.0, json_schema=schema
            )
            choice = extract_json(out.text).get("tool")
        except (LLMError, JSONExtractError):
            return self.tools[best], Usage()
        return self.tools[choice if choice in close else best], out.usage

    async def fill_arguments(
        self, tool: Tool, text: str, *, question: str = "", refused: tuple[dict[str, Any], str] | None = None
    ) -> FilledArguments:
        return await fill_arguments(
            tool, text, self.backend, self.config.argument_retries, question=question, refused=refused
        )

    async def call(self, tool: Tool, args: dict[str, Any], deadline_at: float | None) -> CallToolResult:
        if self._client is None:
            raise TaskFailed(f"the MCP server {self.where} is not connected (it exited?)")
        limit = (
            self.config.timeout_s
            if deadline_at is None
            else max(0.05, min(self.config.timeout_s, deadline_at - time.time()))
        )
        self.calls += 1
        try:
            return await wait_within(
                self._client.call_tool(tool.name, args, read_timeout_seconds=limit), limit + 1.0
            )
        except MCPError as exc:
            self.failures += 1
            message = f"the MCP server refused the call of {tool.name}: {exc.error.message}"
            raise (ArgumentsRefused if exc.error.code == INVALID_PARAMS else TaskFailed)(message) from exc
        except TimeoutError:
            self.failures += 1
            raise TaskFailed(f"the tool {tool.name} did not answer within {limit:.1f}s") from None

    async def draft(self, task: TaskRequest, allowed: list[str] | None) -> tuple[dict[str, Any], Usage]:
        inp = DraftInput.model_validate(task.input)
        text = (
            inp.subtask
            if not inp.context
            else inp.subtask + "\n\nKnown:\n" + "\n".join(f"- {c.answer}" for c in inp.context)
        )
        tool, usage = await self.pick_tool(inp.subtask, allowed)
        filled = await self.fill_arguments(tool, text, question=inp.question)
        usage = usage + filled.usage
        attempt = 0
        while True:
            refusal = self._dropped_values(tool, inp.subtask, filled)
            if refusal is None:
                try:
                    result = await self.call(tool, filled.arguments, task.deadline_at)
                except ArgumentsRefused as exc:
                    refusal = str(exc)
                else:
                    answer, structured = result_answer(result)
                    if not result.is_error:
                        break
                    self.failures += 1
                    refusal = answer or "no message"
            attempt += 1
            if filled.whole_text or self.backend is None or attempt > self.config.argument_retries:
                tries = f" (after {attempt} calls)" if attempt > 1 else ""
                raise TaskFailed(f"the tool {tool.name} failed{tries}: {refusal}")
            log.info("the tool %s refused %s: %s; re-asking", tool.name, filled.arguments, refusal)
            filled = await self.fill_arguments(tool, text, question=inp.question, refused=(filled.arguments, refusal))
            usage = usage + filled.usage
        output = DraftOutput(answer=answer, confidence=0.9, exact=True).model_dump()
        output.update({"tool": tool.name, "arguments": filled.arguments, "structured": structured})
        return output, usage

    def _dropped_values(self, tool: Tool, subtask: str, filled: FilledArguments) -> str | None:
        """Why the call would answer another question, or None: the subtask names a value (a
        date, time, URL, e-mail, number) that no argument carries. With no parameter that could
        take it, no rewrite can help and the draft fails now, naming the value, so the node never
        shows the tool's exact answer to some other question."""
        if filled.whole_text:
            return None
        dropped = values_not_carried(subtask, filled.arguments)
        if not dropped:
            return None
        named = ", ".join(v.raw for v in dropped)
        if not any(parameters_taking(tool.input_schema, v) for v in dropped):
            params = ", ".join(props_of(tool)) or "none"
            raise TaskFailed(
                f"the tool {tool.name} cannot take {named} (its parameters: {params}): "
                f"its result would not be about what the task asks"
            )
        return f"the task names {named}, which none of these arguments carries"

    async def refine(self, task: TaskRequest) -> dict[str, Any]:
        """A tool's result is a fact, not an opinion: it stands, and the agent votes done."""
        inp = RefineInput.model_validate(task.input)
        return RefineOutput(answer=inp.own_answer, done=True, confidence=0.9).model_dump()

    async def decompose(self, task: TaskRequest) -> dict[str, Any]:
        raise TaskFailed(f"{self.server_name} declines decompose: an MCP server has tools, not plans")
