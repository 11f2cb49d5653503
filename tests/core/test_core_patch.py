"""PATCH on the core handler: offsets, lengths, completion and interrupted bodies."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import OCTET, TUS, patch_headers, stored_files
from core_helpers import (
    UNKNOWN_ID,
    body_of,
    chunked_request,
    create,
    dropping_body,
    head,
    id_of,
    make_handler,
    make_request,
    offset_of,
    patch,
    post,
    streamed_request,
    with_settings,
)

from flask_tus import HookRejected
from flask_tus.core import HookEvent, TusHandler
from flask_tus.storage import local as local_storage
from flask_tus.storage.local import LocalStorage


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"Content-Type": "text/plain"}, 415, id="text-plain"),
        pytest.param({"Content-Type": "application/octet-stream"}, 415, id="octet-stream"),
        pytest.param({"Content-Type": ""}, 415, id="empty-type"),
        pytest.param({"Content-Type": None}, 415, id="no-type"),
        pytest.param({"Upload-Offset": None}, 400, id="no-offset"),
        pytest.param({"Upload-Offset": ""}, 400, id="empty-offset"),
        pytest.param({"Upload-Offset": "-1"}, 400, id="negative-offset"),
        pytest.param({"Upload-Offset": "abc"}, 400, id="letters-offset"),
        pytest.param({"Upload-Offset": "1.0"}, 400, id="fraction-offset"),
        pytest.param({"Upload-Offset": "+0"}, 400, id="signed-offset"),
        pytest.param({"Upload-Offset": "3"}, 409, id="offset-ahead"),
        pytest.param({"Upload-Offset": "0"}, 409, id="offset-behind"),
        pytest.param({"Upload-Length": "12"}, 400, id="length-changed"),
        pytest.param({"Upload-Length": "x"}, 400, id="length-invalid"),
        pytest.param({"Tus-Resumable": None}, 412, id="no-version"),
        pytest.param({"Tus-Resumable": "0.2.2"}, 412, id="old-version"),
    ],
)
async def test_patch_refusals_change_nothing(
    handler: TusHandler, upload_dir: Path, headers: dict[str, str | None], status: int
) -> None:
    """Refused PATCHes (415, 400, 409, 412) leave the offset and the stored bytes as they were."""
    upload_id = await create(handler, 10)
    assert (await patch(handler, upload_id, 0, b"ab")).status == 204
    before = stored_files(upload_dir)

    sent: dict[str, str] = {}
    for name, value in {**patch_headers(2), **headers}.items():
        if value is not None:
            sent[name] = value
    response = await handler.handle(make_request("PATCH", upload_id, sent, b"cdef"))
    assert response.status == status, response.body
    assert "Upload-Offset" not in response.headers
    assert response.body.strip()
    if status == 412:
        assert response.headers["Tus-Version"] == "1.0.0"
    assert stored_files(upload_dir) == before
    assert await offset_of(handler, upload_id) == 2


@pytest.mark.parametrize(
    ("length", "chunks", "offsets"),
    [
        pytest.param(10, [b"hello", b"world"], [5, 10], id="two-chunks"),
        pytest.param(10, [b"0123456789"], [10], id="one-chunk"),
        pytest.param(3, [b"a", b"b", b"c"], [1, 2, 3], id="byte-by-byte"),
        pytest.param(10, [b"abc", b"", b"def"], [3, 3, 6], id="empty-chunk"),
    ],
)
async def test_patch_stores_bytes_and_returns_new_offset(
    handler: TusHandler, upload_dir: Path, length: int, chunks: list[bytes], offsets: list[int]
) -> None:
    """Bytes are stored at the offset; 204 with the new Upload-Offset."""
    upload_id = await create(handler, length)
    offset = 0
    for chunk, expected in zip(chunks, offsets, strict=True):
        response = await patch(handler, upload_id, offset, chunk)
        assert response.status == 204, response.body
        assert response.body == b""
        assert response.headers["Upload-Offset"] == str(expected)
        assert response.headers["Tus-Resumable"] == "1.0.0"
        offset = expected
    assert (upload_dir / upload_id).read_bytes() == b"".join(chunks)
    assert await offset_of(handler, upload_id) == offsets[-1]


async def test_patch_upload_expires_until_finished(handler: TusHandler) -> None:
    """Upload-Expires comes on every PATCH response of an unfinished upload."""
    handler.clock = lambda: datetime(2014, 6, 24, 16, 0, tzinfo=UTC)
    upload_id = await create(handler, 4)
    response = await patch(handler, upload_id, 0, b"ab")
    assert response.headers["Upload-Expires"] == "Wed, 25 Jun 2014 16:00:00 GMT"
    response = await patch(handler, upload_id, 2, b"cd")
    assert response.status == 204
    assert "Upload-Expires" not in response.headers


async def test_patch_conflict_keeps_bytes(handler: TusHandler, upload_dir: Path) -> None:
    """409: Upload-Offset differs from the stored offset and nothing is written."""
    upload_id = await create(handler, 10)
    await patch(handler, upload_id, 0, b"hello")
    response = await patch(handler, upload_id, 0, b"HELLO")
    assert response.status == 409
    assert (upload_dir / upload_id).read_bytes() == b"hello"
    assert await offset_of(handler, upload_id) == 5


@pytest.mark.parametrize(
    ("first", "second", "content_length"),
    [
        pytest.param(b"", b"01234567890", 11, id="announced-past-length"),
        pytest.param(b"hello", b"world!", 6, id="announced-past-rest"),
        pytest.param(b"", b"01234567890", 5, id="content-length-lies"),
        pytest.param(b"hello", b"world!", 5, id="rest-with-lying-length"),
    ],
)
async def test_patch_past_length_is_413(
    handler: TusHandler, upload_dir: Path, first: bytes, second: bytes, content_length: int
) -> None:
    """A body that would pass Upload-Length is 413 and nothing past the length is written."""
    upload_id = await create(handler, 10)
    if first:
        await patch(handler, upload_id, 0, first)
    request = make_request("PATCH", upload_id, patch_headers(len(first)), second)
    request.content_length = content_length
    response = await handler.handle(request)
    assert response.status == 413
    assert (upload_dir / upload_id).read_bytes() == first
    assert await offset_of(handler, upload_id) == len(first)


@pytest.mark.parametrize(
    ("first", "pieces"),
    [
        pytest.param(b"", [b"01234", b"56789", b"X"], id="from-start"),
        pytest.param(b"hello", [b"wor", b"ld!"], id="from-middle"),
        pytest.param(b"", [b"0123456789A"], id="single-piece"),
    ],
)
async def test_patch_chunked_past_length_is_413(
    handler: TusHandler, upload_dir: Path, first: bytes, pieces: list[bytes]
) -> None:
    """A chunked body (no Content-Length) that passes Upload-Length is 413; nothing kept."""
    upload_id = await create(handler, 10)
    if first:
        await patch(handler, upload_id, 0, first)
    response = await handler.handle(
        chunked_request("PATCH", upload_id, patch_headers(len(first)), *pieces)
    )
    assert response.status == 413
    assert (upload_dir / upload_id).read_bytes() == first
    assert await offset_of(handler, upload_id) == len(first)


async def test_patch_chunked_within_length(handler: TusHandler, upload_dir: Path) -> None:
    """A chunked body that fits is stored whole."""
    upload_id = await create(handler, 10)
    response = await handler.handle(
        chunked_request("PATCH", upload_id, patch_headers(0), b"abc", b"defg")
    )
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "7"
    assert (upload_dir / upload_id).read_bytes() == b"abcdefg"


async def test_patch_deferred_length_set_once(handler: TusHandler) -> None:
    """A deferred upload takes Upload-Length on a PATCH; once set it never changes."""
    upload_id = await create(handler, None)
    response = await patch(handler, upload_id, 0, b"abc")
    assert response.status == 204
    state = await head(handler, upload_id)
    assert state.headers["Upload-Defer-Length"] == "1"

    response = await patch(handler, upload_id, 3, b"de", **{"Upload-Length": "8"})
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "5"
    state = await head(handler, upload_id)
    assert state.headers["Upload-Length"] == "8"
    assert "Upload-Defer-Length" not in state.headers

    changed = await patch(handler, upload_id, 5, b"f", **{"Upload-Length": "9"})
    assert changed.status == 400
    same = await patch(handler, upload_id, 5, b"f", **{"Upload-Length": "8"})
    assert same.status == 204
    too_long = await patch(handler, upload_id, 6, b"ghi")
    assert too_long.status == 413
    state = await head(handler, upload_id)
    assert state.headers["Upload-Length"] == "8"
    assert state.headers["Upload-Offset"] == "6"


async def test_patch_deferred_length_without_body(handler: TusHandler) -> None:
    """Upload-Length may be declared on an empty PATCH."""
    upload_id = await create(handler, None)
    await patch(handler, upload_id, 0, b"abc")
    response = await patch(handler, upload_id, 3, b"", **{"Upload-Length": "5"})
    assert response.status == 204
    state = await head(handler, upload_id)
    assert state.headers["Upload-Length"] == "5"


@pytest.mark.parametrize(
    ("length", "status"),
    [
        pytest.param("2", 400, id="below-offset"),
        pytest.param(str(2**32 + 1), 413, id="over-max"),
        pytest.param("-3", 400, id="negative"),
    ],
)
async def test_patch_deferred_length_refused(
    handler: TusHandler, upload_dir: Path, length: str, status: int
) -> None:
    """A declared length below the offset (400) or above the maximum (413) is refused."""
    upload_id = await create(handler, None)
    await patch(handler, upload_id, 0, b"abc")
    response = await patch(handler, upload_id, 3, b"d", **{"Upload-Length": length})
    assert response.status == status
    assert (upload_dir / upload_id).read_bytes() == b"abc"
    state = await head(handler, upload_id)
    assert state.headers["Upload-Defer-Length"] == "1"


async def test_patch_deferred_chunked_past_max_size_is_413(
    handler: TusHandler, upload_dir: Path
) -> None:
    """While the length is deferred, the server's maximum size bounds the body."""
    with_settings(handler, max_size=8)
    upload_id = await create(handler, None)
    response = await handler.handle(
        chunked_request("PATCH", upload_id, patch_headers(0), b"12345", b"6789")
    )
    assert response.status == 413
    assert (upload_dir / upload_id).read_bytes() == b""
    announced = await patch(handler, upload_id, 0, b"123456789")
    assert announced.status == 413
    fits = await patch(handler, upload_id, 0, b"12345678")
    assert fits.status == 204


