"""POST on the core handler: the creation rules (creation, defer-length, creation-with-upload)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import OCTET, TUS, metadata, stored_files
from core_helpers import (
    body_of,
    chunked_request,
    dropping_body,
    head,
    id_of,
    make_request,
    streamed_request,
    with_settings,
)

from flask_tus.core import HookEvent, TusHandler, TusResponse, Upload

LOCATION = re.compile(r"/files/([0-9a-f]{32})")
MAX = 2**32


def upload_id_of(response: TusResponse) -> str:
    match = LOCATION.fullmatch(response.headers["Location"])
    assert match is not None, response.headers["Location"]
    return match.group(1)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"Upload-Length": "10"}, 201, id="length"),
        pytest.param({"Upload-Length": "0"}, 201, id="length-zero"),
        pytest.param({"Upload-Length": str(MAX)}, 201, id="length-at-max"),
        pytest.param({"Upload-Defer-Length": "1"}, 201, id="defer"),
        pytest.param({"Upload-Defer-Length": " 1 "}, 201, id="defer-padded"),
        pytest.param({"Upload-Defer-Length": "0"}, 400, id="defer-zero"),
        pytest.param({"Upload-Defer-Length": "2"}, 400, id="defer-two"),
        pytest.param({"Upload-Defer-Length": "true"}, 400, id="defer-true"),
        pytest.param({"Upload-Defer-Length": ""}, 400, id="defer-empty"),
        pytest.param({"Upload-Length": "10", "Upload-Defer-Length": "1"}, 400, id="both"),
        pytest.param({}, 400, id="neither"),
        pytest.param({"Upload-Length": "-1"}, 400, id="negative"),
        pytest.param({"Upload-Length": "+5"}, 400, id="plus-sign"),
        pytest.param({"Upload-Length": "1.5"}, 400, id="fraction"),
        pytest.param({"Upload-Length": "1e3"}, 400, id="exponent"),
        pytest.param({"Upload-Length": "0x10"}, 400, id="hex"),
        pytest.param({"Upload-Length": "1_000"}, 400, id="underscore"),
        pytest.param({"Upload-Length": "abc"}, 400, id="letters"),
        pytest.param({"Upload-Length": ""}, 400, id="empty"),
        pytest.param({"Upload-Length": str(2**64)}, 400, id="beyond-int64"),
        pytest.param({"Upload-Length": str(MAX + 1)}, 413, id="over-max"),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": metadata(filename="a.txt")}, 201, id="meta"
        ),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": metadata(filename="a.txt", secret=None)},
            201,
            id="meta-key-without-value",
        ),
        pytest.param({"Upload-Length": "10", "Upload-Metadata": "k "}, 201, id="meta-empty-value"),
        pytest.param({"Upload-Length": "10", "Upload-Metadata": ""}, 201, id="meta-empty"),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": "a YQ==,a Yg=="}, 400, id="meta-dup"
        ),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": "a YQ==,,b Yg=="}, 400, id="meta-empty-pair"
        ),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": "a b c"}, 400, id="meta-three-parts"
        ),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": "a !!!!"}, 400, id="meta-not-base64"
        ),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": "a YWJ"}, 400, id="meta-bad-padding"
        ),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": "a YQ==YQ=="}, 400, id="meta-inner-pad"
        ),
        pytest.param(
            {"Upload-Length": "10", "Upload-Metadata": "é YQ=="}, 400, id="meta-non-ascii-key"
        ),
    ],
)
async def test_post_creation_rules(
    handler: TusHandler, upload_dir: Path, headers: dict[str, str], status: int
) -> None:
    """Upload-Length / Upload-Defer-Length / Upload-Metadata validation on creation."""
    response = await handler.handle(make_request("POST", None, {**TUS, **headers}))
    assert response.status == status, response.body
    assert response.headers["Tus-Resumable"] == "1.0.0"
    if status == 201:
        upload_id = upload_id_of(response)
        assert (upload_dir / upload_id).read_bytes() == b""
        assert (upload_dir / f"{upload_id}.json").is_file()
    else:
        assert "Location" not in response.headers
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.body.strip()
        # A refused creation leaves nothing behind.
        assert [name for name in stored_files(upload_dir) if not name.startswith(".")] == []


async def test_post_201_carries_relative_location_and_expiry(handler: TusHandler) -> None:
    """201 with a relative Location under the collection path and Upload-Expires."""
    response = await handler.handle(make_request("POST", None, {**TUS, "Upload-Length": "10"}))
    assert response.status == 201
    assert LOCATION.fullmatch(response.headers["Location"])
    assert "Upload-Expires" in response.headers
    assert "Upload-Offset" not in response.headers
    assert response.body == b""


async def test_post_location_uses_collection_path(handler: TusHandler) -> None:
    """Location is built from the collection path the adapter passes in."""
    request = make_request("POST", None, {**TUS, "Upload-Length": "1"})
    request.collection_path = "/api/uploads/"
    response = await handler.handle(request)
    assert re.fullmatch(r"/api/uploads/[0-9a-f]{32}", response.headers["Location"])


async def test_post_ids_are_unique(handler: TusHandler) -> None:
    """Every creation gets a new id."""
    ids = set()
    for _ in range(5):
        response = await handler.handle(make_request("POST", None, {**TUS, "Upload-Length": "1"}))
        ids.add(upload_id_of(response))
    assert len(ids) == 5


PROXY = "10.0.0.0/8"
FORWARDED = {"X-Forwarded-Host": "uploads.example.com", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize(
    ("trusted", "remote_addr", "forwarded", "expected"),
    [
        pytest.param((), "10.1.2.3", FORWARDED, "/files/{id}", id="no-trusted-proxy"),
        pytest.param((PROXY,), "192.0.2.7", FORWARDED, "/files/{id}", id="untrusted-peer"),
        pytest.param((PROXY,), None, FORWARDED, "/files/{id}", id="no-remote-addr"),
        pytest.param((PROXY,), "not-an-ip", FORWARDED, "/files/{id}", id="bad-remote-addr"),
        pytest.param((PROXY,), "10.1.2.3", {}, "/files/{id}", id="trusted-no-forwarded"),
        pytest.param(
            (PROXY,),
            "10.1.2.3",
            FORWARDED,
            "https://uploads.example.com/files/{id}",
            id="trusted",
        ),
        pytest.param(
            (PROXY,),
            "10.1.2.3",
            {"X-Forwarded-Host": "uploads.example.com:8443"},
            "http://uploads.example.com:8443/files/{id}",
            id="trusted-default-proto-with-port",
        ),
        pytest.param(
            (PROXY,),
            "10.1.2.3",
            {"X-Forwarded-Host": "evil.example, b.example", "X-Forwarded-Proto": "http, https"},
            "https://b.example/files/{id}",
            id="trusted-proxy-entry-not-the-clients",
        ),
        pytest.param(
            (PROXY,),
            "10.1.2.3",
            {"X-Forwarded-Host": "evil.example/phish?x=", "X-Forwarded-Proto": "https"},
            "/files/{id}",
            id="trusted-injected-host",
        ),
        pytest.param(
            (PROXY,),
            "10.1.2.3",
            {"X-Forwarded-Host": "uploads.example.com", "X-Forwarded-Proto": "javascript"},
            "http://uploads.example.com/files/{id}",
            id="trusted-bad-proto",
        ),
    ],
)
async def test_post_location_absolute_only_from_trusted_proxy(
    handler: TusHandler,
    trusted: tuple[str, ...],
    remote_addr: str | None,
    forwarded: dict[str, str],
    expected: str,
) -> None:
    """Location is relative unless a trusted proxy forwarded a well-formed host."""
    with_settings(handler, trusted_proxies=tuple(ipaddress.ip_network(n) for n in trusted))
    request = make_request(
        "POST", None, {**TUS, "Upload-Length": "5", **forwarded}, remote_addr=remote_addr
    )
    response = await handler.handle(request)
    assert response.status == 201
    upload_id = id_of(response)
    assert response.headers["Location"] == expected.format(id=upload_id)


async def test_post_zero_length_is_complete_at_once(handler: TusHandler) -> None:
    """Upload-Length: 0 creates a finished upload (on_complete fires, GET serves it)."""
    completed: list[HookEvent] = []
    handler.hooks.add("on_complete", completed.append)
    response = await handler.handle(make_request("POST", None, {**TUS, "Upload-Length": "0"}))
    assert response.status == 201
    upload_id = upload_id_of(response)
    assert [event.upload.id for event in completed] == [upload_id]
    assert completed[0].upload.is_complete

    state = await head(handler, upload_id)
    assert state.status == 200
    assert state.headers["Upload-Offset"] == "0"
    assert state.headers["Upload-Length"] == "0"
    # A finished upload does not expire (expire_completed is off), so no Upload-Expires.
    assert "Upload-Expires" not in state.headers
    download = await handler.handle(make_request("GET", upload_id))
    assert download.status == 200
    assert download.headers["Content-Length"] == "0"


@pytest.mark.parametrize(
    ("headers", "body", "status", "offset", "data"),
    [
        pytest.param({"Upload-Length": "10"}, b"hello", 201, "5", b"hello", id="first-chunk"),
        pytest.param({"Upload-Length": "5"}, b"hello", 201, "5", b"hello", id="whole-upload"),
        pytest.param({"Upload-Defer-Length": "1"}, b"hello", 201, "5", b"hello", id="deferred"),
        pytest.param({"Upload-Length": "4"}, b"hello", 413, None, None, id="past-length"),
        pytest.param({"Upload-Length": "0"}, b"x", 413, None, None, id="zero-length-with-body"),
        pytest.param(
            {"Upload-Defer-Length": "1"}, b"x" * 11, 413, None, None, id="deferred-past-max"
        ),
    ],
)
async def test_post_creation_with_upload(
    handler: TusHandler,
    upload_dir: Path,
    *,
    headers: dict[str, str],
    body: bytes,
    status: int,
    offset: str | None,
    data: bytes | None,
) -> None:
    """creation-with-upload: an octet-stream body is the first chunk; 201 has Upload-Offset.

    A body that would pass the length is refused (413) and leaves no upload behind.
    """
    with_settings(handler, max_size=10)
    response = await handler.handle(
        make_request("POST", None, {**TUS, "Content-Type": OCTET, **headers}, body)
    )
    assert response.status == status, response.body
    assert response.headers.get("Upload-Offset") == offset
    written = [v for k, v in stored_files(upload_dir).items() if re.fullmatch(r"[0-9a-f]{32}", k)]
    if data is not None:
        assert written == [data]
        state = await head(handler, upload_id_of(response))
        assert state.headers["Upload-Offset"] == offset
    else:
        assert "Location" not in response.headers
        assert written == []


@pytest.mark.parametrize(
    ("length", "pieces", "status", "data", "complete"),
    [
        pytest.param("6", [b"abc", b"de"], 201, b"abcde", False, id="fits"),
        pytest.param("5", [b"abc", b"de"], 201, b"abcde", True, id="fills"),
        pytest.param("4", [b"abc", b"de"], 413, None, False, id="past-length"),
        pytest.param("0", [b"a"], 413, None, False, id="zero-length-with-bytes"),
        pytest.param("0", [], 201, b"", True, id="zero-length-empty-body"),
    ],
)
async def test_post_creation_with_upload_chunked(
    handler: TusHandler,
    upload_dir: Path,
    *,
    length: str,
    pieces: list[bytes],
    status: int,
    data: bytes | None,
    complete: bool,
) -> None:
    """A chunked creation body (no Content-Length) is written, or refused whole when too long."""
    completed: list[str] = []
    handler.hooks.add("on_complete", lambda event: completed.append(event.upload.id))
    request = chunked_request(
        "POST", None, {**TUS, "Upload-Length": length, "Content-Type": OCTET}, *pieces
    )
    response = await handler.handle(request)
    assert response.status == status, response.body
    written = [v for k, v in stored_files(upload_dir).items() if re.fullmatch(r"[0-9a-f]{32}", k)]
    if data is None:
        assert written == []
        assert completed == []
        return
    upload_id = upload_id_of(response)
    assert response.headers["Upload-Offset"] == str(len(data))
    assert written == [data]
    assert completed == ([upload_id] if complete else [])


@pytest.mark.parametrize(
    ("body", "content_length"),
    [
        pytest.param((dropping_body, b"hel", b"lo"), 10, id="disconnect-announced"),
        pytest.param((dropping_body, b"abc"), None, id="disconnect-chunked"),
        pytest.param((dropping_body,), 10, id="disconnect-before-bytes"),
        pytest.param((body_of, b"abcd"), 10, id="ends-early"),
    ],
)
async def test_post_creation_body_cut_short_leaves_nothing(
    handler: TusHandler, upload_dir: Path, body: tuple[Any, ...], content_length: int | None
) -> None:
    """A creation body that does not arrive whole gets no 201, so its client never learns the
    upload's URL: no data, no record and no hook beyond on_create are left behind."""
    fired: list[str] = []
    for name in ("pre_save", "post_save", "on_complete"):
        handler.hooks.add(name, lambda event: fired.append(event.name))
    headers = {**TUS, "Upload-Length": "10", "Content-Type": OCTET}
    if content_length is None:
        headers["Transfer-Encoding"] = "chunked"
    before = stored_files(upload_dir)
    request = streamed_request("POST", None, headers, body[0](*body[1:]), content_length)
    response = await handler.handle(request)
    assert response.status == 400, response.body
    assert "Location" not in response.headers
    assert stored_files(upload_dir) == before
    assert fired == ["pre_save"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), TimeoutError()])
