"""A synchronous test client for an ASGI app that answers like Flask's test client.

Tests written against ``FlaskClient`` (``open``, ``post``, ``patch``, ``head``, ``get``,
``delete``; ``status_code``, ``headers``, ``data``, ``mimetype``, ``get_data``) run unchanged
against the native ASGI path: ``AsgiTestClient(tus.asgi_app(app))``. Requests go through
httpx's ASGI transport on one event loop of the client's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx


class AsgiTestResponse:
    """The parts of a Werkzeug test response the tests read."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.headers = response.headers
        self.data = response.content

    @property
    def mimetype(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    def get_data(self, as_text: bool = False) -> bytes | str:
        return self.data.decode() if as_text else self.data


class AsgiTestClient:
    """Sends each request to ``app`` in-process and waits for the whole answer."""

    def __init__(self, app: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost"
        )

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()

    def open(
        self,
        path: str,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        data: bytes = b"",
        *,
        chunked: bool = False,
    ) -> AsgiTestResponse:
        """Send ``data`` whole with its Content-Length, or (``chunked``) as a stream of
        unannounced length (``Transfer-Encoding: chunked``)."""
        content: bytes | AsyncIterator[bytes] = _stream(data) if chunked else data
        request = self._client.request(method, path, headers=dict(headers or {}), content=content)
        return AsgiTestResponse(self._loop.run_until_complete(request))

    def post(self, path: str, **kwargs: Any) -> AsgiTestResponse:
        return self.open(path, "POST", **kwargs)

    def patch(self, path: str, **kwargs: Any) -> AsgiTestResponse:
        return self.open(path, "PATCH", **kwargs)

    def head(self, path: str, **kwargs: Any) -> AsgiTestResponse:
        return self.open(path, "HEAD", **kwargs)

    def get(self, path: str, **kwargs: Any) -> AsgiTestResponse:
        return self.open(path, "GET", **kwargs)

    def delete(self, path: str, **kwargs: Any) -> AsgiTestResponse:
        return self.open(path, "DELETE", **kwargs)


async def _stream(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data
