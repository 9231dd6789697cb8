"""Embedding vectors on the wire: base64 of little-endian float32 (4x smaller than JSON floats).

Input also accepts a plain JSON list of numbers, so people can hand-write VCVs and tests.
In Python a vector is a `FloatVector`: a plain list of floats that also keeps the float32 array
it was decoded from, so a router ingesting thousands of VCVs converts each vector once, not
four times (decode, validate, norm check, index).
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

import numpy as np
from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

NORM_TOLERANCE = 1e-3


class FloatVector(list[float]):
    """A list of floats that remembers its float32 array (read-only, shared)."""

    __slots__ = ("_array",)

    @classmethod
    def of(cls, arr: np.ndarray) -> "FloatVector":
        arr = np.ascontiguousarray(arr, dtype=np.float32).ravel()
        out = cls(arr.tolist())
        arr.flags.writeable = False
        out._array = arr
        return out

    def array(self) -> np.ndarray:
        arr = getattr(self, "_array", None)
        if arr is None or len(arr) != len(self):  # mutated as a list: rebuild
            arr = np.asarray(self, dtype=np.float32)
            arr.flags.writeable = False
            self._array = arr
        return arr


def as_array(vec: list[float] | np.ndarray) -> np.ndarray:
    """float32 view of a vector, without a copy when it is a FloatVector."""
    if isinstance(vec, FloatVector):
        return vec.array()
    return np.asarray(vec, dtype=np.float32)


def decode_vector(value: Any) -> FloatVector:
    if isinstance(value, FloatVector):
        return value
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ValueError("vector is not valid base64") from exc
        if len(raw) % 4:
            raise ValueError("vector bytes are not a whole number of float32")
        return FloatVector.of(np.frombuffer(raw, dtype="<f4"))
    if isinstance(value, np.ndarray):
        return FloatVector.of(value)
    if isinstance(value, (list, tuple)):
        try:
            return FloatVector.of(np.asarray([float(x) for x in value], dtype=np.float32))
        except (TypeError, ValueError):
            raise ValueError("vector must be a list of numbers") from None
    raise ValueError("vector must be a base64 float32 string or a list of numbers")


def encode_vector(value: list[float]) -> str:
    return base64.b64encode(as_array(value).astype("<f4", copy=False).tobytes()).decode()


Vector = Annotated[
    list[float],
    PlainValidator(decode_vector),
    PlainSerializer(encode_vector, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "description": "float32 little-endian vector"}),
]


def l2_normalise(vec: np.ndarray) -> np.ndarray:
    vec = np.asarray(vec, dtype=np.float32)
    norm = float(np.linalg.norm(vec))
    if norm == 0.0 or not np.isfinite(norm):
        raise ValueError("cannot normalise a zero or non-finite vector")
    return vec / norm


def check_unit(vec: list[float] | np.ndarray, what: str) -> None:
    arr = as_array(vec)
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    sq = float(np.dot(arr, arr))  # float32 is ample for a 1e-3 tolerance; NaN/inf propagate
    if not np.isfinite(sq):
        raise ValueError(f"{what} has non-finite values")
    norm = sq**0.5
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise ValueError(f"{what} is not L2-normalised (norm {norm:.4f}); normalise it before publishing")
