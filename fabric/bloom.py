"""A fixed-size Bloom filter over skill names, carried in every VCV.

Sizing: m = 1024 bits, k = 7 hashes. For n skills the false-positive rate is
(1 - e^{-kn/m})^k: 0.005% at n = 20, 0.08% at n = 40, 0.8% at n = 70; agents advertise tens of
skills, not hundreds. The filter is fixed-size so every VCV is comparable and the router can test
membership without knowing the agent's vocabulary. Hashes come from blake2b (stable across
processes and Python versions, unlike `hash()`), split into two 64-bit halves combined as
h1 + i*h2 (Kirsch-Mitzenmacher double hashing).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from functools import lru_cache

BLOOM_BITS = 1024
BLOOM_HASHES = 7


def normalise_skill(skill: str) -> str:
    return " ".join(skill.strip().lower().replace("_", " ").replace("-", " ").split())


@lru_cache(maxsize=65536)  # skills repeat across agents; hashing is most of a VCV check
def bit_positions(skill: str, bits: int = BLOOM_BITS, hashes: int = BLOOM_HASHES) -> tuple[int, ...]:
    """The bits a skill sets: public so the router can test a whole table of filters (one numpy
    row per agent) without building a `BloomFilter` per row."""
    digest = hashlib.blake2b(normalise_skill(skill).encode(), digest_size=16).digest()
    h1 = int.from_bytes(digest[:8], "little")
    h2 = int.from_bytes(digest[8:], "little") | 1
    return tuple((h1 + i * h2) % bits for i in range(hashes))


class BloomFilter:
    __slots__ = ("bits", "hashes", "_data")

    def __init__(self, bits: int = BLOOM_BITS, hashes: int = BLOOM_HASHES, data: bytes | None = None) -> None:
        if bits % 8:
            raise ValueError("bloom filter size must be a multiple of 8 bits")
        self.bits = bits
        self.hashes = hashes
        nbytes = bits // 8
        if data is not None and len(data) != nbytes:
            raise ValueError(f"bloom filter data has {len(data)} bytes, expected {nbytes}")
        self._data = bytearray(data if data is not None else nbytes)

    @classmethod
    def of(cls, skills: Iterable[str], bits: int = BLOOM_BITS, hashes: int = BLOOM_HASHES) -> BloomFilter:
        bloom = cls(bits, hashes)
        for skill in skills:
            bloom.add(skill)
        return bloom

    @classmethod
    def from_b64(cls, text: str, bits: int = BLOOM_BITS, hashes: int = BLOOM_HASHES) -> BloomFilter:
        return cls(bits, hashes, base64.b64decode(text, validate=True))

    def add(self, skill: str) -> None:
        for pos in bit_positions(skill, self.bits, self.hashes):
            self._data[pos >> 3] |= 1 << (pos & 7)

    def __contains__(self, skill: str) -> bool:
        return all(self._data[pos >> 3] & (1 << (pos & 7)) for pos in bit_positions(skill, self.bits, self.hashes))

    def contains_all(self, skills: Iterable[str]) -> bool:
        return all(skill in self for skill in skills)

    def to_bytes(self) -> bytes:
        return bytes(self._data)

    def to_b64(self) -> str:
        return base64.b64encode(self._data).decode()

    def fill_ratio(self) -> float:
        return sum(bin(b).count("1") for b in self._data) / self.bits
