"""GET on the core handler: downloading finished uploads with safe headers and byte ranges."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TUS, metadata, patch_headers
from core_helpers import UNKNOWN_ID, create, make_handler, make_request

from flask_tus.core import TusHandler, TusResponse
from flask_tus.storage.local import LocalStorage

DATA = b"0123456789"


async def finished(
    handler: TusHandler, data: bytes = DATA, meta: str | None = None, *, written: int | None = None
) -> str:
    """An upload of ``data``; ``written`` bytes of it stored (all by default)."""
    headers = {} if meta is None else {"Upload-Metadata": meta}
    return await create(handler, len(data), data if written is None else data[:written], **headers)


async def get(handler: TusHandler, upload_id: str, **headers: str) -> TusResponse:
    return await handler.handle(make_request("GET", upload_id, headers))


async def read_all(response: TusResponse) -> bytes:
    if response.stream is None:
        return response.body
    return b"".join([piece async for piece in response.stream])


async def test_get_returns_the_bytes(handler: TusHandler) -> None:
    """GET of a finished upload: 200 with its bytes, length and safe headers."""
    upload_id = await finished(handler)
    response = await get(handler, upload_id)
    assert response.status == 200
    assert await read_all(response) == DATA
    assert response.headers["Content-Length"] == "10"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == 'attachment; filename="download"'


async def test_get_needs_no_tus_resumable(handler: TusHandler) -> None:
    """GET is a plain download: browsers follow links without tus headers."""
    upload_id = await finished(handler)
    with_tus = await handler.handle(make_request("GET", upload_id, TUS))
    without = await get(handler, upload_id)
    assert with_tus.status == without.status == 200


async def test_get_streams_in_bounded_pieces(upload_dir: Path) -> None:
    """The body is read in pieces of the storage's chunk size, in order."""
    handler = make_handler(upload_dir, LocalStorage(upload_dir, chunk_size=4, fsync=False))
    data = bytes(range(256)) * 3
    upload_id = await finished(handler, data)
    response = await get(handler, upload_id)
    assert response.stream is not None
    pieces = [piece async for piece in response.stream]
    assert b"".join(pieces) == data
    assert max(len(p) for p in pieces) <= 4


async def test_get_empty_upload(handler: TusHandler) -> None:
    """A finished zero-length upload downloads as an empty 200."""
    upload_id = await finished(handler, b"")
    response = await get(handler, upload_id)
    assert response.status == 200
    assert response.headers["Content-Length"] == "0"
    assert await read_all(response) == b""


@pytest.mark.parametrize(
    ("filetype", "content_type", "disposition"),
    [
        pytest.param("image/png", "image/png", "inline", id="png"),
        pytest.param("IMAGE/JPEG", "image/jpeg", "inline", id="uppercase-jpeg"),
        pytest.param("audio/mpeg", "audio/mpeg", "inline", id="audio"),
        pytest.param("video/mp4", "video/mp4", "inline", id="video"),
        pytest.param("text/plain", "text/plain", "inline", id="plain-text"),
        pytest.param("text/plain; charset=utf-8", "text/plain", "inline", id="plain-text-charset"),
        pytest.param("application/json", "application/json", "attachment", id="json"),
        pytest.param("application/zip", "application/zip", "attachment", id="zip"),
        pytest.param("text/csv", "text/csv", "attachment", id="csv"),
        pytest.param("text/html", "application/octet-stream", "attachment", id="html"),
        pytest.param("TEXT/HTML", "application/octet-stream", "attachment", id="html-uppercase"),
        pytest.param(
            "text/html; charset=utf-8", "application/octet-stream", "attachment", id="html-charset"
        ),
        pytest.param("image/svg+xml", "application/octet-stream", "attachment", id="svg"),
        pytest.param("application/xhtml+xml", "application/octet-stream", "attachment", id="xhtml"),
        pytest.param("application/javascript", "application/octet-stream", "attachment", id="js"),
        pytest.param("text/javascript", "application/octet-stream", "attachment", id="text-js"),
        pytest.param("application/pdf", "application/octet-stream", "attachment", id="pdf"),
        pytest.param("text/xml", "application/octet-stream", "attachment", id="xml"),
        pytest.param(
            "application/rss+xml", "application/octet-stream", "attachment", id="plus-xml"
        ),
        pytest.param("text/css", "application/octet-stream", "attachment", id="css"),
        pytest.param("not a type", "application/octet-stream", "attachment", id="garbage"),
        pytest.param("image/png\r\nX-Evil: 1", "application/octet-stream", "attachment", id="crlf"),
        pytest.param("", "application/octet-stream", "attachment", id="empty"),
        pytest.param(None, "application/octet-stream", "attachment", id="absent"),
    ],
)
async def test_get_content_type_only_when_safe(
    handler: TusHandler, filetype: str | None, content_type: str, disposition: str
) -> None:
    """Content-Type from filetype only when passive; inline only for media and plain text."""
    meta = (
        metadata(filename="file.bin")
        if filetype is None
        else metadata(filename="file.bin", filetype=filetype)
    )
    upload_id = await finished(handler, meta=meta)
    response = await get(handler, upload_id)
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Content-Disposition"] == f'{disposition}; filename="file.bin"'
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("filename", "disposition"),
    [
        pytest.param("report.txt", 'attachment; filename="report.txt"', id="plain"),
        pytest.param('a"b".txt', 'attachment; filename="ab.txt"', id="quotes"),
        pytest.param("../../etc/passwd", 'attachment; filename="passwd"', id="slashes"),
        pytest.param("C:\\Users\\x\\evil.exe", 'attachment; filename="evil.exe"', id="backslashes"),
        pytest.param(
            "a\r\nSet-Cookie: x=y.txt", 'attachment; filename="aSet-Cookie: x=y.txt"', id="crlf"
        ),
        pytest.param("semi;colon.txt", 'attachment; filename="semicolon.txt"', id="semicolon"),
        pytest.param("tab\there.txt", 'attachment; filename="tabhere.txt"', id="control"),
        pytest.param("..", 'attachment; filename="download"', id="only-dots"),
        pytest.param("dir/", 'attachment; filename="download"', id="trailing-slash"),
        pytest.param(
            "résumé.txt",
            "attachment; filename=\"r_sum_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt",
            id="non-ascii",
        ),
        pytest.param(
            "日本.txt",
            "attachment; filename=\"__.txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt",
            id="cjk",
        ),
    ],
)
async def test_get_filename_is_quoted_and_sanitised(
    handler: TusHandler, filename: str, disposition: str
) -> None:
    """Content-Disposition carries a quoted, sanitised filename; non-ASCII adds filename*."""
    upload_id = await finished(handler, meta=metadata(filename=filename))
    response = await get(handler, upload_id)
    value = response.headers["Content-Disposition"]
    assert value == disposition
    assert "\r" not in value and "\n" not in value
    assert value.isascii()


