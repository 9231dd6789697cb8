"""Ask the router(s) over the bus: route one task, or assign agents to a set of subtasks."""

from __future__ import annotations

from fabric import topics
from fabric.bus import Bus
from fabric.messages import AssignQuery, AssignResponse, RouteQuery, RouteResponse, RouterStatus, RouterStatusQuery


class RouterClient:
    """Requests go to `foa/router/query`; one router replica of the shared group answers."""

    def __init__(self, bus: Bus, timeout: float | None = None) -> None:
        self.bus = bus
        self.timeout = timeout

    async def route(self, query: RouteQuery) -> RouteResponse:
        env = await self.bus.request(topics.ROUTER_QUERY, query, expect=RouteResponse, timeout=self.timeout,
                                     what="a router (foa router)")
        response: RouteResponse = env.body  # validated as `expect` by the bus
        return response

    async def status(self) -> RouterStatus:
        """One replica's status: abstention provenance, learning, counters."""
        env = await self.bus.request(topics.ROUTER_QUERY, RouterStatusQuery(), expect=RouterStatus,
                                     timeout=self.timeout, what="a router (foa router)")
        status: RouterStatus = env.body
        return status

    async def assign(self, query: AssignQuery) -> AssignResponse:
        env = await self.bus.request(topics.ROUTER_QUERY, query, expect=AssignResponse, timeout=self.timeout,
                                     what="a router (foa router)")
        response: AssignResponse = env.body  # validated as `expect` by the bus
        return response