async def test_patch_completion_fires_on_complete_once(handler: TusHandler) -> None:
    """Reaching Upload-Length finishes the upload exactly once."""
    completed: list[HookEvent] = []
    handler.hooks.add("on_complete", completed.append)
    upload_id = await create(handler, 6)
    assert (await patch(handler, upload_id, 0, b"abc")).status == 204
    assert completed == []
    assert (await patch(handler, upload_id, 3, b"def")).status == 204
    assert [event.upload.id for event in completed] == [upload_id]
    assert completed[0].upload.offset == 6
    assert completed[0].upload.is_complete

    # Later requests on the finished upload never fire it again.
    assert (await patch(handler, upload_id, 6, b"")).status == 204
    assert (await patch(handler, upload_id, 6, b"g")).status == 413
    assert (await patch(handler, upload_id, 3, b"def")).status == 409
    await head(handler, upload_id)
    assert len(completed) == 1


async def test_patch_completion_of_deferred_upload_fires_once(handler: TusHandler) -> None:
    """A deferred upload finishes when the bytes reach the length declared later."""
    completed: list[str] = []
    handler.hooks.add("on_complete", lambda event: completed.append(event.upload.id))
    upload_id = await create(handler, None)
    await patch(handler, upload_id, 0, b"abc")
    assert completed == []
    await patch(handler, upload_id, 3, b"de", **{"Upload-Length": "5"})
    assert completed == [upload_id]