async def test_get_filename_is_truncated(handler: TusHandler) -> None:
    """A very long filename is cut to a bounded length."""
    upload_id = await finished(handler, meta=metadata(filename="x" * 1000 + ".txt"))
    response = await get(handler, upload_id)
    name = response.headers["Content-Disposition"].split('filename="', 1)[1].rstrip('"')
    assert 0 < len(name) <= 200


@pytest.mark.parametrize(
    ("range_header", "status", "content_range", "data"),
    [
        pytest.param("bytes=2-4", 206, "bytes 2-4/10", b"234", id="middle"),
        pytest.param("bytes=0-0", 206, "bytes 0-0/10", b"0", id="first-byte"),
        pytest.param("bytes=5-", 206, "bytes 5-9/10", b"56789", id="open-end"),
        pytest.param("bytes=8-100", 206, "bytes 8-9/10", b"89", id="end-clipped"),
        pytest.param("bytes=9-9", 206, "bytes 9-9/10", b"9", id="last-byte"),
        pytest.param("bytes=-3", 206, "bytes 7-9/10", b"789", id="suffix"),
        pytest.param("bytes=-10", 206, "bytes 0-9/10", b"0123456789", id="suffix-whole"),
        pytest.param("bytes=-50", 206, "bytes 0-9/10", b"0123456789", id="suffix-longer"),
        pytest.param("bytes=10-", 416, "bytes */10", None, id="start-at-size"),
        pytest.param("bytes=20-30", 416, "bytes */10", None, id="beyond"),
        pytest.param("bytes=5-2", 416, "bytes */10", None, id="reversed"),
        pytest.param("bytes=-0", 416, "bytes */10", None, id="empty-suffix"),
        pytest.param("bytes=0-1,4-5", 200, None, DATA, id="multi-range-gets-whole"),
        pytest.param("items=0-1", 200, None, DATA, id="other-unit"),
        pytest.param("bytes=-", 200, None, DATA, id="no-numbers"),
    ],
)
async def test_get_byte_ranges(
    handler: TusHandler,
    range_header: str,
    status: int,
    content_range: str | None,
    data: bytes | None,
) -> None:
    """Range: 206 with Content-Range (suffix ranges too); unsatisfiable 416 with bytes */size."""
    upload_id = await finished(handler)
    response = await get(handler, upload_id, Range=range_header)
    assert response.status == status
    assert response.headers.get("Content-Range") == content_range
    if data is None:
        assert response.stream is None
    else:
        assert await read_all(response) == data
        assert response.headers["Content-Length"] == str(len(data))


async def test_get_range_on_empty_upload_is_416(handler: TusHandler) -> None:
    """No byte range can be satisfied on an empty upload."""
    upload_id = await finished(handler, b"")
    response = await get(handler, upload_id, Range="bytes=-5")
    assert response.status == 416
    assert response.headers["Content-Range"] == "bytes */0"


@pytest.mark.parametrize(
    ("length", "written", "deferred"),
    [
        pytest.param(10, 0, False, id="nothing-written"),
        pytest.param(10, 9, False, id="one-byte-short"),
        pytest.param(None, 3, True, id="deferred"),
    ],
)
async def test_get_unfinished_upload_is_404(
    handler: TusHandler, length: int | None, written: int, deferred: bool
) -> None:
    """An upload that is not finished cannot be downloaded."""
    if deferred:
        upload_id = await create(handler, None)
        await handler.handle(make_request("PATCH", upload_id, patch_headers(0), DATA[:written]))
    else:
        upload_id = await finished(handler, DATA[: length or 0], written=written)
    response = await get(handler, upload_id)
    assert response.status == 404
    assert response.stream is None
    assert "Content-Disposition" not in response.headers


@pytest.mark.parametrize(
    "upload_id",
    [UNKNOWN_ID, "../etc/passwd", f"{UNKNOWN_ID}.json"],
)
async def test_get_unknown_upload_is_404(handler: TusHandler, upload_id: str) -> None:
    """GET of an unknown or malformed id is 404."""
    response = await get(handler, upload_id)
    assert response.status == 404
    assert response.stream is None
