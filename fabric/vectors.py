"""Embedding vectors on the wire: base64 of little-endian float32 (4x smaller than JSON floats).

Input also accepts a plain JSON list of numbers, so people can hand-write VCVs and tests.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

NORM_TOLERANCE = 1e-3


def decode_vector(value: Any) -> list[float]:
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ValueError("vector is not valid base64") from exc
        if len(raw) % 4:
            raise ValueError("vector bytes are not a whole number of float32")
        return np.frombuffer(raw, dtype="<f4").astype(float).tolist()
    if isinstance(value, np.ndarray):
        return value.astype(float).ravel().tolist()
    if isinstance(value, (list, tuple)):
        return [float(x) for x in value]
    raise ValueError("vector must be a base64 float32 string or a list of numbers")


def encode_vector(value: list[float]) -> str:
    return base64.b64encode(np.asarray(value, dtype="<f4").tobytes()).decode()


Vector = Annotated[
    list[float],
    BeforeValidator(decode_vector),
    PlainSerializer(encode_vector, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "description": "float32 little-endian vector"}),
]


def l2_normalise(vec: np.ndarray) -> np.ndarray:
    vec = np.asarray(vec, dtype=np.float32)
    norm = float(np.linalg.norm(vec))
    if norm == 0.0 or not np.isfinite(norm):
        raise ValueError("cannot normalise a zero or non-finite vector")
    return vec / norm


def check_unit(vec: list[float], what: str) -> None:
    arr = np.asarray(vec, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} has non-finite values")
    norm = float(np.linalg.norm(arr))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise ValueError(f"{what} is not L2-normalised (norm {norm:.4f}); normalise it before publishing")