async def test_patch_async_complete_hook_and_failing_hook(handler: TusHandler) -> None:
    """A coroutine hook is awaited; a failing post-hook does not turn the 204 into an error."""
    seen: list[str] = []

    async def record(event: HookEvent) -> None:
        seen.append(event.upload.id)

    def explode(event: HookEvent) -> None:
        raise RuntimeError("hook failure")

    handler.hooks.add("on_complete", explode)
    handler.hooks.add("on_complete", record)
    upload_id = await create(handler, 2)
    response = await patch(handler, upload_id, 0, b"ok")
    assert response.status == 204
    assert seen == [upload_id]


async def test_patch_pre_save_rejection_keeps_everything(
    handler: TusHandler, upload_dir: Path
) -> None:
    """A pre_save hook refusing the chunk leaves the bytes and the offset unchanged."""
    upload_id = await create(handler, 10)
    await patch(handler, upload_id, 0, b"ab")

    def refuse(event: HookEvent) -> None:
        raise HookRejected("no more", status=403)

    handler.hooks.add("pre_save", refuse)
    response = await patch(handler, upload_id, 2, b"cd")
    assert response.status == 403
    assert (upload_dir / upload_id).read_bytes() == b"ab"
    assert await offset_of(handler, upload_id) == 2


@pytest.mark.parametrize(
    ("body", "content_length", "kept"),
    [
        pytest.param((dropping_body, b"hel", b"lo"), 10, b"hello", id="disconnect-announced"),
        pytest.param((dropping_body, b"abc"), None, b"abc", id="disconnect-chunked"),
        pytest.param((dropping_body,), 10, b"", id="disconnect-before-bytes"),
        pytest.param((body_of, b"abcd"), 10, b"abcd", id="ends-early"),
        pytest.param((body_of,), 10, b"", id="ends-before-bytes"),
    ],
)
async def test_patch_disconnect_keeps_what_arrived(
    handler: TusHandler,
    upload_dir: Path,
    body: tuple[Any, ...],
    content_length: int | None,
    kept: bytes,
) -> None:
    """A client that goes away mid-body keeps what arrived; the offset advances by it."""
    upload_id = await create(handler, 10)
    headers = patch_headers(0)
    if content_length is None:
        headers["Transfer-Encoding"] = "chunked"
    request = streamed_request("PATCH", upload_id, headers, body[0](*body[1:]), content_length)
    response = await handler.handle(request)
    assert response.status >= 400  # the client is gone; no 204 for a partial body
    assert (upload_dir / upload_id).read_bytes() == kept
    assert await offset_of(handler, upload_id) == len(kept)
    # The client resumes from the offset it reads back.
    rest = b"0123456789"[len(kept) :]
    resumed = await patch(handler, upload_id, len(kept), rest)
    assert resumed.status == 204
    assert resumed.headers["Upload-Offset"] == "10"
    assert (upload_dir / upload_id).read_bytes() == kept + rest


