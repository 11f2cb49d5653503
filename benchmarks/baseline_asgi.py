"""The floor for ``bench_upload.py``: the least a raw ASGI app can do to store a tus-like upload.

``POST /files/`` creates an empty file with a random name in ``$TUS_UPLOAD_DIR`` and answers 201
with ``Location``. ``PATCH /files/<name>`` writes the body pieces from ``receive()`` as they
arrive at the ``Upload-Offset`` header's offset, gathered into writes of up to 1 MiB (like
``baseline_wsgi.py``'s 1 MiB reads and flask-tus's ``TUS_CHUNK_SIZE``), each with ``os.pwrite``
in a worker thread (asyncio's default executor; no aiofiles), and answers 204 with the new
``Upload-Offset``. ``HEAD /files/<name>`` answers 200 with ``Upload-Offset`` = the file's size.
No records, no validation, no fsync; creating, opening, sizing and closing a file are single
quick system calls and run on the event loop.

Why gather: hypercorn delivers a body in pieces of at most 64 KiB, and one thread hop per piece
(16384 per GiB) halved this app's throughput on a 2-core machine, which would make it a floor
that any buffering app clears easily.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

PREFIX = "/files/"
WRITE_SIZE = 2**20
UPLOAD_DIR = os.environ.get("TUS_UPLOAD_DIR") or "."

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    if status != 204:
        headers = [*headers, (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    method: str = scope["method"]
    path: str = scope["path"]
    if method == "POST" and path in (PREFIX, PREFIX.rstrip("/")):
        name = secrets.token_hex(16)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        os.close(os.open(os.path.join(UPLOAD_DIR, name), flags, 0o644))
        await _answer(send, 201, [(b"location", (PREFIX + name).encode())])
        return
    name = path[len(PREFIX) :]
    # Only a name this app could have made: keeps the request path out of the filesystem.
    if not (path.startswith(PREFIX) and name.isalnum()):
        await _answer(send, 404, [])
        return
    file_path = os.path.join(UPLOAD_DIR, name)
    if method == "HEAD":
        try:
            size = os.stat(file_path).st_size
        except FileNotFoundError:
            await _answer(send, 404, [])
            return
        await _answer(send, 200, [(b"upload-offset", str(size).encode())])
        return
    if method != "PATCH":
        await _answer(send, 405, [])
        return
    offset = 0
    for key, value in scope["headers"]:
        if key == b"upload-offset":
            offset = int(value)
    loop = asyncio.get_running_loop()
    pending: list[bytes] = []
    pending_size = 0
    fd = os.open(file_path, os.O_WRONLY)
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if body:
                pending.append(body)
                pending_size += len(body)
            if pending and (pending_size >= WRITE_SIZE or not more):
                data = pending[0] if len(pending) == 1 else b"".join(pending)
                pending.clear()
                pending_size = 0
                await loop.run_in_executor(None, _pwrite_all, fd, data, offset)
                offset += len(data)
            if not more:
                break
    finally:
        os.close(fd)
    await _answer(send, 204, [(b"upload-offset", str(offset).encode())])
