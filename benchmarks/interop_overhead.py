"""What FoA adds in front of an A2A agent and an MCP server: p50 of a no-LLM call through FoA's
route + dispatch (router query, then the task to the gateway agent over MQTT, the gateway's call
to the server, the answer back) vs the same server called directly with its own SDK client, in
the same run, on the same machine.

- A2A: the example agent (examples/a2a_echo_agent.py, a subprocess), echo skill, blocking
  `message/send`; the gateway uses the same a2a-sdk client configuration as the direct call.
- MCP: the example server (examples/mcp_tools_server.py, a subprocess, streamable HTTP), the
  `weekday` tool (one string parameter: no LLM on either path); gateway and direct client talk
  to the same server process.

The router's query embedding and the gateway's tool pick are cache hits after the first call
(the same text each time), as they are for repeated subtasks; `route_ms` reports the routing
part alone so the split is visible.

    python benchmarks/interop_overhead.py --json [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, percentile_ms, progress  # noqa: E402
from fabric.broker import Mosquitto  # noqa: E402
from fabric.dispatch import dispatch  # noqa: E402
from fabric.federation import LocalFederation  # noqa: E402
from fabric.messages import RouteQuery  # noqa: E402
from fabric.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ECHO_TEXT = "echo this sentence back unchanged"
DATE_TEXT = "which weekday is 2024-03-01"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(argv: list[str], ready_url: str) -> subprocess.Popen[bytes]:
    import httpx

    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(ready_url, timeout=1.0)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{argv[1]} did not come up at {ready_url}")


async def interleaved(
    a: Callable[[], Awaitable[object]], b: Callable[[], Awaitable[object]], n: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Time `a` and `b` alternately, so drift (a warming server, a busy neighbour) hits both alike."""
    for _ in range(warmup):
        await a()
        await b()
    sa: list[float] = []
    sb: list[float] = []
    for _ in range(n):
        for fn, out in ((a, sa), (b, sb)):
            t0 = time.perf_counter()
            await fn()
            out.append(time.perf_counter() - t0)
    return sa, sb


async def run(n: int, warmup: int) -> dict[str, object]:
    from a2a.client import ClientConfig, create_client
    from a2a.types import Message, Part, Role, SendMessageRequest
    from mcp import Client

    from fabric.interop.a2a_gateway import A2AGateway
    from fabric.interop.mcp_gateway import MCPGateway
    from fabric.interop.specs import A2AConfig, GatewaySpec, MCPConfig
    from router.client import RouterClient

    a2a_port, mcp_port = free_port(), free_port()
    a2a_url, mcp_url = f"http://127.0.0.1:{a2a_port}", f"http://127.0.0.1:{mcp_port}/mcp"
    procs = [
        start(
            [sys.executable, str(ROOT / "examples/a2a_echo_agent.py"), "--port", str(a2a_port)],
            f"{a2a_url}/.well-known/agent-card.json",
        ),
        start([sys.executable, str(ROOT / "examples/mcp_tools_server.py"), "--http", str(mcp_port)], mcp_url),
    ]
    data = Path(tempfile.mkdtemp(prefix="foa-interop-bench-"))
    broker = Mosquitto(data_dir=data / "mosquitto")
    broker.start()
    settings = Settings(broker_url=broker.url, data_dir=data)
    try:
        async with LocalFederation(settings, [], with_orchestrator=False) as fed:
            a2a_spec = GatewaySpec(id="echo", a2a=A2AConfig(url=a2a_url, stream=False))
            a2a = A2AGateway(a2a_url, settings, spec=a2a_spec, broker=fed.address, embedder=fed.embedder)
            mcp = MCPGateway(
                MCPConfig(url=mcp_url),
                settings,
                spec=GatewaySpec(id="tools"),
                broker=fed.address,
                embedder=fed.embedder,
            )
            await a2a.start()
            await mcp.start()
            bus = await fed.client()
            router = RouterClient(bus)
            await asyncio.sleep(1.0)  # the router indexes both VCVs

            async def via_foa(text: str, expect: str) -> None:
                routed = await router.route(RouteQuery(text=text, top_k=1, abstain=False))
                agent = routed.matches[0].agent_id
                assert agent == expect, f"routed to {agent}, expected {expect}"
                res = await dispatch(bus, agent, "draft", {"question": text, "subtask": text}, timeout=10.0)
                assert res.ok and res.output["answer"], res.error

            async def route_only() -> None:
                await router.route(RouteQuery(text=ECHO_TEXT, top_k=1, abstain=False))

            direct_a2a = await create_client(a2a_url, client_config=ClientConfig(streaming=False))

            async def a2a_direct() -> None:
                msg = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=ECHO_TEXT)])
                async for _event in direct_a2a.send_message(SendMessageRequest(message=msg)):
                    pass

            results: dict[str, object] = {"n": n}
            progress("A2A: direct and via FoA, interleaved")
            direct, via = await interleaved(a2a_direct, lambda: via_foa(ECHO_TEXT, "echo"), n, warmup)
            results["a2a_direct_ms"], results["a2a_via_foa_ms"] = percentile_ms(direct, 50), percentile_ms(via, 50)
            await direct_a2a.close()
            async with Client(mcp_url) as direct_mcp:

                async def mcp_direct() -> None:
                    await direct_mcp.call_tool("weekday", {"text": DATE_TEXT})

                progress("MCP: direct and via FoA, interleaved")
                direct, via = await interleaved(mcp_direct, lambda: via_foa(DATE_TEXT, "tools"), n, warmup)
                results["mcp_direct_ms"], results["mcp_via_foa_ms"] = percentile_ms(direct, 50), percentile_ms(via, 50)
            routes, _ = await interleaved(route_only, route_only, n, 0)
            results["route_ms"] = percentile_ms(routes, 50)
            await a2a.stop()
            await mcp.stop()
            return results
    finally:
        broker.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--n", type=int, default=200, help="timed calls per path")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    emit(asyncio.run(run(args.n, args.warmup)), as_json=args.json)


if __name__ == "__main__":
    main()
