"""Checksum algorithms of the tus checksum extension, over the standard library."""

from __future__ import annotations

import hashlib
import zlib
from typing import Protocol

#: Every algorithm the server can verify, in the order OPTIONS lists them. ``sha1`` is the one
#: the spec makes mandatory.
ALGORITHMS: tuple[str, ...] = ("sha1", "md5", "sha256", "sha512", "crc32")


class Hasher(Protocol):
    """The incremental interface shared by hashlib objects and :class:`Crc32`."""

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class Crc32:
    """CRC-32 (zlib polynomial) with a hashlib-like interface; digest is 4 big-endian bytes."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def new_hasher(algorithm: str) -> Hasher:
    """A fresh hasher for one of :data:`ALGORITHMS`; ``ValueError`` for any other name."""
    if algorithm == "crc32":
        return Crc32()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}")
    return hashlib.new(algorithm)
