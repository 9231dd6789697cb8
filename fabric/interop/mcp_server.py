"""`foa mcp serve`: the federation as an MCP server (official `mcp` SDK), over stdio or, with
`--http PORT`, streamable HTTP at /mcp. Tools:

- `ask(question, budget_tokens?, deadline_s?, policies?, conversation?)` runs one job; each job
  event is a progress notification (decomposed, assigned, drafted, round k, synthesised). Result:
  answer, job id, conversation id, status, DAG summary, assignments, usage. A follow-up question
  passes the `conversation_id` of an earlier result as `conversation`: its earlier turns then
  reach routing, planning and drafting ("and for a child?" keeps its subject). A failed job is
  an `isError` result with the reason. Cancelling the MCP request (notifications/cancelled, or
  the host giving up) cancels the job (fabric.client.cancel_job).
- `route(task, top_k?, policies?, max_cost?)` asks the router, like `foa route`: the ranked
  agents with every α factor, expected cost and latency, or the abstention and its threshold.
- `agents()` lists the live agents (as `foa agents --json`).

MCP host configuration (stdio), e.g. in a host's `mcpServers` section:

    "foa": {"command": "foa", "args": ["mcp", "serve"], "env": {"FOA_BROKER_URL": "mqtt://127.0.0.1:1883"}}
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from fabric.bus import BusError
from fabric.client import JobFailed
from fabric.errors import ConfigError, FoAError
from fabric.interop.link import FederationLink, JobRequest, job_summary, progress_text
from fabric.messages import JobEvent, RouteQuery
from fabric.settings import Settings

INSTRUCTIONS = (
    "A Federation of Agents. `ask` answers a question with the federation's agents (routed by capability, "
    "decomposed, drafted, refined, synthesised); `route` shows which agents would take a task and why; "
    "`agents` lists who is online."
)


#: failures of the federation behind the server (no broker, no router, a failed job); their
#: messages say what to do, so they reach the caller as ToolError (MCPServer hides other messages)
UNREACHABLE = (FoAError, BusError, JobFailed, RuntimeError)
#: JobSubmit.conversation_id's bound
MAX_CONVERSATION_ID = 128


class BadArguments(ToolError):
    """The caller's arguments cannot make a job or a route query; the message says the fix.
    (A ToolError: MCPServer passes its message to the caller, and hides any other exception's.)"""


def build_server(link: FederationLink) -> MCPServer:
    server = MCPServer("foa-federation", instructions=INSTRUCTIONS)

    @server.tool()
    async def ask(
        question: str,
        ctx: Context,
        budget_tokens: int | None = None,
        deadline_s: float | None = None,
        policies: list[str] | None = None,
        conversation: str | None = None,
    ) -> dict[str, Any]:
        """Answer a question with the federation. budget_tokens caps the job's tokens, deadline_s its
        wall-clock time; policies are clearances every agent used must hold (e.g. ["hipaa"]).
        conversation: for a follow-up question, the conversation_id of an earlier answer (each
        answer names its conversation_id; omit it to start a new conversation)."""
        if not question.strip():
            raise BadArguments("question is empty: give the question to answer")
        conversation = (conversation or "").strip() or None
        if conversation is not None and len(conversation) > MAX_CONVERSATION_ID:
            raise BadArguments(
                f"conversation is {len(conversation)} characters (at most {MAX_CONVERSATION_ID}): pass the "
                "conversation_id an earlier answer returned, or omit it to start a new conversation"
            )
        try:
            request = JobRequest.parse(
                {"budget_tokens": budget_tokens, "deadline_s": deadline_s, "policies": policies or []}
            )
        except ConfigError as exc:
            raise BadArguments(str(exc)) from exc
        job_id = f"mcp-{uuid.uuid4().hex[:12]}"
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Task[None]] = []
        step = [0]

        def on_event(event: JobEvent) -> None:
            step[0] += 1
            pending.append(loop.create_task(ctx.report_progress(step[0], None, progress_text(event))))

        try:
            result = await link.run_job(question, job_id, request, on_event, conversation_id=conversation)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(link.cancel(job_id, "MCP request canceled"))
            raise
        except UNREACHABLE as exc:
            raise ToolError(f"job {job_id}: {exc}") from exc
        finally:
            await asyncio.gather(*pending, return_exceptions=True)
        if result.status != "completed":
            raise ToolError(f"job {job_id} {result.status}: {result.failure_reason or 'no reason given'}")
        return {"answer": result.answer, **job_summary(result)}

    @server.tool()
    async def route(
        task: str, top_k: int = 5, policies: list[str] | None = None, max_cost: float | None = None
    ) -> dict[str, Any]:
        """Rank the federation's agents for a task, with every factor of the score (sim, lexical,
        resources, spec, reputation), expected cost and latency; or the abstention."""
        try:
            query = RouteQuery(text=task, top_k=top_k, policies=policies or [], max_cost=max_cost)
        except ValueError as exc:
            raise BadArguments(f"invalid route query: {exc}") from exc
        try:
            response = await link.route(query)
        except UNREACHABLE as exc:  # e.g. the router refused the query (unknown policy) or none answered
            raise ToolError(f"route failed: {exc}") from exc
        return response.model_dump(mode="json")

    @server.tool()
    async def agents() -> list[dict[str, Any]]:
        """The federation's live agents: id, version, description, skills, policies, costs."""
        try:
            return await link.agents()
        except UNREACHABLE as exc:
            raise ToolError(f"cannot list the agents: {exc}") from exc

    return server


async def serve(settings: Settings, http_port: int | None = None, host: str = "127.0.0.1") -> None:
    link = FederationLink(settings, "mcp-serve")
    server = build_server(link)
    try:
        if http_port is None:
            await server.run_stdio_async()
        else:
            await server.run_streamable_http_async(host=host, port=http_port)
    finally:
        await link.close()
