"""Starting gateways: from the command line, or from `a2a:` / `mcp:` entries of agent specs so
`foa up --specs DIR` mixes native, A2A and MCP agents."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from typing import Any, Protocol

from fabric.bus import BrokerAddress
from fabric.embeddings import Embedder
from fabric.interop.specs import GatewaySpec, gateway_spec_of
from fabric.llm.base import LLMBackend
from fabric.settings import Settings


class Gateway(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def is_gateway_spec(agent_spec: Any) -> bool:
    return bool(getattr(agent_spec, "a2a", None) or getattr(agent_spec, "mcp", None))


def make_gateway(
    spec: GatewaySpec,
    settings: Settings,
    *,
    broker: BrokerAddress | None = None,
    embedder: Embedder | None = None,
    backend: LLMBackend | None = None,
) -> Gateway:
    if spec.a2a is not None:
        from fabric.interop.a2a_gateway import A2AGateway

        return A2AGateway(spec.a2a.url, settings, spec=spec, broker=broker, embedder=embedder)
    assert spec.mcp is not None
    from fabric.interop.mcp_gateway import MCPGateway

    return MCPGateway(spec.mcp, settings, spec=spec, backend=backend, broker=broker, embedder=embedder)


async def start_gateways(
    agent_specs: Sequence[Any],
    settings: Settings,
    *,
    broker: BrokerAddress | None = None,
    embedder: Embedder | None = None,
    backend: LLMBackend | None = None,
) -> list[Gateway]:
    """Start one gateway per spec with an `a2a:` or `mcp:` entry (what `foa up` calls)."""
    gateways = [
        make_gateway(gateway_spec_of(s), settings, broker=broker, embedder=embedder, backend=backend)
        for s in agent_specs
        if is_gateway_spec(s)
    ]
    started: list[Gateway] = []
    try:
        for gateway in gateways:
            await gateway.start()
            started.append(gateway)
    except BaseException:
        await stop_gateways(started)
        raise
    return started


async def stop_gateways(gateways: Sequence[Gateway]) -> None:
    for gateway in gateways:
        try:
            await gateway.stop()
        except Exception:  # noqa: BLE001 - stop the others regardless
            continue


async def run_until_signal(gateway: Gateway) -> None:
    """`foa agent a2a|mcp`: serve until SIGINT/SIGTERM, then leave cleanly (offline)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await gateway.start()
    try:
        await stopping.wait()
    finally:
        await gateway.stop()
