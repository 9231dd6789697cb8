"""Embedding vectors on the wire: base64 of little-endian float32 (4x smaller than JSON floats).

Input also accepts a plain JSON list of numbers, so people can hand-write VCVs and tests.
In Python a vector is a `FloatVector`: an immutable sequence over the float32 array it was
decoded from, so a router ingesting thousands of VCVs converts each vector once, and a registry
of thousands of agents does not hand the garbage collector millions of float references.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator, Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

NORM_TOLERANCE = 1e-3


class FloatVector(Sequence[float]):
    """An immutable vector of floats over one float32 array.

    Not a list on purpose: a list of 384 floats is 384 objects the garbage collector walks on
    every full collection, and a registry of 10k agents holds 20k such vectors (7.7M
    references for the collector to walk, each time). This holds
    one array; it compares equal to any sequence with the same values and converts with
    `np.asarray` without a copy.
    """

    __slots__ = ("_array",)

    def __init__(self, values: Iterable[float] | np.ndarray = ()) -> None:
        arr = np.array(values, dtype=np.float32).ravel() if not isinstance(values, np.ndarray) else values
        self._array = _frozen(arr)

    @classmethod
    def of(cls, arr: np.ndarray) -> FloatVector:
        out = cls.__new__(cls)
        out._array = _frozen(arr)
        return out

    def array(self) -> np.ndarray:
        return self._array

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self._array if dtype is None else self._array.astype(dtype)

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self._array[index].tolist()
        return float(self._array[index])

    def __iter__(self) -> Iterator[float]:
        return iter(self._array.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FloatVector):
            return bool(np.array_equal(self._array, other._array))
        if isinstance(other, (list, tuple, np.ndarray)):
            return len(other) == len(self._array) and bool(
                np.array_equal(self._array, np.asarray(other, dtype=np.float32))
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._array.tobytes())

    def __repr__(self) -> str:
        return f"FloatVector(dim={len(self._array)})"

    def tolist(self) -> list[float]:
        return self._array.tolist()


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=np.float32).ravel()
    if arr.flags.writeable:  # our own copy: the caller's array stays theirs (and writable)
        arr = arr.copy()
        arr.flags.writeable = False
    return arr


def as_array(vec: Sequence[float] | np.ndarray) -> np.ndarray:
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


def encode_vector(value: Sequence[float] | np.ndarray) -> str:
    return base64.b64encode(as_array(value).astype("<f4", copy=False).tobytes()).decode()


Vector = Annotated[
    Any,  # a FloatVector once validated; any float sequence or base64 string on the way in
    PlainValidator(decode_vector),
    PlainSerializer(encode_vector, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "description": "float32 little-endian vector"}),
]


#: unit vectors stored as int8 (the router's spec embeddings, example views and learned views):
#: component × 127, a quarter of float32's bytes
INT8_SCALE = 127.0


def to_int8(vec: np.ndarray) -> np.ndarray:
    """Unit vector(s) as int8 at INT8_SCALE (any shape; clipped, rounded)."""
    return np.clip(np.rint(np.asarray(vec) * INT8_SCALE), -127, 127).astype(np.int8)


def l2_normalise(vec: np.ndarray) -> np.ndarray:
    vec = np.asarray(vec, dtype=np.float32)
    norm = float(np.linalg.norm(vec))
    if norm == 0.0 or not np.isfinite(norm):
        raise ValueError("cannot normalise a zero or non-finite vector")
    return vec / norm


def check_unit(vec: Sequence[float] | np.ndarray, what: str) -> None:
    arr = as_array(vec)
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    sq = float(np.dot(arr, arr))  # float32 is ample for a 1e-3 tolerance; NaN/inf propagate
    if not np.isfinite(sq):
        raise ValueError(f"{what} has non-finite values")
    norm = sq**0.5
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise ValueError(f"{what} is not L2-normalised (norm {norm:.4f}); normalise it before publishing")
