"""The WSGI adapter: Flask routes that hand tus requests to the core handler.

Under a WSGI server the body is ``request.stream``, read in ``TUS_CHUNK_SIZE`` pieces in a
worker thread so the view's event loop never blocks on the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import IO

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import ClientDisconnected as WerkzeugClientDisconnected

from .core.errors import ClientDisconnected
from .core.messages import Headers, TusRequest, TusResponse

_METHODS = ["OPTIONS", "POST", "HEAD", "PATCH", "DELETE", "GET"]
#: The most of a refused request's body read away to keep its connection usable.
_DRAIN_LIMIT = 8 * 2**20


class _Body:
    """The request body as an async iterator; remembers whether it was read to the end.

    Each read runs in a worker thread and cannot be called off once started, so a read whose
    awaiting task was cancelled (a writer asked to let go) stays pending and its piece is the
    next one handed out: two reads never run at once, and no byte is skipped.
    """

    def __init__(self, stream: IO[bytes], piece_size: int) -> None:
        self._stream = stream
        self._piece_size = piece_size
        self._pending: asyncio.Future[bytes] | None = None
        self.exhausted = False

    async def drain(self, limit: int) -> None:
        """Read and drop what is left of the body, up to ``limit`` bytes."""
        dropped = 0
        try:
            async for piece in self:
                dropped += len(piece)
                if dropped >= limit:
                    return
        except ClientDisconnected:
            pass

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.exhausted:
            if self._pending is None:
                self._pending = asyncio.ensure_future(
                    asyncio.to_thread(self._stream.read, self._piece_size)
                )
            try:
                piece = await asyncio.shield(self._pending)
            except (WerkzeugClientDisconnected, OSError) as exc:
                self._pending = None
                self.exhausted = True
                raise ClientDisconnected() from exc
            self._pending = None
            if not piece:
                self.exhausted = True
                return
            yield piece


async def tus_view(upload_id: str | None = None) -> Response:
    """Serve one tus request through the app's :class:`~flask_tus.core.TusHandler`."""
    state = current_app.extensions["tus"]
    body = _Body(request.stream, state.handler.settings.chunk_size)
    tus_request = TusRequest(
        method=request.method,
        upload_id=upload_id,
        headers=Headers.from_pairs(request.headers.items()),
        collection_path=state.collection_path,
        body=body.__aiter__(),
        content_length=request.content_length,
        remote_addr=request.remote_addr,
    )
    result = await state.handler.handle(tus_request)
    if tus_request.has_body and not body.exhausted:
        # A refused request leaves its body unread. Some servers (gunicorn 27) then drop the
        # kept-alive connection after promising to keep it, so read a small rest away; a large
        # one is not worth receiving, and the connection is closed instead.
        await body.drain(_DRAIN_LIMIT)
        if not body.exhausted:
            result.headers["Connection"] = "close"
    return to_flask_response(result)


class TusFlaskResponse(Response):
    """No default Content-Type: an empty tus response has none."""

    default_mimetype = None


def to_flask_response(result: TusResponse) -> Response:
    """A Flask response for the core's response; streams downloads piece by piece."""
    if result.stream is None:
        return TusFlaskResponse(result.body, status=result.status, headers=result.headers)
    return TusFlaskResponse(
        _iterate(result.stream),
        status=result.status,
        headers=result.headers,
        direct_passthrough=True,
    )


def _iterate(stream: AsyncIterator[bytes]) -> Iterator[bytes]:
    """Drive an async byte stream from the WSGI server's thread on a private event loop."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(stream))
            except StopAsyncIteration:
                return
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            loop.run_until_complete(aclose())
        loop.close()


def make_blueprint(collection_path: str) -> Blueprint:
    """Routes for ``collection_path`` (with and without its trailing slash, no redirect) and
    ``collection_path + <upload_id>``."""
    blueprint = Blueprint("tus", __name__)
    # Flask answers OPTIONS itself unless told not to; tus needs its own OPTIONS response.
    blueprint.add_url_rule(
        collection_path,
        "collection",
        tus_view,
        methods=_METHODS,
        strict_slashes=False,
        provide_automatic_options=False,
    )
    blueprint.add_url_rule(
        collection_path + "<upload_id>",
        "upload",
        tus_view,
        methods=_METHODS,
        provide_automatic_options=False,
    )
    return blueprint
