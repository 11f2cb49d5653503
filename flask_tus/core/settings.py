"""The protocol's settings, as plain values (the Flask extension fills them from ``TUS_*``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta

from .checksum import ALGORITHMS

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TusSettings:
    """Settings of one tus endpoint.

    ``max_size``: largest upload in bytes, ``None`` for no limit. ``expiration``: time an
    upload has to finish from its creation, ``None`` for never. ``expire_completed``: whether
    finished uploads expire too. ``chunk_size``: size of the pieces bodies are buffered and files
    read in. ``checksum_algorithms``: what ``Upload-Checksum`` may name. ``cors_origins``:
    ``("*",)`` for any origin, a tuple of exact origins, or ``()`` for no CORS headers.
    ``trusted_proxies``: networks whose ``X-Forwarded-*`` headers make ``Location`` absolute.
    ``fsync``: make bytes durable before their offset is committed. ``max_metadata_size``:
    longest ``Upload-Metadata`` a creation may send, in bytes (``None`` for no limit): every
    ``HEAD`` sends it back, and a client whose HTTP parser refuses a header that long (Node's,
    under tus-js-client, allows 16 KiB for all of them) could never resume the upload.
    """

    max_size: int | None = 2**32
    expiration: timedelta | None = timedelta(days=1)
    expire_completed: bool = False
    chunk_size: int = 2**20
    checksum_algorithms: tuple[str, ...] = ALGORITHMS
    cors_origins: tuple[str, ...] = ("*",)
    trusted_proxies: tuple[IPNetwork, ...] = ()
    fsync: bool = True
    max_metadata_size: int | None = 8192

    def __post_init__(self) -> None:
        unknown = set(self.checksum_algorithms) - set(ALGORITHMS)
        if unknown:
            raise ValueError(f"unsupported checksum algorithms: {sorted(unknown)}")
        if self.chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if self.max_size is not None and self.max_size < 0:
            raise ValueError("max_size must not be negative")
        if self.max_metadata_size is not None and self.max_metadata_size < 0:
            raise ValueError("max_metadata_size must not be negative")


def parse_networks(values: str | list[str] | tuple[str, ...] | None) -> tuple[IPNetwork, ...]:
    """Networks from a comma-separated string or a list (``"127.0.0.1, 10.0.0.0/8"``)."""
    if not values:
        return ()
    items = values.split(",") if isinstance(values, str) else list(values)
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())
