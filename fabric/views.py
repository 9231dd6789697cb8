"""The texts an agent is routed by besides its description: its *views*.

A description says what an agent is; a user asks for a task. A view is a text in the task's
own words: a skill example of an A2A card, a tool's name and parameters, an agent's skill as a
short query. The router keeps up to `MAX_VIEWS` per agent and fuses the best-matching one into
α's similarity (router/scoring.py). Templated views from tool docs are built here so that the
MCP gateway and the BFCL benchmark make the same ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fabric.vcv import MAX_VIEWS


def words(name: str) -> str:
    """`get_current_weather` / `getCurrentWeather` / `math.factorial` -> "get current weather"."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return " ".join(re.sub(r"[_.\-/]+", " ", spaced).split()).lower()


def tool_views(name: str, description: str, params: Mapping[str, Any], limit: int = MAX_VIEWS) -> list[str]:
    """Views of one tool: its name as words, with its description, with its parameter names, and
    with each described parameter (a query usually names the tool's action and its arguments)."""
    action = words(name)
    views = [action, f"{action}: {description}".strip(": ")]
    if params:
        views.append(f"{action} with " + ", ".join(words(p) for p in params))
        for pname, schema in params.items():
            text = schema.get("description") if isinstance(schema, dict) else None
            if text:
                views.append(f"{action}: {words(pname)}, {text}")
    return list(dict.fromkeys(v for v in views if v))[:limit]
