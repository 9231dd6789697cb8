"""The envelope every payload travels in (docs/architecture.md §3).

The envelope alone carries what request/response, de-duplication and tracing need, so the
fabric works over any MQTT broker; MQTT v5 properties mirror it where available.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar, Generic, TypeVar, cast, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fabric.errors import ProtocolError

SCHEMA_VERSION = "foa/1"


class Body(BaseModel):
    """Base of every message body; `KIND` names it in the envelope."""

    model_config = ConfigDict(extra="forbid")
    KIND: ClassVar[str] = ""


BodyT = TypeVar("BodyT", bound=Body)


def new_id() -> str:
    """128 random bits as 32 hex digits (what uuid4().hex gives, without building a UUID)."""
    return os.urandom(16).hex()


def new_traceparent(trace_id: str | None = None) -> str:
    """A W3C traceparent: version-traceid-spanid-flags."""
    return f"00-{trace_id or os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def child_traceparent(parent: str | None) -> str:
    """A new span in the same trace as `parent` (or a new trace)."""
    if parent:
        parts = parent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32:
            return new_traceparent(parts[1])
    return new_traceparent()


def trace_id_of(traceparent: str | None) -> str | None:
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else None


class Envelope(BaseModel, Generic[BodyT]):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field(default=SCHEMA_VERSION, alias="schema")
    kind: str
    id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    job_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    sender: str = ""
    sent_at: float = Field(default_factory=time.time)
    traceparent: str | None = None
    body: BodyT

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class RawEnvelope(Envelope[Any]):
    """Envelope with an unparsed body: the first, cheap stage of decoding."""

    body: dict[str, Any]


class MessageError(ProtocolError):
    """A payload that is not a valid envelope of the expected kind."""


_TYPED: dict[type[Body], type[Envelope[Any]]] = {}


def envelope_type(body_type: type[BodyT]) -> type[Envelope[Any]]:
    """`Envelope[body_type]`, built once: pydantic re-creates parametrised generics surprisingly
    often, at ~3 ms each, which was most of the fabric's per-message CPU."""
    cls = _TYPED.get(body_type)
    if cls is None:
        cls = _TYPED[body_type] = Envelope[body_type]  # type: ignore[valid-type]
    return cls


def make(body: BodyT, **fields: Any) -> Envelope[BodyT]:
    # the cast names its type as a string: `Envelope[BodyT]` evaluated at run time is a pydantic
    # generic subscription (~6 µs, measured 0.14 ms per job in fabric_load's profile)
    return cast("Envelope[BodyT]", envelope_type(type(body))(kind=body.KIND, body=body, **fields))


@overload
def decode(payload: bytes, body_type: None = None) -> Envelope[Any]: ...
@overload
def decode(payload: bytes, body_type: type[BodyT]) -> Envelope[BodyT]: ...
def decode(payload: bytes, body_type: type[BodyT] | None = None) -> Envelope[Any] | Envelope[BodyT]:
    """Parse and validate a payload; raises MessageError with a reason a person can read."""
    try:
        raw = RawEnvelope.model_validate_json(payload)
    except ValidationError as exc:
        raise MessageError(f"not a valid envelope: {_short(exc)}") from None
    if raw.schema_ != SCHEMA_VERSION:
        raise MessageError(f"unsupported schema {raw.schema_!r}, expected {SCHEMA_VERSION!r}")
    if body_type is None:
        return raw
    return typed(raw, body_type)


_HEADER = ("kind", "id", "job_id", "correlation_id", "reply_to", "sender", "sent_at", "traceparent")


def typed(raw: Envelope[Any], body_type: type[BodyT]) -> Envelope[BodyT]:
    """Validate an already-parsed envelope's body as `body_type` (no second JSON parse); one
    decoded typed already (`decode_known`) is returned as it is."""
    if raw.kind != body_type.KIND:
        raise MessageError(f"expected kind {body_type.KIND!r}, got {raw.kind!r}")
    if isinstance(raw.body, body_type):
        return cast("Envelope[BodyT]", raw)
    source = raw.body.model_dump() if isinstance(raw.body, Body) else raw.body  # another class of that kind
    try:
        body = body_type.model_validate(source)
    except ValidationError as exc:
        raise MessageError(f"invalid {raw.kind} body: {_short(exc)}") from None
    env = envelope_type(body_type).model_construct(
        **{k: getattr(raw, k) for k in _HEADER}, schema_=raw.schema_, body=body
    )
    return cast("Envelope[BodyT]", env)


def _decode_as(payload: bytes, body_type: type[Body]) -> Envelope[Any] | None:
    """One validation pass straight into `Envelope[body_type]` (3x cheaper than envelope-then-body
    for small bodies); None when refused, for the two-stage path to say precisely why."""
    try:
        env = envelope_type(body_type).model_validate_json(payload)
    except ValidationError:
        return None
    return env if env.kind == body_type.KIND and env.schema_ == SCHEMA_VERSION else None


def decode_any(payload: bytes, body_types: dict[str, type[Body]]) -> Envelope[Any]:
    """Decode a payload whose kind is one of several.

    With a single expected kind the payload is first validated in one pass straight into the
    typed envelope; anything that pass refuses goes the two-stage way, which says precisely
    what is wrong."""
    if len(body_types) == 1:
        (body_type,) = body_types.values()
        env = _decode_as(payload, body_type)
        if env is not None:
            return env
    raw = decode(payload)
    expected = body_types.get(raw.kind)
    if expected is None:
        raise MessageError(f"unexpected kind {raw.kind!r}; expected one of {sorted(body_types)}")
    return typed(raw, expected)


#: how `Envelope.to_json` starts every envelope: the kind is readable before any parsing
_CANONICAL_START = b'{"schema":"' + SCHEMA_VERSION.encode() + b'","kind":"'
_KIND_MAX = 64


def kind_of(payload: bytes) -> str | None:
    """The kind an envelope encoded by `Envelope.to_json` names, read off its first bytes; None
    for any other layout. Only a hint for which parse to try: the parse itself validates."""
    if not payload.startswith(_CANONICAL_START):
        return None
    start = len(_CANONICAL_START)
    end = payload.find(b'"', start, start + _KIND_MAX)
    return payload[start:end].decode(errors="replace") if end > 0 else None


def decode_known(payload: bytes, known: dict[str, type[Body]]) -> Envelope[Any]:
    """Decode a payload of any kind: one of the `known` kinds (the replies a requester waits for)
    is validated in one pass straight into its typed envelope; every other kind, or a layout
    `kind_of` cannot read, arrives untyped (`RawEnvelope`) as from `decode`."""
    kind = kind_of(payload) if known else None
    body_type = known.get(kind) if kind is not None else None
    if body_type is not None:
        env = _decode_as(payload, body_type)
        if env is not None:
            return env
    return decode(payload)


def _short(exc: ValidationError) -> str:
    errs = exc.errors()
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errs[:3]]
    more = f" (+{len(errs) - 3} more)" if len(errs) > 3 else ""
    return "; ".join(parts) + more
