"""The native ASGI adapter: tus requests straight from ``receive()`` to disk.

WSGI bridges read a whole request body before the application sees it (and drop it when the
client disconnects), so under an ASGI server the tus routes are served here: each body piece is
written as it arrives and a dropped connection keeps what arrived. Every other request goes to
a fallback ASGI application (the Flask app, wrapped by the extension).

This module knows no web framework; it is tested with a bare handler.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any

from .core.errors import ClientDisconnected
from .core.handler import SERVED_METHODS, TusHandler
from .core.ids import is_valid_id
from .core.messages import Headers, TusRequest, TusResponse
from .core.messages import collection_path as normalise_collection

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Entered around each tus request with its scope: yields ``None`` to serve the request inside
#: it, or a response to send instead (a refusal, before the body is read).
Guard = Callable[[Scope], AbstractAsyncContextManager[TusResponse | None]]

#: Methods whose requests may carry a tus body.
_BODY_METHODS = ("POST", "PATCH")


class TusASGI:
    """An ASGI application serving ``collection_path`` (and ``collection_path + <id>``) with
    ``handler``, and everything else with ``fallback`` (a plain 404 when there is none). A
    method tus does not serve, and a path whose id is not a valid upload id, go to the
    fallback too, when there is one.

    ``context`` is entered around each tus request. ``guard`` (see :data:`Guard`) may refuse
    one before it is served; the Flask extension's runs the app's ``before_request``
    functions, in the request context hooks then see.
    """

    def __init__(
        self,
        handler: TusHandler,
        collection_path: str = "/files/",
        fallback: ASGIApp | None = None,
        *,
        context: Callable[[], AbstractContextManager[object]] | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.handler = handler
        self.collection_path = normalise_collection(collection_path)
        self.fallback = fallback
        self.context = context or contextlib.nullcontext
        self.guard = guard

    def match(self, path: str) -> tuple[bool, str | None]:
        """``(True, None)`` for the collection, ``(True, id)`` for an upload URL (the id may
        be invalid: the caller decides), ``(False, None)`` for anything else."""
        collection = self.collection_path
        if path in (collection, collection.rstrip("/") or "/"):
            return True, None
        if path.startswith(collection):
            rest = path[len(collection) :]
            if rest and "/" not in rest:
                return True, rest
        return False, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http":
            root = scope.get("root_path", "")
            path: str = scope["path"]
            if root and path.startswith(root):
                path = path[len(root) :]
            matched, upload_id = self.match(path)
            # A method tus does not serve, or a path that names no possible upload, goes to the
            # fallback when there is one: the app may serve it (as under a WSGI server, where
            # its own routes at such paths come first), and otherwise answers as tus would
            # (the Flask extension's routes and its 405 do, after before_request functions).
            # Methods are compared as the handler reads them: uvicorn passes them as sent.
            native = scope["method"].upper() in SERVED_METHODS and (
                upload_id is None or is_valid_id(upload_id)
            )
            if matched and (native or self.fallback is None):
                await self._serve(scope, receive, send, upload_id, root)
                return
        if self.fallback is not None:
            await self.fallback(scope, receive, send)
            return
        if scope["type"] == "http":
            await _send(send, TusResponse(404, {"Content-Type": "text/plain"}, b"not found\n"))

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, upload_id: str | None, root: str
    ) -> None:
        # As werkzeug reads it: uvicorn passes the method as sent (a browser sends "patch").
        method: str = scope["method"].upper()
        headers = Headers.from_pairs(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
        )
        try:
            content_length: int | None = int(headers["content-length"])
        except (KeyError, ValueError):
            content_length = None
        client = scope.get("client")
        body = _Body(receive)
        streamed = False
        if (
            content_length is None
            and "transfer-encoding" not in headers
            and scope.get("http_version") not in (None, "1.0", "1.1")
            and method in _BODY_METHODS
        ):
            # HTTP/2 and 3 frame a body without Content-Length or chunked coding: whether one
            # comes shows in its first message.
            streamed = await body.starts()
        request = TusRequest(
            method=method,
            upload_id=upload_id,
            headers=headers,
            collection_path=root + self.collection_path,
            body=body.__aiter__(),
            content_length=content_length,
            remote_addr=client[0] if client else None,
            streamed=streamed,
        )
        guarded = self.guard(scope) if self.guard else contextlib.nullcontext()
        async with guarded as refusal:
            if refusal is not None:
                response = refusal
            else:
                with self.context():
                    response = await self.handler.handle(request)
        if request.has_body and not body.done:
            # A refused request leaves its body unread. Receive the rest before answering: most
            # clients send all of it before they read the answer, hypercorn does not finish a
            # response while the request is unread (nor read a body the app does not ask for),
            # and a connection whose request was read whole can be kept alive.
            await body.drain()
        await _send(send, response, head=method == "HEAD")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # Answered here because the WSGI fallback does not speak lifespan.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


class _Body:
    """The request body as it arrives; ``ClientDisconnected`` when the client goes away."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._first: Message | None = None
        self.done = False

    async def starts(self) -> bool:
        """Receive the first message now (it is handed out first) and tell whether a body
        begins: bytes, more to come, or a disconnect (reported when the body is read)."""
        self._first = first = await self._receive()
        return first["type"] == "http.disconnect" or bool(
            first.get("body") or first.get("more_body")
        )

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.done:
            if self._first is not None:
                message, self._first = self._first, None
            else:
                message = await self._receive()
            if message["type"] == "http.disconnect":
                self.done = True
                raise ClientDisconnected()
            piece: bytes = message.get("body", b"")
            self.done = not message.get("more_body", False)
            if piece:
                yield piece

    async def drain(self) -> None:
        """Receive and drop the rest of the body."""
        with contextlib.suppress(ClientDisconnected):
            async for _ in self:
                pass


async def _send(send: Send, response: TusResponse, *, head: bool = False) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    if response.stream is None and not head and response.status not in (204, 304):
        headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    if response.stream is None or head:
        await send({"type": "http.response.body", "body": b"" if head else response.body})
        return
    stream = response.stream
    try:
        async for piece in stream:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