async def test_patch_disconnect_completing_upload_fires_once(handler: TusHandler) -> None:
    """If every byte arrived before the disconnect was noticed the upload is finished."""
    completed: list[str] = []
    handler.hooks.add("on_complete", lambda event: completed.append(event.upload.id))
    upload_id = await create(handler, 4)
    request = streamed_request("PATCH", upload_id, patch_headers(0), dropping_body(b"abcd"), 4)
    await handler.handle(request)
    assert await offset_of(handler, upload_id) == 4
    assert completed == [upload_id]


async def test_patch_truncates_bytes_past_recorded_offset(
    handler: TusHandler, upload_dir: Path
) -> None:
    """A data file longer than its record (unacknowledged bytes) is cut on the next PATCH."""
    upload_id = await create(handler, 10)
    await patch(handler, upload_id, 0, b"hello")
    with (upload_dir / upload_id).open("ab") as file:
        file.write(b"GARBAGE")
    response = await patch(handler, upload_id, 5, b"wor")
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "8"
    assert (upload_dir / upload_id).read_bytes() == b"hellowor"


async def test_patch_truncates_even_with_empty_body(handler: TusHandler, upload_dir: Path) -> None:
    """An empty PATCH at the recorded offset also drops unacknowledged bytes."""
    upload_id = await create(handler, 10)
    await patch(handler, upload_id, 0, b"hi")
    with (upload_dir / upload_id).open("ab") as file:
        file.write(b"XYZ")
    response = await patch(handler, upload_id, 2, b"")
    assert response.status == 204
    assert (upload_dir / upload_id).read_bytes() == b"hi"


