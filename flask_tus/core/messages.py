"""The framework-neutral request and response the handler works on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any


class Headers(dict[str, str]):
    """Request headers keyed by lower-case name, looked up in any case; repeated headers are
    joined with ``", "``."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> Headers:
        headers = cls()
        for name, value in pairs:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers


def collection_path(url: str) -> str:
    """The collection URL's path as the adapters use it: one leading and one trailing slash,
    no empty segments (``"/"`` stays ``"/"``: ``"//<id>"`` in Location would name a host)."""
    return "/" + "".join(f"{part}/" for part in url.split("/") if part)


async def empty_body() -> AsyncIterator[bytes]:
    """A body with no bytes."""
    return
    yield b""  # pragma: no cover - makes this an async generator


@dataclass
class TusRequest:
    """One request to the tus endpoint.

    ``upload_id`` is the raw path segment after the collection URL (``None`` for the collection
    itself); the handler validates it. ``collection_path`` is the collection URL's path with a
    trailing slash, used to build ``Location``. ``body`` yields the request body as it arrives;
    it raises :class:`~flask_tus.core.errors.ClientDisconnected` when the client goes away.
    ``content_length`` is ``None`` when the body length is unknown: chunked, or (``streamed``)
    an HTTP/2 or HTTP/3 request body sent without ``Content-Length``.
    """

    method: str
    upload_id: str | None
    headers: Headers
    collection_path: str = "/files/"
    body: AsyncIterator[bytes] = field(default_factory=empty_body)
    content_length: int | None = None
    remote_addr: str | None = None
    streamed: bool = False

    @property
    def has_body(self) -> bool:
        if self.content_length is not None:
            return self.content_length > 0
        return self.streamed or "chunked" in self.headers.get("transfer-encoding", "").lower()


@dataclass
class TusResponse:
    """What the adapter sends back. ``stream`` replaces ``body`` for downloads."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
