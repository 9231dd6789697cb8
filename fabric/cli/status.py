"""`foa status`: the federation at a glance, from retained topics and service /metrics.

Agents come from the retained VCV and status topics (what any router sees on start); routers
and orchestrators are optional `--metrics` URLs whose heartbeat, route and job counters are
summarised. Nothing here needs a special role: the `client` login can read it all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from fabric.cli.resolve import at_least
from fabric.settings import Settings


def register(sub: Any) -> None:
    parser = sub.add_parser("status", help="summarise the federation: agents online, VCV versions, service health")
    parser.add_argument("--wait", type=float, default=1.0, help="seconds to collect retained messages (default 1)")
    parser.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="URL",
        help="a service's /metrics URL (router, orchestrator); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_status, needs_broker=True, validate=lambda a: at_least(a.wait, 0, "--wait", strict=True))


def _status(args: argparse.Namespace, settings: Settings) -> int:
    report = asyncio.run(collect(settings, args.wait, args.metrics))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(report))
    return 0


async def collect(settings: Settings, wait_s: float, metrics_urls: list[str]) -> dict[str, Any]:
    from fabric.bus import Bus
    from fabric.registry import Registry

    registry = Registry()
    async with Bus(settings, f"client-status-{uuid.uuid4().hex[:8]}", persistent=False) as bus:
        await registry.attach(bus)
        await registry.settle(quiet_s=min(0.3, wait_s), max_s=max(wait_s, 0.1))
    agents = sorted((e.summary() for e in registry.live()), key=lambda a: str(a["agent_id"]))
    for entry in agents:
        full = registry.get(str(entry["agent_id"]))
        entry["replicas_seen"] = sorted(full.replicas_seen) if full else []
    services = await asyncio.gather(*(scrape(url) for url in metrics_urls))
    return {
        "broker": settings.broker_url.split("@")[-1] if settings.broker_url else None,
        "agents_total": len(agents),
        "agents_online": sum(1 for a in agents if a["status"] == "online"),
        "agents_signed": sum(1 for a in agents if a.get("signed")),
        "agents": agents,
        "services": services,
    }


async def scrape(url: str) -> dict[str, Any]:
    """Headline numbers from one service's /metrics; an unreachable service is reported, not fatal."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with httpx.AsyncClient() as client:
            resp = await client.get(url, timeout=3.0)
            resp.raise_for_status()
    except httpx.HTTPError as exc:
        return {"url": url, "up": False, "error": str(exc) or type(exc).__name__}
    out: dict[str, Any] = {"url": url, "up": True, "routes": 0.0, "jobs": {}, "rejected": 0.0, "bus_connected": None}
    try:
        families = list(text_string_to_metric_families(resp.text))
    except ValueError as exc:
        return {"url": url, "up": False, "error": f"not Prometheus text: {exc}"}
    for family in families:
        for s in family.samples:
            if s.name == "foa_service_info":
                out["service"] = s.labels.get("service")
                out["instance"] = s.labels.get("instance")
            elif s.name == "foa_heartbeat_timestamp_seconds":
                out["heartbeat_age_s"] = round(time.time() - s.value, 1)
            elif s.name == "foa_routes_total":
                out["routes"] += s.value
            elif s.name == "foa_jobs":
                out["jobs"][s.labels.get("state", "?")] = s.value
            elif s.name in ("foa_messages_rejected_total", "foa_bus_rejected_total"):
                out["rejected"] += s.value
            elif s.name == "foa_agents_indexed":
                out["agents_indexed"] = s.value
            elif s.name == "foa_bus_connected":
                out["bus_connected"] = (
                    bool(s.value) if out["bus_connected"] is None else out["bus_connected"] and bool(s.value)
                )
    return out


def render(report: dict[str, Any]) -> str:
    lines = [
        f"broker {report['broker']}: {report['agents_online']}/{report['agents_total']} agents online, "
        f"{report['agents_signed']} signed VCVs"
    ]
    if report["agents"]:
        lines.append(f"  {'agent':24s} {'v':>4s} {'status':8s} {'replicas':>8s}  model")
    for a in report["agents"]:
        agent_id, model = str(a["agent_id"])[:24], a.get("llm_model") or "-"
        lines.append(f"  {agent_id:24s} {a['version']:>4} {a['status']:8s} {len(a['replicas_seen']):>8d}  {model}")
    for s in report["services"]:
        if not s["up"]:
            lines.append(f"service {s['url']}: DOWN ({s['error']})")
            continue
        jobs = ", ".join(f"{k}={int(v)}" for k, v in sorted(s["jobs"].items()) if v) or "none active"
        bus = "up" if s["bus_connected"] else "down" if s["bus_connected"] is False else "?"
        lines.append(
            f"service {s.get('service', '?')} ({s.get('instance', '')}) at {s['url']}: "
            f"heartbeat {s.get('heartbeat_age_s', '?')}s ago, routes {int(s['routes'])}, jobs {jobs}, "
            f"rejected {int(s['rejected'])}, bus {bus}"
        )
    return "\n".join(lines)