@pytest.mark.parametrize(
    ("upload_id", "status"),
    [
        pytest.param(UNKNOWN_ID, 404, id="unknown"),
        pytest.param("../0123456789abcdef0123456789abcd", 404, id="traversal"),
        pytest.param("not-an-id", 404, id="invalid"),
    ],
)
async def test_patch_unknown_upload(handler: TusHandler, upload_id: str, status: int) -> None:
    """PATCH on an unknown or malformed id: 404 without Upload-Offset."""
    response = await patch(handler, upload_id, 0, b"abc")
    assert response.status == status
    assert "Upload-Offset" not in response.headers


async def test_patch_expired_upload_is_410(handler: TusHandler, upload_dir: Path) -> None:
    """PATCH on an expired upload: 410 and nothing written."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    handler.clock = lambda: start
    upload_id = await create(handler, 10)
    handler.clock = lambda: start + timedelta(days=1, seconds=1)
    response = await patch(handler, upload_id, 0, b"abc")
    assert response.status == 410
    assert (upload_dir / upload_id).read_bytes() == b""


async def test_patch_on_final_upload_is_403(handler: TusHandler, upload_dir: Path) -> None:
    """A final (concatenated) upload cannot be patched."""
    part = await create(handler, 2, **{"Upload-Concat": "partial"})
    await patch(handler, part, 0, b"ab")
    final = await post(handler, **{"Upload-Concat": f"final;/files/{part}"})
    assert final.status == 201
    final_id = id_of(final)
    before = stored_files(upload_dir)
    response = await patch(handler, final_id, 2, b"cd")
    assert response.status == 403
    assert stored_files(upload_dir) == before


async def test_patch_content_type_parameters_accepted(handler: TusHandler) -> None:
    """The media type is compared without parameters or case."""
    upload_id = await create(handler, 10)
    response = await handler.handle(
        make_request(
            "PATCH",
            upload_id,
            {**TUS, "Upload-Offset": "0", "Content-Type": OCTET.upper() + "; charset=binary"},
            b"abc",
        )
    )
    assert response.status == 204


# ---------------------------------------------------------------------- a full disk


def fail_writes(monkeypatch: pytest.MonkeyPatch, error: int, after: int) -> list[int]:
    """Make the data file's ``os.write`` fail with ``error`` once ``after`` writes succeeded
    (the first failing call writes half of what it was given first, as a full disk may);
    returns the sizes the successful writes took."""
    real_write = os.write
    took: list[int] = []

    def write(fd: int, data: Any) -> int:
        if len(took) >= after:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(error, os.strerror(error))
        took.append(real_write(fd, data))
        return took[-1]

    monkeypatch.setattr(local_storage.os, "write", write)
    return took


@pytest.mark.parametrize(
    ("error", "status"), [(errno.ENOSPC, 507), (errno.EDQUOT, 507), (errno.EIO, 500)]
)
async def test_patch_whose_storage_fails_midway_keeps_what_was_written(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch, error: int, status: int
) -> None:
    """A write that fails mid-body (a full disk, a quota, an I/O error) keeps what was written
    in full before it, like a client that dropped: the offset advances by it and the client
    resumes from HEAD once there is room. A full disk or quota answers 507, other errors 500;
    the half-written piece is never counted and is cut off by the next PATCH."""
    handler = make_handler(upload_dir, LocalStorage(upload_dir, chunk_size=4, fsync=True))
    data = b"0123456789abcdef"
    upload_id = await create(handler, len(data))
    took = fail_writes(monkeypatch, error, after=2)
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(local_storage.os, "fsync", fsync)
    pieces = [data[i : i + 2] for i in range(0, len(data), 2)]
    request = streamed_request("PATCH", upload_id, patch_headers(0), body_of(*pieces), len(data))
    response = await handler.handle(request)
    assert response.status == status
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert took == [4, 4]
    # What was kept was synced (the salvage syncs the data file once).
    assert synced == [(upload_dir / upload_id).stat().st_ino]
    assert await offset_of(handler, upload_id) == 8
    monkeypatch.undo()
    resumed = await patch(handler, upload_id, 8, data[8:])
    assert resumed.status == 204
    assert (upload_dir / upload_id).read_bytes() == data


async def test_patch_with_checksum_whose_storage_fails_keeps_nothing(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body with ``Upload-Checksum`` is all or nothing: a full disk midway keeps none of it
    (507) and the offset stays."""
    handler = make_handler(upload_dir, LocalStorage(upload_dir, chunk_size=4, fsync=False))
    data = b"0123456789abcdef"
    upload_id = await create(handler, len(data))
    fail_writes(monkeypatch, errno.ENOSPC, after=2)
    digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
    headers = patch_headers(0, **{"Upload-Checksum": f"sha1 {digest}"})
    pieces = [data[i : i + 2] for i in range(0, len(data), 2)]
    response = await handler.handle(
        streamed_request("PATCH", upload_id, headers, body_of(*pieces), len(data))
    )
    assert response.status == 507
    monkeypatch.undo()
    assert await offset_of(handler, upload_id) == 0