async def test_post_whose_record_cannot_be_created_leaves_no_data(
    handler: TusHandler, upload_dir: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """When the store cannot create the record (a full disk, a database that does not answer),
    the POST fails with 500 and the data file made for it just before is removed: nobody
    learnt the upload's URL, and cleanup would only ever report the file."""

    async def failing_create(upload: Upload) -> None:
        raise error

    monkeypatch.setattr(handler.store, "create", failing_create)
    before = stored_files(upload_dir)
    response = await handler.handle(make_request("POST", None, {**TUS, "Upload-Length": "10"}))
    assert response.status == 500
    assert "Location" not in response.headers
    assert stored_files(upload_dir) == before


async def test_post_whose_record_creation_failed_after_writing_keeps_the_data(
    handler: TusHandler, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that wrote the record and then failed (a connection lost at COMMIT) makes the
    POST fail, but the data file stays: the record the store kept must not point at nothing.
    The upload, whose URL nobody got, expires like any other."""
    real_create = handler.store.create

    async def create_then_fail(upload: Upload) -> None:
        await real_create(upload)
        raise TimeoutError()

    monkeypatch.setattr(handler.store, "create", create_then_fail)
    response = await handler.handle(make_request("POST", None, {**TUS, "Upload-Length": "10"}))
    assert response.status == 500
    names = [name for name in stored_files(upload_dir) if not name.startswith(".")]
    records = [name for name in names if name.endswith(".json")]
    assert len(records) == 1
    assert set(names) == {records[0], records[0].removesuffix(".json")}


async def test_post_whose_record_state_is_unknown_keeps_the_data(
    handler: TusHandler, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the store can tell neither way (creating and reading both fail), the data file
    stays for cleanup to report; the POST fails with 500."""

    async def failing(*args: object) -> None:
        raise TimeoutError()

    monkeypatch.setattr(handler.store, "create", failing)
    monkeypatch.setattr(handler.store, "get", failing)
    response = await handler.handle(make_request("POST", None, {**TUS, "Upload-Length": "10"}))
    assert response.status == 500
    names = [name for name in stored_files(upload_dir) if not name.startswith(".")]
    assert len(names) == 1 and not names[0].endswith(".json")


async def test_post_completing_creation_with_upload_fires_on_complete(handler: TusHandler) -> None:
    """A creation body that fills the upload finishes it (on_complete once)."""
    completed: list[str] = []
    handler.hooks.add("on_complete", lambda event: completed.append(event.upload.id))
    response = await handler.handle(
        make_request("POST", None, {**TUS, "Upload-Length": "3", "Content-Type": OCTET}, b"abc")
    )
    assert response.status == 201
    assert completed == [upload_id_of(response)]


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param(None, id="missing"),
        pytest.param("text/plain", id="text"),
        pytest.param("application/octet-stream", id="octet-stream"),
        pytest.param("multipart/form-data; boundary=x", id="multipart"),
    ],
)
async def test_post_body_with_other_content_type_is_415(
    handler: TusHandler, upload_dir: Path, content_type: str | None
) -> None:
    """A creation body that is not application/offset+octet-stream is 415, not dropped."""
    headers = {**TUS, "Upload-Length": "10"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await handler.handle(make_request("POST", None, headers, b"hello"))
    assert response.status == 415
    assert "Location" not in response.headers
    assert [name for name in stored_files(upload_dir) if not name.startswith(".")] == []


async def test_post_octet_content_type_without_body(handler: TusHandler) -> None:
    """An empty body with the octet-stream type is a plain creation (no Upload-Offset)."""
    response = await handler.handle(
        make_request("POST", None, {**TUS, "Upload-Length": "10", "Content-Type": OCTET})
    )
    assert response.status == 201
    assert "Upload-Offset" not in response.headers


@pytest.mark.parametrize(
    ("override", "headers", "body", "status", "expected"),
    [
        pytest.param(
            "HEAD", TUS, b"", 200, {"Upload-Offset": "0", "Upload-Length": "5"}, id="head"
        ),
        pytest.param(
            "PATCH",
            {**TUS, "Upload-Offset": "0", "Content-Type": OCTET},
            b"abc",
            204,
            {"Upload-Offset": "3"},
            id="patch",
        ),
        pytest.param(
            "patch",
            {**TUS, "Upload-Offset": "0", "Content-Type": OCTET},
            b"ab",
            204,
            {"Upload-Offset": "2"},
            id="lowercase",
        ),
        pytest.param("DELETE", TUS, b"", 204, {}, id="delete"),
        pytest.param("PUT", TUS, b"", 405, {}, id="unknown-stays-post"),
    ],
)
async def test_post_method_override(
    handler: TusHandler,
    *,
    override: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    expected: dict[str, str],
) -> None:
    """X-HTTP-Method-Override on a POST replaces the method."""
    created = await handler.handle(make_request("POST", None, {**TUS, "Upload-Length": "5"}))
    upload_id = upload_id_of(created)
    response = await handler.handle(
        make_request("POST", upload_id, {**headers, "X-HTTP-Method-Override": override}, body)
    )
    assert response.status == status, response.body
    for name, value in expected.items():
        assert response.headers[name] == value
    if override == "DELETE":
        assert (await head(handler, upload_id)).status == 404


async def test_post_override_ignored_on_other_methods(handler: TusHandler) -> None:
    """Only a POST is overridden: a PATCH saying HEAD is still a PATCH."""
    created = await handler.handle(make_request("POST", None, {**TUS, "Upload-Length": "5"}))
    upload_id = upload_id_of(created)
    response = await handler.handle(
        make_request(
            "PATCH",
            upload_id,
            {**TUS, "Upload-Offset": "0", "Content-Type": OCTET, "X-HTTP-Method-Override": "HEAD"},
            b"abc",
        )
    )
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "3"


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(None, id="missing"),
        pytest.param("0.2.2", id="old"),
        pytest.param("", id="empty"),
    ],
)
async def test_post_without_supported_version_is_412(
    handler: TusHandler, upload_dir: Path, version: str | None
) -> None:
    """412 with Tus-Version when Tus-Resumable is missing or unsupported; nothing created."""
    headers = {"Upload-Length": "10"}
    if version is not None:
        headers["Tus-Resumable"] = version
    response = await handler.handle(make_request("POST", None, headers))
    assert response.status == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert "Location" not in response.headers
    assert [name for name in stored_files(upload_dir) if not name.startswith(".")] == []


@pytest.mark.parametrize("method", ["GET", "HEAD", "PATCH", "DELETE", "PUT"])
async def test_other_methods_on_collection_are_405(handler: TusHandler, method: str) -> None:
    """The collection URL serves only POST and OPTIONS: 405 with Allow."""
    response = await handler.handle(
        make_request(method, None, {**TUS, "Upload-Offset": "0", "Content-Type": OCTET})
    )
    assert response.status == 405
    assert response.headers["Allow"] == "POST, OPTIONS"


async def test_post_on_upload_url_is_405(handler: TusHandler) -> None:
    """POST is not served on an upload URL (without an override)."""
    created = await handler.handle(make_request("POST", None, {**TUS, "Upload-Length": "5"}))
    response = await handler.handle(make_request("POST", upload_id_of(created), TUS))
    assert response.status == 405
    assert "POST" not in response.headers["Allow"]
