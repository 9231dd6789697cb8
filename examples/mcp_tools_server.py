"""An MCP server (official `mcp` SDK, `MCPServer`, the successor of FastMCP) with typed tools.

    python examples/mcp_tools_server.py                 # stdio (what MCP hosts launch)
    python examples/mcp_tools_server.py --http 9201     # streamable HTTP on /mcp
    foa agent mcp --stdio "python examples/mcp_tools_server.py"

Tools: unit conversion, weight-based dose arithmetic, date arithmetic, the weekday of a date (a
single free-text parameter: the gateway passes the subtask itself, without any LLM), the current
time in a time zone (one string parameter that is not free text: an IANA name such as
Asia/Tokyo; anything else is an "Invalid timezone" error result), and `enable_bmi`, which adds
a `bmi` tool at run time and announces the change (tools/list_changed).

Bad input raises `ToolError`, whose message reaches the caller (MCPServer hides the message of
any other exception). The arithmetic is exact and deterministic on purpose: a federation that routes a subtask here
must return the tool's result, not a model's paraphrase of it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import re
import zoneinfo
from typing import Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer(
    "foa-example-tools",
    instructions="Exact clinical arithmetic and unit conversions: body-weight doses, units of mass, "
    "length, volume and temperature, calendar date arithmetic, and the current time in a time zone.",
)

_FACTORS: dict[str, tuple[str, float]] = {
    # unit -> (dimension, factor to the SI base unit)
    "kg": ("mass", 1.0),
    "g": ("mass", 1e-3),
    "mg": ("mass", 1e-6),
    "lb": ("mass", 0.45359237),
    "oz": ("mass", 0.028349523125),
    "m": ("length", 1.0),
    "cm": ("length", 1e-2),
    "mm": ("length", 1e-3),
    "in": ("length", 0.0254),
    "ft": ("length", 0.3048),
    "l": ("volume", 1.0),
    "ml": ("volume", 1e-3),
}
_TEMPERATURES = {"c", "f", "k"}


def _to_kelvin(value: float, unit: str) -> float:
    return {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[unit]


def _from_kelvin(value: float, unit: str) -> float:
    return {"c": value - 273.15, "f": (value - 273.15) * 9 / 5 + 32, "k": value}[unit]


#: the units as an enum in the tool's schema: a client (the FoA gateway's argument reader, an
#: LLM under a grammar) sees what the tool accepts before it calls
Unit = Literal["kg", "g", "mg", "lb", "oz", "m", "cm", "mm", "in", "ft", "l", "ml", "c", "f", "k"]


@server.tool()
def convert_units(value: float, from_unit: Unit, to_unit: Unit) -> float:
    """Convert a quantity between units of mass (kg, g, mg, lb, oz), length (m, cm, mm, in, ft),
    volume (l, ml) or temperature (c, f, k). Returns the converted value rounded to 6 digits."""
    src, dst = from_unit.strip().lower(), to_unit.strip().lower()
    if src in _TEMPERATURES and dst in _TEMPERATURES:
        return round(_from_kelvin(_to_kelvin(value, src), dst), 6)
    if src not in _FACTORS or dst not in _FACTORS:
        raise ToolError(f"unknown unit {from_unit!r} or {to_unit!r}; known: {sorted(_FACTORS) + sorted(_TEMPERATURES)}")
    if _FACTORS[src][0] != _FACTORS[dst][0]:
        raise ToolError(f"cannot convert {_FACTORS[src][0]} ({from_unit}) to {_FACTORS[dst][0]} ({to_unit})")
    return round(value * _FACTORS[src][1] / _FACTORS[dst][1], 6)


@server.tool()
def dose_for_weight(
    weight_kg: float, mg_per_kg: float, max_single_dose_mg: float | None = None
) -> dict[str, float | bool]:
    """Weight-based dose arithmetic: the single dose in mg for a body weight and a mg/kg rate,
    capped at a maximum single dose when one is given."""
    if weight_kg <= 0 or weight_kg > 400:
        raise ToolError(f"weight_kg must be between 0 and 400 kg, got {weight_kg}")
    if mg_per_kg <= 0:
        raise ToolError(f"mg_per_kg must be positive, got {mg_per_kg}")
    dose = round(weight_kg * mg_per_kg, 3)
    capped = max_single_dose_mg is not None and dose > max_single_dose_mg
    return {"dose_mg": max_single_dose_mg if capped and max_single_dose_mg is not None else dose, "capped": capped}


@server.tool()
def add_days(date: str, days: int) -> str:
    """Date arithmetic: the ISO date (YYYY-MM-DD) that is `days` days after `date` (negative: before)."""
    return (dt.date.fromisoformat(date.strip()) + dt.timedelta(days=days)).isoformat()


@server.tool()
def weekday(text: str) -> str:
    """The day of the week of the first ISO date (YYYY-MM-DD) in a text, e.g. 2024-03-01 is a Friday."""
    found = re.search(r"\d{4}-\d{2}-\d{2}", text)
    if found is None:
        raise ToolError(f"no ISO date (YYYY-MM-DD) in {text[:80]!r}")
    day = dt.date.fromisoformat(found.group(0))
    return f"{day.isoformat()} is a {day.strftime('%A')}"


@server.tool()
def current_time(timezone: str) -> str:
    """The current date and time in a time zone, given as an IANA name (e.g. Asia/Tokyo, Europe/Paris, UTC)."""
    try:
        zone = zoneinfo.ZoneInfo(timezone.strip())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolError(f"Invalid timezone {timezone[:80]!r}: give an IANA name such as Asia/Tokyo") from None
    now = dt.datetime.now(zone)
    return f"{now.isoformat(timespec='seconds')} ({zone.key})"


def bmi(weight_kg: float, height_m: float) -> float:
    """Body-mass index: weight in kg divided by the square of the height in metres."""
    return round(weight_kg / (height_m * height_m), 1)


@server.tool()
async def enable_bmi(ctx: Context) -> str:
    """Add the `bmi` tool to this server (the tool list changes while clients are connected)."""
    if any(t.name == "bmi" for t in await server.list_tools()):
        return "bmi is already enabled"
    server.add_tool(bmi)
    await ctx.notify_tools_changed()  # clients listening with subscriptions/listen (2026-07-28)
    with contextlib.suppress(Exception):  # clients of earlier protocol versions
        await ctx.session.send_tool_list_changed()
    return "bmi enabled"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--http", type=int, default=None, metavar="PORT", help="serve streamable HTTP on PORT (/mcp)")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    transport: Literal["stdio", "streamable-http"] = "streamable-http" if args.http else "stdio"
    if transport == "stdio":
        server.run()
    else:
        server.run("streamable-http", host=args.host, port=args.http)


if __name__ == "__main__":
    main()
