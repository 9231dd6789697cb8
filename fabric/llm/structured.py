"""Structured output that never crashes a job: ask for JSON of a pydantic model's schema, pull
it out of whatever text came back, repair the usual defects, validate, retry with the
validation error fed back, and finally answer with a fallback.

Why so defensive: the embedded 135M model, and servers without constrained decoding, produce
JSON inside prose or fences, with trailing commas, single quotes, Python literals, or cut off
by max_tokens. Each defect repaired here is one retry (seconds of CPU) saved.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fabric.errors import FoAError
from fabric.llm.base import ChatMessage, LLMBackend, LLMOutputError
from fabric.messages import Usage

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)(?:```|$)", re.DOTALL)
_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}
_MAX_TRIMS = 8


class JSONExtractError(FoAError, ValueError):
    """No JSON object could be read from the text."""


@functools.lru_cache(maxsize=256)
def json_schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema, computed once (pydantic rebuilds it on every call, ~1 ms)."""
    return model.model_json_schema()


# --- extraction ---------------------------------------------------------------------------


def _balanced_object(text: str, start: int) -> str:
    """The {...} object starting at `start`, string-aware; the rest of the text if it never
    closes (truncated output, left for repair)."""
    depth = 0
    quote: str | None = None
    i = start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c == '"':
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
        i += 1
    return text[start:]


def _candidates(text: str) -> Iterator[str]:
    """Places a JSON object may hide, most likely first, each once. Lazy: output that is one
    JSON object (the usual case under a json_schema) parses without scanning for others."""
    seen: set[str] = set()

    def fresh(candidate: str) -> bool:
        if not candidate or candidate in seen:
            return False
        seen.add(candidate)
        return True

    stripped = text.strip()
    if fresh(stripped):
        yield stripped
    for m in _FENCE.finditer(text):
        if fresh(fenced := m.group(1).strip()):
            yield fenced
    start = -1
    for _ in range(4):
        start = text.find("{", start + 1)
        if start < 0:
            return
        if fresh(balanced := _balanced_object(text, start)):
            yield balanced


def extract_json(text: str, *, repair: bool = True) -> dict[str, Any]:
    """The first JSON object in `text` (whole text, fenced block, or first balanced {...})."""
    tried: list[str] = []
    for candidate in _candidates(text):
        tried.append(candidate)
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    if repair:
        for candidate in tried:
            if "{" not in candidate:
                continue
            value = _parse_repaired(candidate[candidate.index("{") :])
            if isinstance(value, dict):
                return value
    snippet = text.strip().replace("\n", " ")[:160]
    raise JSONExtractError(f"no JSON object in the output: {snippet!r}")


# --- repair -------------------------------------------------------------------------------


_SMART_QUOTES = str.maketrans("“”‘’", "\"\"''")


def _normalise(text: str) -> tuple[str, list[str], bool]:
    """One string-aware pass: single-quoted strings → double-quoted, Python literals → JSON,
    bare keys quoted, raw newlines in strings escaped, trailing commas dropped. Returns the
    text, the closers still open and whether a string is left open."""
    text = text.translate(_SMART_QUOTES)
    out: list[str] = []
    stack: list[str] = []
    quote: str | None = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == "\\" and i + 1 < n:
                nxt = text[i + 1]
                out.append("'" if (quote == "'" and nxt == "'") else c + nxt)
                i += 2
                continue
            if c == quote:
                out.append('"')
                quote = None
            elif c == '"':  # a double quote inside a single-quoted string
                out.append('\\"')
            elif c == "\n":
                out.append("\\n")
            else:
                out.append(c)
            i += 1
            continue
        if c in "\"'":
            quote = c
            out.append('"')
        elif c in "{[":
            stack.append("}" if c == "{" else "]")
            out.append(c)
        elif c in "}]":
            _drop_trailing_comma(out)
            if stack:
                stack.pop()
            out.append(c)
            if not stack:
                break  # the object is complete: whatever follows is prose
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            rest = text[j:].lstrip()
            if word in _PY_LITERALS:
                out.append(_PY_LITERALS[word])
            elif rest.startswith(":") and stack and stack[-1] == "}":
                out.append(f'"{word}"')  # a bare key
            else:
                out.append(word)
            i = j
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out), stack, quote is not None