async def test_patch_whose_last_write_fails_is_507_and_keeps_the_offset(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that fits one buffer is written by the final flush; when the disk is full then,
    the PATCH answers 507 and the offset stays where it was."""
    handler = make_handler(upload_dir, LocalStorage(upload_dir, fsync=False))
    upload_id = await create(handler, 10)
    fail_writes(monkeypatch, errno.ENOSPC, after=0)
    response = await patch(handler, upload_id, 0, b"01234")
    assert response.status == 507
    monkeypatch.undo()
    assert await offset_of(handler, upload_id) == 0
    assert (await patch(handler, upload_id, 0, b"0123456789")).status == 204
    assert (upload_dir / upload_id).read_bytes() == b"0123456789"


@pytest.mark.parametrize("step", ["salvage-sync", "commit"])
async def test_patch_without_room_to_save_what_was_written_is_507(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """When the disk is so full that saving what was written fails too (its sync, or the
    record's new line, which shares the disk), the PATCH still answers 507 and the offset
    stays: nothing is counted that was not saved."""
    handler = make_handler(upload_dir, LocalStorage(upload_dir, chunk_size=4, fsync=True))
    data = b"0123456789abcdef"
    upload_id = await create(handler, len(data))
    fail_writes(monkeypatch, errno.ENOSPC, after=2)
    no_room = OSError(errno.ENOSPC, "No space left on device")
    if step == "salvage-sync":

        def failing_fsync(fd: int) -> None:
            raise no_room

        monkeypatch.setattr(local_storage.os, "fsync", failing_fsync)
    else:

        async def failing_commit(*args: Any, **kwargs: Any) -> None:
            raise no_room

        monkeypatch.setattr(handler.store, "commit", failing_commit)
    pieces = [data[i : i + 2] for i in range(0, len(data), 2)]
    request = streamed_request("PATCH", upload_id, patch_headers(0), body_of(*pieces), len(data))
    assert (await handler.handle(request)).status == 507
    monkeypatch.undo()
    assert await offset_of(handler, upload_id) == 0
    assert (await patch(handler, upload_id, 0, data)).status == 204
    assert (upload_dir / upload_id).read_bytes() == data
