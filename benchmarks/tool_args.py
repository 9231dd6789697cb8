"""Tool arguments on BFCL data, scored by bfcl-eval's own AST checker: the MCP gateway's argument
filler (fabric/interop/mcp_gateway.py `fill_arguments`: read what the schema makes checkable
from the text, the LLM writes only what is left) against the filler it replaced (the baseline:
a tool with one string parameter gets the whole text, any other tool gets all its arguments
from the LLM under the full schema), in the same run, over the same sampled questions.

Categories: simple_python, multiple and live_simple (BFCL v4, from the installed bfcl-eval
package). Each question is given its gold function only (tool choice is not measured here:
see bfcl_routing.py), converted to an MCP tool (BFCL types dict/float/tuple/any as JSON Schema).
A question is correct when bfcl-eval's `ast_checker` accepts the call; a filler that gives up
(TaskFailed) scores as a wrong call.

Keys: ast_accuracy and baseline_ast_accuracy (per category, and `all`), extracted_share
(arguments filled without the LLM / all arguments written, new filler), llm_calls_per_call
and baseline_llm_calls_per_call, seconds_per_call for both, n per category.

LLM: the embedded model (SmolLM2-135M, llama.cpp, a JSON-schema grammar) by default; an
OpenAI-compatible server when FOA_LLM_BASE_URL (FOA_LLM_MODEL, FOA_LLM_API_KEY) is set.

Usage: benchmarks/tool_args.py --json [--limit 40] [--seed 0] [--retries 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mcp_types import Tool

from agents.sdk import TaskFailed
from benchmarks._common import emit, progress
from benchmarks.bfcl_routing import data_dir
from fabric.interop.mcp_gateway import ask_for_arguments, fill_arguments, single_string_parameter
from fabric.llm import backend_for
from fabric.llm.base import ChatMessage, LLMBackend
from fabric.settings import Settings

CATEGORIES = ["simple_python", "multiple", "live_simple"]
_TYPES = {
    "dict": "object",
    "object": "object",
    "float": "number",
    "number": "number",
    "integer": "integer",
    "int": "integer",
    "string": "string",
    "str": "string",
    "array": "array",
    "list": "array",
    "tuple": "array",
    "boolean": "boolean",
    "bool": "boolean",
}  # "any" and unknown types: no type constraint


def json_schema(param: Any) -> dict[str, Any]:
    """A BFCL parameter schema as JSON Schema."""
    if not isinstance(param, dict):
        return {}
    out: dict[str, Any] = {
        k: param[k] for k in ("description", "enum", "default", "minimum", "maximum", "format") if k in param
    }
    kind = _TYPES.get(str(param.get("type", "")).lower())
    if kind:
        out["type"] = kind
    if isinstance(param.get("properties"), dict):
        out["properties"] = {k: json_schema(v) for k, v in param["properties"].items()}
        out["required"] = [r for r in param.get("required") or [] if r in out["properties"]]
    if "items" in param:
        out["items"] = json_schema(param["items"])
    return out


def load(category: str) -> list[dict[str, Any]]:
    root = data_dir()
    answers = {}
    for line in (root / "possible_answer" / f"BFCL_v4_{category}.json").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            answers[row["id"]] = row["ground_truth"]
    out = []
    for line in (root / f"BFCL_v4_{category}.json").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        gold = answers.get(row["id"])
        if not gold or len(gold) != 1:
            continue
        name = next(iter(gold[0]))
        function = next((f for f in row["function"] if f["name"] == name), None)
        if function is None:
            continue
        text = " ".join(m["content"] for turn in row["question"] for m in turn if m.get("role") == "user").strip()
        out.append(
            {
                "id": row["id"],
                "category": category,
                "text": text,
                "function": function,
                "functions": row["function"],
                "answer": gold,
            }
        )
    return out


def tool_of(function: dict[str, Any]) -> Tool:
    schema = json_schema(function.get("parameters") or {})
    schema["type"] = "object"
    return Tool(name=function["name"], description=function.get("description") or "", input_schema=schema)


async def baseline_fill(tool: Tool, text: str, backend: LLMBackend, retries: int) -> dict[str, Any]:
    """The gateway's filler before issue 19, kept here as the baseline: one string parameter gets
    the whole text; other tools get all arguments from the LLM under the full schema (its prompt:
    the task and the schema as JSON), validated and re-asked with the error up to `retries` times
    (the same loop as today's, `ask_for_arguments`, which also drops keys the schema does not name)."""
    only = single_string_parameter(tool)
    if only is not None:
        return {only: text}
    if not (tool.input_schema or {}).get("properties"):
        return {}
    schema = {**(tool.input_schema or {}), "title": f"{tool.name}_arguments"}
    messages = [
        ChatMessage.system(
            f"You call the tool `{tool.name}`: {tool.description or ''}\nAnswer with the JSON arguments only."
        ),
        ChatMessage.user(f"Task: {text}\n\nArguments schema: {json.dumps(tool.input_schema)}"),
    ]
    args, _usage = await ask_for_arguments(tool, messages, schema, {}, backend, retries)
    return args


class Counting:
    """The backend, counting completions (a filler that gives up returns no usage)."""

    def __init__(self, backend: LLMBackend) -> None:
        self.backend = backend
        self.calls = 0

    async def complete(self, messages: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.backend.complete(messages, **kwargs)


def checker() -> Any:
    """bfcl-eval's `ast_checker`. bfcl-eval is installed without its dependencies (the model
    clients its `constants.model_config` imports); the checker reads that table only to map
    dotted function names for models that cannot send dots, which this harness never does, so
    the table is stubbed before the import."""
    import types
    from collections import defaultdict

    stub = types.ModuleType("bfcl_eval.constants.model_config")
    stub.MODEL_CONFIG_MAPPING = defaultdict(lambda: types.SimpleNamespace(underscore_to_dot=False))  # type: ignore[attr-defined]
    sys.modules.setdefault("bfcl_eval.constants.model_config", stub)
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    def check(item: dict[str, Any], args: dict[str, Any] | None) -> bool:
        if args is None:
            return False
        output = [{item["function"]["name"]: args}]
        result = ast_checker(item["functions"], output, item["answer"], Language.PYTHON, item["category"], "foa")
        return bool(result.get("valid"))

    return check


async def run(items: list[dict[str, Any]], real: LLMBackend, retries: int) -> dict[str, Any]:
    check = checker()
    backend: Any = Counting(real)
    rows = []
    for i, item in enumerate(items):
        tool = tool_of(item["function"])
        row: dict[str, Any] = {"id": item["id"], "category": item["category"]}
        for system in ("baseline", "foa"):
            started, calls_before = time.perf_counter(), backend.calls
            args: dict[str, Any] | None = None
            extracted: list[str] = []
            try:
                if system == "baseline":
                    args = await baseline_fill(tool, item["text"], backend, retries)
                else:
                    filled = await fill_arguments(tool, item["text"], backend, retries)
                    args, extracted = filled.arguments, filled.extracted
            except TaskFailed:
                pass  # gave up: a wrong call
            row[system] = {
                "ok": check(item, args),
                "calls": backend.calls - calls_before,
                "seconds": time.perf_counter() - started,
                "arguments": len(args or {}),
                "extracted": len(set(extracted) & set(args or {})),
            }
        rows.append(row)
        progress(
            f"{i + 1}/{len(items)} {item['id']}: baseline {row['baseline']['ok']} "
            f"({row['baseline']['calls']} calls), foa {row['foa']['ok']} ({row['foa']['calls']} calls)"
        )
    return summarise(rows)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def accuracy(system: str) -> dict[str, float]:
        out = {
            c: sum(r[system]["ok"] for r in rows if r["category"] == c) / max(1, sum(r["category"] == c for r in rows))
            for c in CATEGORIES
        }
        out["all"] = sum(r[system]["ok"] for r in rows) / max(1, len(rows))
        return out

    n = max(1, len(rows))
    written = sum(r["foa"]["arguments"] for r in rows)
    return {
        "ast_accuracy": accuracy("foa"),
        "baseline_ast_accuracy": accuracy("baseline"),
        "extracted_share": sum(r["foa"]["extracted"] for r in rows) / max(1, written),
        "llm_calls_per_call": sum(r["foa"]["calls"] for r in rows) / n,
        "baseline_llm_calls_per_call": sum(r["baseline"]["calls"] for r in rows) / n,
        "seconds_per_call": sum(r["foa"]["seconds"] for r in rows) / n,
        "baseline_seconds_per_call": sum(r["baseline"]["seconds"] for r in rows) / n,
        "n": {c: sum(r["category"] == c for r in rows) for c in CATEGORIES},
        "wrong_ids": sorted(r["id"] for r in rows if not r["foa"]["ok"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--limit", type=int, default=40, help="questions per category (seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retries", type=int, default=2, help="argument_retries, as in MCPConfig")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    items = []
    for category in CATEGORIES:
        pool = load(category)
        items += rng.sample(pool, min(args.limit, len(pool)))
    settings = Settings()
    backend = backend_for(settings)
    progress(f"{len(items)} questions; LLM: {settings.llm_base_url or 'embedded'} ({settings.llm_model})")
    started = time.perf_counter()
    result = asyncio.run(run(items, backend, args.retries))
    result |= {
        "llm": settings.llm_base_url or "embedded",
        "model": getattr(backend, "model", settings.llm_model),
        "limit": args.limit,
        "seed": args.seed,
        "retries": args.retries,
        "seconds": time.perf_counter() - started,
    }
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
