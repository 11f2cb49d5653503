"""The WSGI adapter: Flask routes that hand tus requests to the core handler.

Under a WSGI server the body is ``request.stream``, read in ``TUS_CHUNK_SIZE`` pieces in a
worker thread so the view's event loop never blocks on the socket.

The async view runs on an event loop of its own in the server's thread (:func:`run_async`)
rather than through Flask's default ``async_to_sync``: asgiref starts a thread and an event
loop per request, and each such loop a pool of worker threads of its own, so every upload
started and joined about six threads. Under gunicorn with 8 threads and 32 clients that thread
churn, not the bytes, bounded the uploads per second (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, TypeVar

from flask import Blueprint, Response, current_app, request
from flask.globals import request_ctx
from werkzeug.exceptions import ClientDisconnected as WerkzeugClientDisconnected
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from .core.errors import ClientDisconnected
from .core.handler import SERVED_METHODS
from .core.messages import Headers, TusRequest, TusResponse

T = TypeVar("T")

#: The methods the tus routes serve; answer_other_methods answers others with 405.
METHODS = sorted(SERVED_METHODS)
#: The tus blueprint's name, the prefix of its endpoints.
TUS_BLUEPRINT = "tus"
#: The most of a refused request's body read away to keep its connection usable.
_DRAIN_LIMIT = 8 * 2**20
#: Worker threads shared by every request's loop (blocking body reads, file and record I/O).
#: Threads start only when none is idle; a body read from a slow client holds one for as long
#: as the client is silent, so the bound is generous.
_MAX_WORKERS = 256


class _SharedExecutor(ThreadPoolExecutor):
    """The default executor of every request's loop; outlives them all.

    ``loop.close()`` shuts its default executor down, which must not stop the threads the next
    request will use, so ``shutdown`` does nothing; the threads end with the interpreter.
    """

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


#: Made at import; it starts no thread until the first request needs one.
_EXECUTOR = _SharedExecutor(_MAX_WORKERS, thread_name_prefix="flask-tus")


def _new_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_default_executor(_EXECUTOR)
    return loop


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to the end on a new event loop in this thread and return its result.

    The loop's worker threads come from one pool shared by all requests, so a request starts
    no thread. The task runs in a copy of this thread's context: Flask's request and app
    contexts stay visible to the handler and its hooks. Raises ``RuntimeError`` when this
    thread already runs an event loop (as ``asyncio.run`` does).
    """
    loop = _new_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


class _Body:
    """The request body as an async iterator; remembers whether it was read to the end.

    Each read runs in a worker thread and cannot be called off once started, so a read whose
    awaiting task was cancelled (a writer asked to let go) stays pending and its piece is the
    next one handed out: two reads never run at once, and no byte is skipped.

    With ``length`` (the request's ``Content-Length``) the body ends once that many bytes
    arrived, without one more read (and thread hop) to see the end.
    """

    def __init__(self, stream: IO[bytes], piece_size: int, length: int | None = None) -> None:
        self._stream = stream
        self._piece_size = piece_size
        self._left = length
        self._pending: asyncio.Future[bytes] | None = None
        self.exhausted = length == 0

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
                size = self._piece_size
                if self._left is not None:
                    size = min(size, self._left)
                self._pending = asyncio.ensure_future(asyncio.to_thread(self._stream.read, size))
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
            if self._left is not None:
                self._left -= len(piece)
                self.exhausted = self._left <= 0
            yield piece


async def tus_view(upload_id: str | None = None) -> Response:
    """Serve one tus request through the app's :class:`~flask_tus.core.TusHandler`."""
    state = current_app.extensions["tus"]
    body = _Body(request.stream, state.handler.settings.chunk_size, request.content_length)
    tus_request = TusRequest(
        method=request.method,
        upload_id=upload_id,
        headers=Headers.from_pairs(request.headers.items()),
        # SCRIPT_NAME: an app mounted under a prefix hands out URLs that reach it.
        collection_path=request.script_root + state.collection_path,
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
    loop = _new_loop()
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


def _sync_view(view: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """``view`` for Flask to call from a WSGI server's thread, run by :func:`run_async`."""

    @functools.wraps(view)
    def run(**kwargs: Any) -> T:
        return run_async(view(**kwargs))

    return run


def make_blueprint(collection_path: str) -> Blueprint:
    """Routes for ``collection_path`` (with and without its trailing slash, no redirect) and
    ``collection_path + <upload_id>``, served by :func:`tus_view`."""
    blueprint = Blueprint(TUS_BLUEPRINT, __name__)
    view = _sync_view(tus_view)
    # Flask answers OPTIONS itself unless told not to; tus needs its own OPTIONS response.
    blueprint.add_url_rule(
        collection_path,
        "collection",
        view,
        methods=METHODS,
        strict_slashes=False,
        provide_automatic_options=False,
    )
    blueprint.add_url_rule(
        collection_path + "<upload_id>",
        "upload",
        view,
        methods=METHODS,
        provide_automatic_options=False,
    )
    return blueprint


class OtherMethod(MethodNotAllowed):
    """Routing failed at a tus URL: no route of the app serves the request's method there.

    :func:`mark_other_methods` puts it in place of werkzeug's error, and the app's error
    handler for it (:func:`answer_other_methods`) answers as tus does.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        super().__init__()
        #: The tus route's arguments for this path (``upload_id`` or none).
        self.values = values


def mark_other_methods(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """The app's URL value preprocessor: when routing failed at a tus URL (405, or werkzeug's
    404 for the collection without its trailing slash), put :class:`OtherMethod` in the place
    of that error, which Flask raises later.

    Flask runs URL value preprocessors before the ``before_request`` functions and raises the
    routing error only after them, so one of those that answers (authentication) keeps the
    last word, and the tus 405 then passes through every ``after_request`` function like any
    error response. A method another route of the app serves at the path never fails.
    """
    if not isinstance(request.routing_exception, (MethodNotAllowed, NotFound)):
        return
    adapter = request_ctx.url_adapter
    if adapter is None:
        return
    try:
        # Both tus routes serve OPTIONS: which one (if any) is this path's?
        matched, arguments = adapter.match(method="OPTIONS")
    except HTTPException:
        return
    if matched in (f"{TUS_BLUEPRINT}.collection", f"{TUS_BLUEPRINT}.upload"):
        request.routing_exception = OtherMethod(arguments)


def answer_other_methods(error: OtherMethod) -> Response:
    """The app's error handler for :class:`OtherMethod`: the tus handler's 405, with the URL's
    ``Allow`` and ``Tus-Resumable`` (Flask's 405 page has neither, and its ``Allow`` would name
    POST on an upload URL)."""
    return run_async(tus_view(**error.values))
