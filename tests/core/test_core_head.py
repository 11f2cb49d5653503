"""HEAD on the core handler: the state of an upload, expiry and unknown ids."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from conftest import metadata
from core_helpers import UNKNOWN_ID, create, create_with, head, make_request, with_settings, write

from flask_tus.core import TusHandler

CREATED_AT = datetime(2014, 6, 24, 16, 0, tzinfo=UTC)
HTTP_DATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT"
)


@pytest.mark.parametrize(
    ("creation", "written", "expected", "absent"),
    [
        pytest.param(
            {"Upload-Length": "10"},
            b"",
            {"Upload-Offset": "0", "Upload-Length": "10"},
            ["Upload-Defer-Length", "Upload-Metadata", "Upload-Concat"],
            id="new",
        ),
        pytest.param(
            {"Upload-Length": "10"},
            b"abcd",
            {"Upload-Offset": "4", "Upload-Length": "10"},
            ["Upload-Defer-Length"],
            id="in-progress",
        ),
        pytest.param(
            {"Upload-Defer-Length": "1"},
            b"abc",
            {"Upload-Offset": "3", "Upload-Defer-Length": "1"},
            ["Upload-Length"],
            id="deferred",
        ),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": metadata(filename="world.txt")},
            b"",
            {"Upload-Metadata": metadata(filename="world.txt")},
            [],
            id="metadata",
        ),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": "b Yg==, a YQ==,flag"},
            b"",
            {"Upload-Metadata": "b Yg==, a YQ==,flag"},
            [],
            id="metadata-verbatim",
        ),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": "name 8J+Ygg=="},
            b"",
            {"Upload-Metadata": "name 8J+Ygg=="},
            [],
            id="metadata-non-ascii-value",
        ),
        pytest.param(
            {"Upload-Length": "3"},
            b"abc",
            {"Upload-Offset": "3", "Upload-Length": "3"},
            ["Upload-Expires"],
            id="finished-no-expiry",
        ),
    ],
)
async def test_head_reports_state(
    handler: TusHandler,
    creation: dict[str, str],
    written: bytes,
    expected: dict[str, str],
    absent: list[str],
) -> None:
    """HEAD: 200 with offset, length or defer flag, metadata exactly as received, no-store."""
    upload_id = await create_with(handler, **creation)
    if written:
        await write(handler, upload_id, 0, written)
    response = await head(handler, upload_id)
    assert response.status == 200
    assert response.body == b""
    assert response.stream is None
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert "Content-Type" not in response.headers
    for name, value in expected.items():
        assert response.headers[name] == value
    for name in absent:
        assert name not in response.headers


async def test_head_upload_expires_format(handler: TusHandler) -> None:
    """Upload-Expires is an IMF-fixdate: creation time plus the expiration setting."""
    handler.clock = lambda: CREATED_AT
    upload_id = await create(handler, 10)
    response = await head(handler, upload_id)
    assert response.headers["Upload-Expires"] == "Wed, 25 Jun 2014 16:00:00 GMT"


async def test_head_upload_expires_converted_to_gmt(handler: TusHandler) -> None:
    """A clock in another zone still yields a GMT date."""
    with_settings(handler, expiration=timedelta(hours=2))
    handler.clock = lambda: datetime(2024, 3, 1, 4, 30, tzinfo=timezone(timedelta(hours=5)))
    upload_id = await create(handler, 10)
    response = await head(handler, upload_id)
    assert response.headers["Upload-Expires"] == "Fri, 01 Mar 2024 01:30:00 GMT"
    assert HTTP_DATE.fullmatch(response.headers["Upload-Expires"])


async def test_head_no_expiry_when_expiration_disabled(handler: TusHandler) -> None:
    """Without an expiration setting no Upload-Expires is sent."""
    with_settings(handler, expiration=None)
    upload_id = await create(handler, 10)
    response = await head(handler, upload_id)
    assert response.status == 200
    assert "Upload-Expires" not in response.headers


@pytest.mark.parametrize(
    "upload_id",
    [
        pytest.param(UNKNOWN_ID, id="unknown"),
        pytest.param("0123456789ABCDEF0123456789ABCDEF", id="uppercase"),
        pytest.param("0123456789abcdef", id="short"),
        pytest.param("0123456789abcdef0123456789abcdef0", id="long"),
        pytest.param("../../etc/passwd", id="traversal"),
        pytest.param("0123456789abcdef0123456789abcdeg", id="non-hex"),
        pytest.param("", id="empty"),
        pytest.param(".records.lock", id="dotfile"),
    ],
)
async def test_head_unknown_or_invalid_id_is_404(handler: TusHandler, upload_id: str) -> None:
    """Unknown or malformed id: 404 without Upload-Offset and without a body."""
    response = await head(handler, upload_id)
    assert response.status == 404
    assert "Upload-Offset" not in response.headers
    assert response.body == b""
    assert response.headers["Tus-Resumable"] == "1.0.0"


@pytest.mark.parametrize(
    ("later", "expire_completed", "finished", "status"),
    [
        pytest.param(timedelta(hours=23), False, False, 200, id="before-expiry"),
        pytest.param(timedelta(days=1), False, False, 410, id="at-expiry"),
        pytest.param(timedelta(days=2), False, False, 410, id="after-expiry"),
        pytest.param(timedelta(days=2), False, True, 200, id="finished-kept"),
        pytest.param(timedelta(days=2), True, True, 410, id="finished-expires-when-configured"),
    ],
)
async def test_head_expired_is_410(
    handler: TusHandler,
    later: timedelta,
    expire_completed: bool,
    finished: bool,
    status: int,
) -> None:
    """An expired upload answers 410 without Upload-Offset; finished ones only if configured."""
    with_settings(handler, expire_completed=expire_completed)
    handler.clock = lambda: CREATED_AT
    upload_id = await create(handler, 3)
    if finished:
        await write(handler, upload_id, 0, b"abc")
    handler.clock = lambda: CREATED_AT + later
    response = await head(handler, upload_id)
    assert response.status == status
    if status == 410:
        assert "Upload-Offset" not in response.headers
        assert response.body == b""
    else:
        assert response.headers["Upload-Offset"] == ("3" if finished else "0")


@pytest.mark.parametrize(
    "headers",
    [pytest.param({}, id="missing"), pytest.param({"Tus-Resumable": "0.2.2"}, id="old")],
)
async def test_head_without_supported_version_is_412(
    handler: TusHandler, headers: dict[str, str]
) -> None:
    """HEAD without a supported Tus-Resumable: 412 with Tus-Version, no upload state."""
    upload_id = await create(handler, 10)
    response = await handler.handle(make_request("HEAD", upload_id, headers))
    assert response.status == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert "Upload-Offset" not in response.headers
    assert response.body == b""
