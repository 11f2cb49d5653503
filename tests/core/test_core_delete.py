"""DELETE on the core handler: the termination extension."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import TUS, patch_headers, stored_files
from core_helpers import UNKNOWN_ID, create, head, make_request

from flask_tus import HookRejected
from flask_tus.core import HookEvent, TusHandler, TusResponse


async def delete(handler: TusHandler, upload_id: str, headers: dict[str, str] = TUS) -> TusResponse:
    return await handler.handle(make_request("DELETE", upload_id, headers))


def files_of(upload_dir: Path, upload_id: str) -> list[str]:
    """Every file belonging to ``upload_id`` (data, record, lock)."""
    return sorted(p.name for p in upload_dir.iterdir() if upload_id in p.name)


@pytest.mark.parametrize(
    ("length", "data"),
    [
        pytest.param(10, b"", id="empty"),
        pytest.param(10, b"abcd", id="in-progress"),
        pytest.param(4, b"abcd", id="finished"),
        pytest.param(0, b"", id="zero-length"),
    ],
)
async def test_delete_removes_data_and_record(
    handler: TusHandler, upload_dir: Path, length: int, data: bytes
) -> None:
    """DELETE: 204, then the upload is gone (404) with its data and record both removed."""
    upload_id = await create(handler, length, data)
    assert files_of(upload_dir, upload_id) == [upload_id, f"{upload_id}.json"]
    response = await delete(handler, upload_id)
    assert response.status == 204
    assert response.body == b""
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert files_of(upload_dir, upload_id) == []

    for method, headers in [
        ("HEAD", TUS),
        ("PATCH", patch_headers(len(data))),
        ("DELETE", TUS),
        ("GET", {}),
    ]:
        after = await handler.handle(make_request(method, upload_id, headers))
        assert after.status == 404, method
        assert "Upload-Offset" not in after.headers


async def test_delete_leaves_other_uploads(handler: TusHandler, upload_dir: Path) -> None:
    """Only the named upload is removed."""
    keep = await create(handler, 10, b"keep")
    gone = await create(handler, 10, b"gone")
    before = {k: v for k, v in stored_files(upload_dir).items() if keep in k}
    assert (await delete(handler, gone)).status == 204
    assert {k: v for k, v in stored_files(upload_dir).items() if keep in k} == before
    state = await head(handler, keep)
    assert state.headers["Upload-Offset"] == "4"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        pytest.param(403, "not yours", id="forbidden"),
        pytest.param(409, "in use", id="conflict"),
        pytest.param(400, None, id="default-message"),
    ],
)
async def test_delete_pre_delete_rejection_keeps_everything(
    handler: TusHandler, upload_dir: Path, status: int, message: str | None
) -> None:
    """A pre_delete hook raising HookRejected refuses the DELETE; nothing is removed."""
    seen: list[HookEvent] = []
    post: list[HookEvent] = []

    def refuse(event: HookEvent) -> None:
        seen.append(event)
        raise HookRejected(message, status=status)

    handler.hooks.add("pre_delete", refuse)
    handler.hooks.add("post_delete", post.append)
    upload_id = await create(handler, 10, b"abc")
    before = stored_files(upload_dir)
    response = await delete(handler, upload_id)
    assert response.status == status
    if message is not None:
        assert message in response.body.decode()
    assert [event.upload.id for event in seen] == [upload_id]
    assert post == []
    assert stored_files(upload_dir) == before
    state = await head(handler, upload_id)
    assert state.status == 200
    assert state.headers["Upload-Offset"] == "3"


async def test_delete_post_delete_runs_after_removal(handler: TusHandler, upload_dir: Path) -> None:
    """post_delete runs once, after data and record are gone, with the deleted record."""
    events: list[tuple[HookEvent, list[str]]] = []
    upload_id = await create(handler, 10, b"abc")

    async def after(event: HookEvent) -> None:
        events.append((event, files_of(upload_dir, event.upload.id)))

    handler.hooks.add("post_delete", after)
    assert (await delete(handler, upload_id)).status == 204
    assert len(events) == 1
    event, remaining = events[0]
    assert event.name == "post_delete"
    assert event.upload.id == upload_id
    assert event.upload.offset == 3
    assert event.request.method == "DELETE"
    assert event.request.path == f"/files/{upload_id}"
    assert remaining == []


async def test_delete_failing_post_delete_is_still_204(
    handler: TusHandler, upload_dir: Path
) -> None:
    """A failing post-hook never turns the finished deletion into an error."""

    def explode() -> None:
        raise RuntimeError("post hook failure")

    handler.hooks.add("post_delete", explode)
    upload_id = await create(handler, 10, b"abc")
    assert (await delete(handler, upload_id)).status == 204
    assert files_of(upload_dir, upload_id) == []


@pytest.mark.parametrize(
    ("upload_id", "status"),
    [
        pytest.param(UNKNOWN_ID, 404, id="unknown"),
        pytest.param("..", 404, id="dotdot"),
        pytest.param(f"{UNKNOWN_ID}.json", 404, id="record-name"),
    ],
)
async def test_delete_unknown_or_invalid_id(
    handler: TusHandler, upload_dir: Path, upload_id: str, status: int
) -> None:
    """DELETE of an unknown or malformed id: 404, nothing touched."""
    existing = await create(handler, 10, b"abc")
    before = stored_files(upload_dir)
    response = await delete(handler, upload_id)
    assert response.status == status
    assert stored_files(upload_dir) == before
    assert files_of(upload_dir, existing) == [existing, f"{existing}.json"]


@pytest.mark.parametrize(
    "headers",
    [pytest.param({}, id="missing"), pytest.param({"Tus-Resumable": "2.0.0"}, id="unsupported")],
)
async def test_delete_without_supported_version_is_412(
    handler: TusHandler, upload_dir: Path, headers: dict[str, str]
) -> None:
    """DELETE without a supported Tus-Resumable is 412 and removes nothing."""
    upload_id = await create(handler, 10, b"abc")
    before = stored_files(upload_dir)
    response = await delete(handler, upload_id, headers)
    assert response.status == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert stored_files(upload_dir) == before


async def test_delete_expired_upload_is_removed(handler: TusHandler, upload_dir: Path) -> None:
    """An expired upload can still be terminated (its data and record go away)."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    handler.clock = lambda: start
    upload_id = await create(handler, 10, b"abc")
    handler.clock = lambda: start + timedelta(days=3)
    assert (await head(handler, upload_id)).status == 410
    assert (await delete(handler, upload_id)).status == 204
    assert files_of(upload_dir, upload_id) == []
