"""Helpers shared by the core handler tests (``tests/core/test_core_*.py``).

A plain module rather than a second ``conftest.py`` (two conftest modules would collide under
pytest's rootdir import mode): pytest puts this folder on ``sys.path``, so the test files import
it as ``core_helpers``. Every helper talks to :class:`TusHandler` directly, no framework involved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from conftest import TUS, patch_headers

from flask_tus.async_models.json_store import JsonFileStore
from flask_tus.core import Headers, TusHandler, TusRequest, TusResponse
from flask_tus.core.errors import ClientDisconnected
from flask_tus.core.protocols import DataStorage
from flask_tus.storage.local import LocalStorage
from flask_tus.storage.locks import FileLocker

UNKNOWN_ID = "0123456789abcdef0123456789abcdef"
"""A well-formed upload id that names no upload."""


# ---------------------------------------------------------------------- handlers


def with_settings(handler: TusHandler, **changes: Any) -> TusHandler:
    """``handler`` with ``changes`` applied to its settings (changed in place, returned)."""
    handler.settings = dataclasses.replace(handler.settings, **changes)
    return handler


def make_handler(
    upload_dir: Path, storage: DataStorage | None = None, /, **settings: Any
) -> TusHandler:
    """A handler on the default backends in ``upload_dir``.

    ``storage`` replaces ``LocalStorage(upload_dir, fsync=False)``; ``settings`` are changed
    from the defaults.
    """
    handler = TusHandler(
        store=JsonFileStore(upload_dir),
        storage=LocalStorage(upload_dir, fsync=False) if storage is None else storage,
        locker=FileLocker(upload_dir),
    )
    return with_settings(handler, **settings)


# ---------------------------------------------------------------------- requests


async def body_of(*pieces: bytes) -> AsyncIterator[bytes]:
    """A request body that yields ``pieces`` in order."""
    for piece in pieces:
        yield piece


async def dropping_body(*pieces: bytes) -> AsyncIterator[bytes]:
    """Yields ``pieces`` and then reports the client gone, as adapters do."""
    for piece in pieces:
        yield piece
    raise ClientDisconnected()


def make_request(
    method: str,
    upload_id: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    remote_addr: str | None = None,
) -> TusRequest:
    """A request with ``body`` sent whole and announced by its Content-Length."""
    return TusRequest(
        method,
        upload_id,
        Headers.from_pairs((headers or {}).items()),
        body=body_of(body) if body else body_of(),
        content_length=len(body),
        remote_addr=remote_addr,
    )


def streamed_request(
    method: str,
    upload_id: str | None,
    headers: dict[str, str],
    body: AsyncIterator[bytes],
    content_length: int | None,
) -> TusRequest:
    """A request whose body is ``body`` as given, announced as ``content_length``."""
    return TusRequest(
        method,
        upload_id,
        Headers.from_pairs(headers.items()),
        body=body,
        content_length=content_length,
    )


def chunked_request(
    method: str, upload_id: str | None, headers: dict[str, str], *pieces: bytes
) -> TusRequest:
    """A body of unknown length (Transfer-Encoding: chunked, no Content-Length)."""
    return streamed_request(
        method,
        upload_id,
        {**headers, "Transfer-Encoding": "chunked"},
        body_of(*pieces),
        None,
    )


# ---------------------------------------------------------------------- uploads


def id_of(response: TusResponse) -> str:
    """The upload id at the end of a creation response's Location."""
    return response.headers["Location"].rsplit("/", 1)[-1]


async def post(handler: TusHandler, **headers: str) -> TusResponse:
    """POST on the collection with Tus-Resumable and ``headers``."""
    return await handler.handle(make_request("POST", None, {**TUS, **headers}))


async def create_with(handler: TusHandler, **headers: str) -> str:
    """Create an upload with exactly ``headers`` (plus Tus-Resumable); 201 expected."""
    response = await post(handler, **headers)
    assert response.status == 201, response.body
    return id_of(response)


async def create(
    handler: TusHandler, length: int | None = 10, data: bytes = b"", /, **headers: str
) -> str:
    """Create an upload of ``length`` bytes (``None``: deferred) and write ``data`` at 0."""
    sent = dict(headers)
    if length is None:
        sent["Upload-Defer-Length"] = "1"
    else:
        sent["Upload-Length"] = str(length)
    upload_id = await create_with(handler, **sent)
    if data:
        await write(handler, upload_id, 0, data)
    return upload_id


async def patch(
    handler: TusHandler, upload_id: str, offset: int, body: bytes, **extra: str
) -> TusResponse:
    """PATCH ``body`` at ``offset`` with the usual headers plus ``extra``."""
    return await handler.handle(
        make_request("PATCH", upload_id, patch_headers(offset, **extra), body)
    )


async def write(handler: TusHandler, upload_id: str, offset: int, body: bytes) -> None:
    """PATCH ``body`` at ``offset``; 204 expected."""
    response = await patch(handler, upload_id, offset, body)
    assert response.status == 204, response.body


async def head(handler: TusHandler, upload_id: str, **headers: str) -> TusResponse:
    """HEAD with Tus-Resumable and ``headers``."""
    return await handler.handle(make_request("HEAD", upload_id, {**TUS, **headers}))


async def offset_of(handler: TusHandler, upload_id: str) -> int:
    """The stored offset, read back by HEAD (200 expected)."""
    response = await head(handler, upload_id)
    assert response.status == 200
    return int(response.headers["Upload-Offset"])