def _drop_trailing_comma(out: list[str]) -> None:
    k = len(out) - 1
    while k >= 0 and out[k].isspace():
        k -= 1
    if k >= 0 and out[k] == ",":
        del out[k]


def _commas(text: str) -> list[int]:
    """Positions of commas outside strings in normalised (double-quoted) JSON text."""
    found: list[int] = []
    in_string = False
    i = 0
    while i < len(text):
        c = text[i]
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == ",":
            found.append(i)
        i += 1
    return found


def _close(text: str, stack: list[str]) -> str:
    """Close a truncated object: finish a dangling `"key":` with null, then the brackets."""
    body = text.rstrip()
    if body.endswith(","):
        body = body[:-1].rstrip()
    if body.endswith(":"):
        body += " null"
    return body + "".join(reversed(stack))


def repair_json(text: str) -> str:
    """Best-effort fix of common defects; the result may still be invalid (json.loads decides)."""
    fixed, stack, open_string = _normalise(text)
    if open_string:
        fixed += '"'
    return _close(fixed, stack) if stack else fixed


def _parse_repaired(text: str) -> Any:
    """Repair, then if the output was truncated mid-value, cut back to earlier commas until the
    object parses (losing the last, incomplete member rather than the whole answer)."""
    fixed, stack, open_string = _normalise(text)
    fixed += '"' if open_string else ""
    attempts = [(fixed, stack)]
    for pos in reversed(_commas(fixed)[-_MAX_TRIMS:]):
        _, cut_stack, _ = _normalise(fixed[:pos])
        attempts.append((fixed[:pos], cut_stack))
    for body, closers in attempts:
        try:
            return json.loads(_close(body, closers) if closers else body)
        except ValueError:
            continue
    return None


# --- the call -----------------------------------------------------------------------------


def describe_validation_error(exc: ValidationError) -> str:
    """Short enough to feed back to a small model."""
    parts = []
    for err in exc.errors()[:6]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


async def complete_json(
    backend: LLMBackend,
    messages: Sequence[ChatMessage],
    model: type[T],
    *,
    max_tokens: int,
    temperature: float = 0.2,
    retries: int = 2,
    repair: bool = True,
    fallback: Callable[[], T] | None = None,
) -> tuple[T, Usage, int]:
    """Ask `backend` for an instance of `model`. Returns (instance, usage over all attempts,
    attempts made). Invalid output never raises when `fallback` is given; without one it raises
    `LLMOutputError`. Transport errors (LLMUnavailable, LLMTimeout) propagate: they say nothing
    about the output and the caller may prefer another agent to a canned answer."""
    schema = json_schema_of(model)
    usage = Usage()
    convo = list(messages)
    last_error = ""
    last_text = ""
    attempts = 0
    for attempt in range(retries + 1):
        attempts = attempt + 1
        completion = await backend.complete(
            convo,
            max_tokens=max_tokens,
            # a retry at the same temperature tends to repeat the same mistake
            temperature=min(1.0, temperature + 0.3 * attempt),
            json_schema=schema,
        )
        usage = usage + completion.usage
        last_text = completion.text
        try:
            value = extract_json(completion.text, repair=repair)
            return model.model_validate(value), usage, attempts
        except JSONExtractError as exc:
            last_error = str(exc)
        except ValidationError as exc:
            last_error = describe_validation_error(exc)
        convo = [
            *messages,
            ChatMessage(role="assistant", content=completion.text[:600]),
            ChatMessage(
                role="user",
                content=f"That answer was not valid: {last_error}. Reply again with only one JSON "
                f"object with the fields {', '.join(schema.get('properties', {}))}.",
            ),
        ]
    if fallback is not None:
        log.warning(
            "%s gave no valid %s in %d attempts (%s); using the fallback",
            backend.name, model.__name__, attempts, last_error,
        )
        return fallback(), usage, attempts
    raise LLMOutputError(
        f"{backend.name} gave no valid {model.__name__} in {attempts} attempts; last error: "
        f"{last_error}; last output: {last_text[:200]!r}"
    )
