"""The console's HTTP API and pages (FastAPI); live updates over server-sent events at /api/stream.

Every error is a JSON `{"detail": ...}` saying what to do, and no handler's failure stops the
server: a broker that went away gives 503s until it is back, a bad request a 4xx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sse_starlette.sse import EventSourceResponse

from fabric.bus import BrokerAddress
from fabric.settings import Settings
from fabric.ui.console import Console, ConsoleError
from fabric.ui.models import (
    AgentDetail,
    AgentRow,
    CapabilityMap,
    Health,
    JobDetail,
    JobSummary,
    Problem,
    RouteRequest,
    RouteView,
    SubmitRequest,
    Submitted,
)

STATIC = resources.files("fabric.ui") / "static"
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Problem} for code in (400, 403, 404, 422, 502, 503)}


def create_app(
    settings: Settings, broker: BrokerAddress, *, allow_submit: bool = False, console: Console | None = None
) -> FastAPI:
    console = console or Console(settings, broker, allow_submit=allow_submit)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await console.start()
        try:
            yield
        finally:
            await console.stop()

    app = FastAPI(title="FoA console", lifespan=lifespan, responses=ERRORS)
    app.state.console = console

    @app.exception_handler(ConsoleError)
    async def console_error(request: Request, exc: ConsoleError) -> JSONResponse:
        console.refused[exc.status] = console.refused.get(exc.status, 0) + 1
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        console.refused[422] = console.refused.get(422, 0) + 1
        parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "bad request: " + "; ".join(parts)}, status_code=422)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/health")
    async def health() -> Health:
        return console.health()

    @app.get("/api/agents")
    async def agents() -> list[AgentRow]:
        return console.agent_rows()

    @app.get("/api/agents/{agent_id}")
    async def agent(agent_id: str) -> AgentDetail:
        return console.agent_detail(agent_id)

    @app.get("/api/map")
    async def capability_map() -> CapabilityMap:
        return console.capability_map()

    @app.get("/api/router")
    async def router_status() -> dict[str, Any]:
        return await console.router_status()

    @app.post("/api/route")
    async def route(request: RouteRequest) -> RouteView:
        return await console.route(request)

    @app.get("/api/jobs")
    async def jobs() -> list[JobSummary]:
        return console.jobs.summaries()

    @app.get("/api/jobs/{job_id}")
    async def job(job_id: str) -> JobDetail:
        return await console.job(job_id)

    @app.post("/api/jobs")
    async def submit(request: SubmitRequest) -> Submitted:
        return Submitted(job_id=await console.submit(request))

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str) -> JobSummary:
        await console.cancel(job_id)
        record = console.jobs.get(job_id)
        assert record is not None  # cancel() registers it
        return record.summary()

    @app.get("/api/stream")
    async def stream(request: Request) -> EventSourceResponse:
        async def events() -> AsyncIterator[dict[str, str]]:
            yield {"event": "health", "data": console.health().model_dump_json()}
            async for event, data in console.events.stream():
                if await request.is_disconnected():
                    return
                yield {"event": event, "data": data}

        return EventSourceResponse(events(), ping=10, send_timeout=10)

    return app


def make_server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    """One uvicorn worker (the console's state lives in its process); open event streams get 2 s
    to close on shutdown, so stopping never waits on a browser tab."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2, lifespan="on")
    return uvicorn.Server(config)
