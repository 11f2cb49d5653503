"""Bad input gets a clear error and loses nothing.

Every case sets up an upload with bytes already stored, snapshots the upload directory, sends one
malformed request and checks the status, the short plain-text reason, that every stored file is
byte-identical afterwards and that HEAD still reports the old state. Each malformed header or
value is its own parametrized id, so the report reads as a table. Every test runs on both paths
a request can take: the Flask view (``wsgi``, Flask's test client) and the native ASGI adapter
(``asgi``, ``tus.asgi_app(app)`` through httpx's ASGI transport).
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from asgi_client import AsgiTestClient
from conftest import OCTET, TUS, create, patch_headers, stored_files
from flask import Flask

from flask_tus import FlaskTus

#: Either path's test client: they answer alike (see ``asgi_client.py``).
Client = Any

STORED = b"hello"  # already stored before the bad request
OFFSET = len(STORED)
LENGTH = 10
BODY = b"world"  # fits in the upload: a server that ignored the error would store it
TOO_LONG = b"world!"  # one byte past LENGTH
MAX_REASON = 200
FINAL_NO_LENGTH = {"Upload-Length": None}
CREATE_WITH_BODY = {"Content-Type": OCTET}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SHA1_OF_OTHER = _b64(hashlib.sha1(b"WORLD").digest())
UNKNOWN_ID = "0" * 32


@dataclass(frozen=True)
class Bad:
    """One malformed request against an upload that holds ``STORED``.

    ``headers`` override the method's usual headers (``None`` removes one); ``{id}`` in a value
    becomes the stored upload's id. ``target`` is ``"upload"`` (its URL) or ``"collection"``.
    ``content_length`` replaces the ``Content-Length`` the client would send for the body.
    """

    method: str
    status: int
    headers: Mapping[str, str | None] = field(default_factory=dict)
    body: bytes | None = None
    target: str = "upload"
    deferred: bool = False
    chunked: bool = False
    config: Mapping[str, Any] = field(default_factory=dict)
    expect_headers: Mapping[str, str] = field(default_factory=dict)
    mentions: str | None = None
    content_length: str | None = None


def _base_headers(method: str) -> dict[str, str]:
    if method == "PATCH":
        return patch_headers(OFFSET)
    if method == "POST":
        return {**TUS, "Upload-Length": str(LENGTH)}
    return dict(TUS)


def _default_body(method: str) -> bytes:
    return BODY if method == "PATCH" else b""


V412 = {"Tus-Version": "1.0.0"}

CASES: dict[str, Bad] = {
    # ---------------------------------------------------------------- Tus-Resumable: 412
    "tus-resumable-missing-patch": Bad(
        "PATCH", 412, {"Tus-Resumable": None}, expect_headers=V412, mentions="Tus-Resumable"
    ),
    "tus-resumable-0.2.2-patch": Bad(
        "PATCH", 412, {"Tus-Resumable": "0.2.2"}, expect_headers=V412, mentions="Tus-Resumable"
    ),
    "tus-resumable-garbage-patch": Bad(
        "PATCH", 412, {"Tus-Resumable": "garbage"}, expect_headers=V412, mentions="Tus-Resumable"
    ),
    "tus-resumable-1.0-patch": Bad(
        "PATCH", 412, {"Tus-Resumable": "1.0"}, expect_headers=V412, mentions="Tus-Resumable"
    ),
    "tus-resumable-missing-post": Bad(
        "POST", 412, {"Tus-Resumable": None}, target="collection", expect_headers=V412
    ),
    "tus-resumable-0.2.2-post": Bad(
        "POST", 412, {"Tus-Resumable": "0.2.2"}, target="collection", expect_headers=V412
    ),
    "tus-resumable-garbage-post": Bad(
        "POST", 412, {"Tus-Resumable": "garbage"}, target="collection", expect_headers=V412
    ),
    "tus-resumable-missing-delete": Bad(
        "DELETE", 412, {"Tus-Resumable": None}, expect_headers=V412
    ),
    "tus-resumable-0.2.2-delete": Bad(
        "DELETE", 412, {"Tus-Resumable": "0.2.2"}, expect_headers=V412
    ),
    "tus-resumable-garbage-delete": Bad(
        "DELETE", 412, {"Tus-Resumable": "garbage"}, expect_headers=V412
    ),
    "tus-resumable-missing-head": Bad("HEAD", 412, {"Tus-Resumable": None}, expect_headers=V412),
    # ---------------------------------------------------------------- Upload-Offset: 400
    # "+5", " 5x" and "5.0" name the right offset to a lenient parser: they must still fail.
    "upload-offset-missing": Bad("PATCH", 400, {"Upload-Offset": None}, mentions="Upload-Offset"),
    "upload-offset-negative": Bad("PATCH", 400, {"Upload-Offset": "-5"}, mentions="Upload-Offset"),
    "upload-offset-plus-sign": Bad("PATCH", 400, {"Upload-Offset": "+5"}, mentions="Upload-Offset"),
    "upload-offset-trailing-junk": Bad(
        "PATCH", 400, {"Upload-Offset": " 5x"}, mentions="Upload-Offset"
    ),
    "upload-offset-exponent": Bad("PATCH", 400, {"Upload-Offset": "1e3"}, mentions="Upload-Offset"),
    "upload-offset-hex": Bad("PATCH", 400, {"Upload-Offset": "0x10"}, mentions="Upload-Offset"),
    "upload-offset-decimal-point": Bad(
        "PATCH", 400, {"Upload-Offset": "5.0"}, mentions="Upload-Offset"
    ),
    "upload-offset-underscore": Bad(
        "PATCH", 400, {"Upload-Offset": "0_5"}, mentions="Upload-Offset"
    ),
    "upload-offset-2**63": Bad(
        "PATCH", 400, {"Upload-Offset": str(2**63)}, mentions="Upload-Offset"
    ),
    "upload-offset-2**64": Bad(
        "PATCH", 400, {"Upload-Offset": str(2**64)}, mentions="Upload-Offset"
    ),
    "upload-offset-100-digits": Bad(
        "PATCH", 400, {"Upload-Offset": "9" * 100}, mentions="Upload-Offset"
    ),
    "upload-offset-empty": Bad("PATCH", 400, {"Upload-Offset": ""}, mentions="Upload-Offset"),
    # ---------------------------------------------------------------- Upload-Offset wrong: 409
    "upload-offset-behind": Bad("PATCH", 409, {"Upload-Offset": "4"}, mentions="Upload-Offset"),
    "upload-offset-ahead": Bad("PATCH", 409, {"Upload-Offset": "6"}, mentions="Upload-Offset"),
    "upload-offset-zero": Bad("PATCH", 409, {"Upload-Offset": "0"}, mentions="Upload-Offset"),
    # ---------------------------------------------------------------- Upload-Length on POST
    "post-upload-length-negative": Bad(
        "POST", 400, {"Upload-Length": "-1"}, target="collection", mentions="Upload-Length"
    ),
    "post-upload-length-non-numeric": Bad(
        "POST", 400, {"Upload-Length": "ten"}, target="collection", mentions="Upload-Length"
    ),
    "post-upload-length-2**63": Bad(
        "POST", 400, {"Upload-Length": str(2**63)}, target="collection", mentions="Upload-Length"
    ),
    "post-upload-length-2**64": Bad(
        "POST", 400, {"Upload-Length": str(2**64)}, target="collection", mentions="Upload-Length"
    ),
    "post-upload-length-empty": Bad(
        "POST", 400, {"Upload-Length": ""}, target="collection", mentions="Upload-Length"
    ),
    "post-upload-length-and-defer": Bad(
        "POST",
        400,
        {"Upload-Defer-Length": "1"},
        target="collection",
        mentions="Upload-Defer-Length",
    ),
    "post-no-length-no-defer": Bad(
        "POST", 400, {"Upload-Length": None}, target="collection", mentions="Upload-Length"
    ),
    "post-upload-length-over-default-max": Bad(
        "POST", 413, {"Upload-Length": str(2**32 + 1)}, target="collection", mentions="maximum"
    ),
    "post-upload-length-over-configured-max": Bad(
        "POST",
        413,
        {"Upload-Length": "101"},
        target="collection",
        config={"TUS_MAX_SIZE": 100},
        mentions="maximum",
    ),
    # ---------------------------------------------------------------- Upload-Defer-Length: 400
    "defer-length-0": Bad(
        "POST",
        400,
        {"Upload-Length": None, "Upload-Defer-Length": "0"},
        target="collection",
        mentions="Upload-Defer-Length",
    ),
    "defer-length-true": Bad(
        "POST",
        400,
        {"Upload-Length": None, "Upload-Defer-Length": "true"},
        target="collection",
        mentions="Upload-Defer-Length",
    ),
    "defer-length-2": Bad(
        "POST",
        400,
        {"Upload-Length": None, "Upload-Defer-Length": "2"},
        target="collection",
        mentions="Upload-Defer-Length",
    ),
    "defer-length-empty": Bad(
        "POST",
        400,
        {"Upload-Length": None, "Upload-Defer-Length": ""},
        target="collection",
        mentions="Upload-Defer-Length",
    ),
    # ---------------------------------------------------------------- Upload-Length on PATCH
    "patch-length-grows-known-length": Bad(
        "PATCH", 400, {"Upload-Length": "11"}, mentions="Upload-Length"
    ),
    "patch-length-shrinks-known-length": Bad(
        "PATCH", 400, {"Upload-Length": "9"}, mentions="Upload-Length"
    ),
    "patch-length-non-numeric": Bad(
        "PATCH", 400, {"Upload-Length": "ten"}, deferred=True, mentions="Upload-Length"
    ),
    "patch-deferred-length-below-offset": Bad(
        "PATCH", 400, {"Upload-Length": "4"}, deferred=True, mentions="Upload-Length"
    ),
    "patch-deferred-length-zero": Bad(
        "PATCH", 400, {"Upload-Length": "0"}, deferred=True, mentions="Upload-Length"
    ),
    "patch-deferred-length-over-max": Bad(
        "PATCH", 413, {"Upload-Length": str(2**32 + 1)}, deferred=True, mentions="maximum"
    ),
    "patch-deferred-body-passes-new-length": Bad(
        "PATCH", 413, {"Upload-Length": "7"}, deferred=True, mentions="Upload-Length"
    ),
    # ---------------------------------------------------------------- Content-Type on PATCH: 415
    "patch-content-type-octet-stream": Bad(
        "PATCH", 415, {"Content-Type": "application/octet-stream"}, mentions="Content-Type"
    ),
    "patch-content-type-text": Bad(
        "PATCH", 415, {"Content-Type": "text/plain"}, mentions="Content-Type"
    ),
    "patch-content-type-lookalike": Bad(
        "PATCH", 415, {"Content-Type": OCTET + "x"}, mentions="Content-Type"
    ),
    "patch-content-type-missing": Bad(
        "PATCH", 415, {"Content-Type": None}, mentions="Content-Type"
    ),
    # ---------------------------------------------------------------- creation-with-upload: 415
    "post-body-octet-stream": Bad(
        "POST",
        415,
        {"Content-Type": "application/octet-stream"},
        body=BODY,
        target="collection",
        mentions="Content-Type",
    ),
    "post-body-form": Bad(
        "POST",
        415,
        {"Content-Type": "application/x-www-form-urlencoded"},
        body=b"a=b",
        target="collection",
        mentions="Content-Type",
    ),
    "post-body-no-content-type": Bad(
        "POST", 415, body=BODY, target="collection", mentions="Content-Type"
    ),
    # ---------------------------------------------------------------- Upload-Metadata: 400
    "metadata-value-not-base64": Bad(
        "POST", 400, {"Upload-Metadata": "name ***"}, target="collection", mentions="Metadata"
    ),
    "metadata-duplicate-key": Bad(
        "POST",
        400,
        {"Upload-Metadata": "name YQ==,name Yg=="},
        target="collection",
        mentions="Metadata",
    ),
    "metadata-empty-key-leading": Bad(
        "POST", 400, {"Upload-Metadata": ",abc YQ=="}, target="collection", mentions="Metadata"
    ),
    "metadata-empty-key-trailing": Bad(
        "POST", 400, {"Upload-Metadata": "abc YQ==,"}, target="collection", mentions="Metadata"
    ),
    "metadata-empty-key-middle": Bad(
        "POST",
        400,
        {"Upload-Metadata": "a YQ==,,b Yg=="},
        target="collection",
        mentions="Metadata",
    ),
    "metadata-three-parts": Bad(
        "POST", 400, {"Upload-Metadata": "a b c"}, target="collection", mentions="Metadata"
    ),
    # Longer than TUS_MAX_METADATA_SIZE (8192 by default): 431. Well-formed, so only the
    # length refuses it; HEAD would send it back to clients that may not read that much.
    "metadata-too-long": Bad(
        "POST",
        431,
        {"Upload-Metadata": "name " + _b64(b"x" * 6200)},
        target="collection",
        mentions="Upload-Metadata",
    ),
    "metadata-past-a-lower-limit": Bad(
        "POST",
        431,
        {"Upload-Metadata": "name " + _b64(b"x" * 90)},
        target="collection",
        config={"TUS_MAX_METADATA_SIZE": 100},
        mentions="100 bytes",
    ),
    "metadata-double-space": Bad(
        "POST", 400, {"Upload-Metadata": "name  YQ=="}, target="collection", mentions="Metadata"
    ),
    "metadata-base64-unpadded": Bad(
        "POST", 400, {"Upload-Metadata": "name YQ"}, target="collection", mentions="Metadata"
    ),
    "metadata-base64-short-padding": Bad(
        "POST", 400, {"Upload-Metadata": "name YQ="}, target="collection", mentions="Metadata"
    ),
    "metadata-base64-urlsafe-alphabet": Bad(
        "POST", 400, {"Upload-Metadata": "name -_8="}, target="collection", mentions="Metadata"
    ),
    "metadata-key-with-tab": Bad(
        "POST", 400, {"Upload-Metadata": "na\tme YQ=="}, target="collection", mentions="Metadata"
    ),
    # ---------------------------------------------------------------- Upload-Checksum
    "checksum-unknown-algorithm": Bad(
        "PATCH", 400, {"Upload-Checksum": "md4 " + SHA1_OF_OTHER}, mentions="checksum"
    ),
    "checksum-algorithm-only": Bad("PATCH", 400, {"Upload-Checksum": "sha1"}, mentions="checksum"),
    "checksum-digest-not-base64": Bad(
        "PATCH", 400, {"Upload-Checksum": "sha1 !!!"}, mentions="checksum"
    ),
    "checksum-empty": Bad("PATCH", 400, {"Upload-Checksum": ""}, mentions="checksum"),
    "checksum-three-parts": Bad(
        "PATCH", 400, {"Upload-Checksum": f"sha1 {SHA1_OF_OTHER} x"}, mentions="checksum"
    ),
    "checksum-mismatch": Bad(
        "PATCH", 460, {"Upload-Checksum": "sha1 " + SHA1_OF_OTHER}, mentions="checksum"
    ),
    "checksum-mismatch-wrong-digest-size": Bad(
        "PATCH", 460, {"Upload-Checksum": "sha1 YQ=="}, mentions="checksum"
    ),
    "checksum-mismatch-chunked": Bad(
        "PATCH",
        460,
        {"Upload-Checksum": "sha1 " + SHA1_OF_OTHER},
        chunked=True,
        mentions="checksum",
    ),
    # ---------------------------------------------------------------- Upload-Concat: 400
    "concat-final-empty": Bad(
        "POST",
        400,
        {**FINAL_NO_LENGTH, "Upload-Concat": "final;"},
        target="collection",
        mentions="Upload-Concat",
    ),
    "concat-final-blank": Bad(
        "POST",
        400,
        {**FINAL_NO_LENGTH, "Upload-Concat": "final; "},
        target="collection",
        mentions="Upload-Concat",
    ),
    "concat-partial-with-suffix": Bad(
        "POST", 400, {"Upload-Concat": "partial;x"}, target="collection", mentions="Upload-Concat"
    ),
    "concat-final-path-traversal": Bad(
        "POST",
        400,
        {**FINAL_NO_LENGTH, "Upload-Concat": "final;/files/../../etc/passwd"},
        target="collection",
        mentions="Upload-Concat",
    ),
    "concat-final-not-an-id": Bad(
        "POST",
        400,
        {**FINAL_NO_LENGTH, "Upload-Concat": "final;/files/NOTANID"},
        target="collection",
        mentions="Upload-Concat",
    ),
    "concat-final-uppercase-id": Bad(
        "POST",
        400,
        {**FINAL_NO_LENGTH, "Upload-Concat": "final;/files/{ID}"},
        target="collection",
        mentions="Upload-Concat",
    ),
    "concat-final-unknown-id": Bad(
        "POST",
        400,
        {**FINAL_NO_LENGTH, "Upload-Concat": f"final;/files/{UNKNOWN_ID}"},
        target="collection",
        mentions="Upload-Concat",
    ),
    "concat-final-of-non-partial": Bad(
        "POST",
        400,
        {**FINAL_NO_LENGTH, "Upload-Concat": "final;/files/{id}"},
        target="collection",
        mentions="partial",
    ),
    "concat-same-upload-twice": Bad(
        "POST",
        400,
        {**FINAL_NO_LENGTH, "Upload-Concat": "final;/files/{id} /files/{id}"},
        target="collection",
        mentions="more than once",
    ),
    "concat-bogus": Bad(
        "POST", 400, {"Upload-Concat": "bogus"}, target="collection", mentions="Upload-Concat"
    ),
    # ---------------------------------------------------------------- body past the length: 413
    "patch-body-past-length": Bad("PATCH", 413, body=TOO_LONG, mentions="Upload-Length"),
    "patch-body-past-length-chunked": Bad(
        "PATCH", 413, body=TOO_LONG, chunked=True, mentions="Upload-Length"
    ),
    "patch-deferred-body-past-max": Bad(
        "PATCH", 413, body=TOO_LONG, deferred=True, config={"TUS_MAX_SIZE": LENGTH}
    ),
    "patch-deferred-body-past-max-chunked": Bad(
        "PATCH",
        413,
        body=TOO_LONG,
        deferred=True,
        chunked=True,
        config={"TUS_MAX_SIZE": LENGTH},
    ),
    "post-body-past-length": Bad(
        "POST",
        413,
        {**CREATE_WITH_BODY, "Upload-Length": "3"},
        body=BODY,
        target="collection",
        mentions="Upload-Length",
    ),
    "post-body-past-length-chunked": Bad(
        "POST",
        413,
        {**CREATE_WITH_BODY, "Upload-Length": "3"},
        body=BODY,
        target="collection",
        chunked=True,
        mentions="Upload-Length",
    ),
    "post-deferred-body-past-max": Bad(
        "POST",
        413,
        {**CREATE_WITH_BODY, "Upload-Length": None, "Upload-Defer-Length": "1"},
        body=b"x" * 101,
        target="collection",
        config={"TUS_MAX_SIZE": 100},
    ),
    "post-deferred-body-past-max-chunked": Bad(
        "POST",
        413,
        {**CREATE_WITH_BODY, "Upload-Length": None, "Upload-Defer-Length": "1"},
        body=b"x" * 101,
        target="collection",
        chunked=True,
        config={"TUS_MAX_SIZE": 100},
    ),
    "post-body-checksum-mismatch": Bad(
        "POST",
        460,
        {**CREATE_WITH_BODY, "Upload-Checksum": "sha1 " + SHA1_OF_OTHER},
        body=BODY,
        target="collection",
        mentions="checksum",
    ),
    # ---------------------------------------------------------------- Content-Length: 400
    # Servers frame bodies by Content-Length and most refuse a malformed one themselves; one
    # that reaches the app is refused too, never read as some other length.
    **{
        f"content-length-{name}-{method.lower()}": Bad(
            method,
            400,
            {**CREATE_WITH_BODY} if method == "POST" else {},
            body=BODY,
            target="collection" if method == "POST" else "upload",
            content_length=value,
            mentions="Content-Length",
        )
        for name, value in [
            ("text", "abc"),
            ("negative", "-5"),
            ("plus-sign", "+5"),
            ("decimal-point", "5.0"),
            ("list", "5, 5"),
        ]
        for method in ("PATCH", "POST")
    },
    # ---------------------------------------------------------------- offsets past the length
    "upload-offset-past-length": Bad("PATCH", 409, {"Upload-Offset": str(LENGTH + 1)}, body=b""),
    "upload-offset-at-length": Bad("PATCH", 409, {"Upload-Offset": str(LENGTH)}, body=b""),
    "upload-offset-list": Bad("PATCH", 400, {"Upload-Offset": "5, 5"}, mentions="Upload-Offset"),
    # ---------------------------------------------------------------- creation body cut short
    # The client announced more than it sent: no 201, so nobody could resume the upload, and
    # nothing of it is kept.
    "post-body-shorter-than-content-length": Bad(
        "POST",
        400,
        CREATE_WITH_BODY,
        body=BODY,
        target="collection",
        content_length=str(len(BODY) + 3),
    ),
    # ---------------------------------------------------------------- methods tus does not serve
    # Answered by the tus handler on both paths: 405 with the URL's methods in Allow and
    # Tus-Resumable (a framework's own 405 page would say neither).
    **{
        f"method-{method.lower()}-on-{target}": Bad(
            method,
            405,
            body=b"x" if method == "PUT" else b"",
            target=target,
            expect_headers={"Allow": allow},
        )
        for method in ("PUT", "TRACE", "PROPFIND", "BREW")
        for target, allow in (
            ("upload", "HEAD, PATCH, DELETE, GET, OPTIONS"),
            ("collection", "POST, OPTIONS"),
        )
    },
    # ---------------------------------------------------------------- method override
    # Garbage in X-HTTP-Method-Override is ignored: a POST stays a POST, which an upload URL
    # does not serve, so the PATCH headers and body that come with it are never applied.
    "override-garbage-on-upload-url": Bad(
        "POST",
        405,
        {**patch_headers(OFFSET), "X-HTTP-Method-Override": "GARBAGE"},
        body=BODY,
        expect_headers={"Allow": "HEAD, PATCH, DELETE, GET, OPTIONS"},
    ),
    "override-list-on-upload-url": Bad(
        "POST",
        405,
        {**patch_headers(OFFSET), "X-HTTP-Method-Override": "PATCH, DELETE"},
        body=BODY,
    ),
}


@pytest.fixture(params=["wsgi", "asgi"])
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[[tuple[Flask, FlaskTus]], Client]]:
    """``connect((app, tus))``: a test client for the Flask view or for the ASGI adapter."""
    opened: list[AsgiTestClient] = []

    def client_for(made: tuple[Flask, FlaskTus]) -> Client:
        app, tus = made
        if request.param == "wsgi":
            return app.test_client()
        asgi = AsgiTestClient(tus.asgi_app(app))
        opened.append(asgi)
        return asgi

    yield client_for
    for asgi in opened:
        asgi.close()


@pytest.fixture
def client(connect: Callable[[tuple[Flask, FlaskTus]], Client], make_app: Any) -> Client:
    return connect(make_app())


def _prepare(client: Client, deferred: bool) -> str:
    """An upload holding ``STORED``: sized ``LENGTH``, or with its length deferred."""
    if deferred:
        location = create(client, None, **{"Upload-Defer-Length": "1"})
    else:
        location = create(client, LENGTH)
    response = client.patch(location, headers=patch_headers(0), data=STORED)
    assert response.status_code == 204, response.data
    assert response.headers["Upload-Offset"] == str(OFFSET)
    return location


def _state(client: Client, location: str) -> dict[str, str | None]:
    """What HEAD reports about the upload's progress."""
    response = client.head(location, headers=TUS)
    assert response.status_code == 200
    return {
        name: response.headers.get(name)
        for name in ("Upload-Offset", "Upload-Length", "Upload-Defer-Length", "Upload-Metadata")
    }


def _send(
    client: Client,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    chunked: bool = False,
    content_length: str | None = None,
) -> Any:
    if content_length is not None:
        if isinstance(client, AsgiTestClient):
            headers = {**headers, "Content-Length": content_length}
            return client.open(path, method=method, headers=headers, data=body)
        # Werkzeug's test client would send the body's own length.
        overrides = {"CONTENT_LENGTH": content_length}
        return client.open(
            path, method=method, headers=dict(headers), data=body, environ_overrides=overrides
        )
    if not chunked:
        return client.open(path, method=method, headers=dict(headers), data=body)
    if isinstance(client, AsgiTestClient):
        return client.open(path, method=method, headers=dict(headers), data=body, chunked=True)
    # No Content-Length: the server only learns the body's size by reading it.
    return client.open(
        path,
        method=method,
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True},
    )


def assert_plain_reason(response: Any, mentions: str | None = None) -> str:
    """The error body is one short line of plain text (naming ``mentions`` when given)."""
    assert response.mimetype == "text/plain", response.headers
    text = response.get_data(as_text=True).strip()
    assert 0 < len(text) <= MAX_REASON, text
    assert "\n" not in text
    assert "Traceback" not in text
    assert "<html" not in text.lower()
    if mentions is not None:
        assert mentions.lower() in text.lower(), text
    return text


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_request_is_refused_and_changes_nothing(
    case: Bad, make_app: Callable[..., Any], connect: Callable[..., Client], upload_dir: Path
) -> None:
    """A malformed request gets its status and a plain-text reason; no stored byte changes."""
    client = connect(make_app(**case.config))
    location = _prepare(client, case.deferred)
    upload_id = location.rsplit("/", 1)[-1]
    before_state = _state(client, location)
    before = stored_files(upload_dir)

    headers = _base_headers(case.method)
    for name, value in case.headers.items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value.replace("{id}", upload_id).replace("{ID}", upload_id.upper())
    body = _default_body(case.method) if case.body is None else case.body
    path = "/files/" if case.target == "collection" else location
    response = _send(
        client,
        case.method,
        path,
        headers,
        body,
        chunked=case.chunked,
        content_length=case.content_length,
    )

    assert response.status_code == case.status, response.data
    for name, value in case.expect_headers.items():
        assert response.headers.get(name) == value
    assert response.headers.get("Tus-Resumable") == "1.0.0"
    assert "Location" not in response.headers
    if case.method == "HEAD":
        assert response.data == b""
    else:
        assert_plain_reason(response, case.mentions)
    assert stored_files(upload_dir) == before
    assert _state(client, location) == before_state
    assert before_state["Upload-Offset"] == str(OFFSET)


def test_the_table_sends_good_requests_when_the_bad_part_is_removed(
    client: Client, upload_dir: Path
) -> None:
    """Control: the same PATCH and POST with valid headers succeed, so each case fails for
    the one malformed value it carries."""
    location = _prepare(client, deferred=False)
    response = client.patch(location, headers=patch_headers(OFFSET), data=BODY)
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == str(LENGTH)
    response = client.post("/files/", headers=_base_headers("POST"))
    assert response.status_code == 201
    response = _send(
        client,
        "POST",
        "/files/",
        {**_base_headers("POST"), **CREATE_WITH_BODY},
        BODY,
        chunked=True,
    )
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == str(len(BODY))


# -------------------------------------------------------------------- upload ids in the URL


def _uppercase(upload_id: str) -> str:
    return upload_id.upper()


BAD_IDS: dict[str, Callable[[str], str]] = {
    "uppercase-hex": _uppercase,
    "31-chars": lambda i: i[:-1],
    "33-chars": lambda i: i + "0",
    "dot-dot": lambda i: "..",
    "dot": lambda i: ".",
    "record-file": lambda i: i + ".json",
    "lock-file": lambda i: i + ".lock",
    "records-lock": lambda i: ".records.lock",
    "locks-file": lambda i: ".tus-locks",
    "trailing-space": lambda i: i + "%20",
    "nul-byte": lambda i: i + "%00",
    "very-long": lambda i: i * 200,
    "encoded-slash-traversal": lambda i: "%2e%2e%2fetc",
    "encoded-slash-into-id": lambda i: "..%2f" + i,
}
# With "%2f" decoded the path has one more segment: no tus route matches and Flask's router
# answers 404 before the tus view runs.
ROUTED_BY_FLASK = {"encoded-slash-traversal", "encoded-slash-into-id"}
# httpx, like any client following RFC 3986, resolves "." and ".." segments before it sends a
# URL, so through it they never reach the ASGI adapter as ids; Werkzeug's test client sends
# them as they are.
RESOLVED_BY_CLIENTS = {"dot", "dot-dot"}
ID_CASES = [
    pytest.param(kind, bad, id=f"{kind}-{bad}")
    for kind in ("wsgi", "asgi")
    for bad in BAD_IDS
    if not (kind == "asgi" and bad in RESOLVED_BY_CLIENTS)
]


@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE", "GET"])
@pytest.mark.parametrize(("connect", "bad"), ID_CASES, indirect=["connect"])
def test_invalid_upload_id_in_url_is_404_and_touches_nothing(
    bad: str, method: str, client: Client, upload_dir: Path
) -> None:
    """Ids that are not 32 lowercase hex digits never reach a path: 404, no file touched."""
    location = create(client, len(STORED))
    assert client.patch(location, headers=patch_headers(0), data=STORED).status_code == 204
    upload_id = location.rsplit("/", 1)[-1]
    before = stored_files(upload_dir)
    parent_before = sorted(p.name for p in upload_dir.parent.iterdir())

    headers = patch_headers(len(STORED)) if method == "PATCH" else dict(TUS)
    body = b"x" if method == "PATCH" else b""
    response = client.open(
        "/files/" + BAD_IDS[bad](upload_id), method=method, headers=headers, data=body
    )

    assert response.status_code == 404, response.data
    assert "Upload-Offset" not in response.headers
    if method == "HEAD":
        assert response.data == b""
    elif bad not in ROUTED_BY_FLASK:
        assert_plain_reason(response)
    assert STORED not in response.data
    assert stored_files(upload_dir) == before
    assert sorted(p.name for p in upload_dir.parent.iterdir()) == parent_before
    # The real upload is still there, finished and downloadable.
    assert client.get(location).data == STORED


# -------------------------------------------------------------------- method override


@pytest.mark.parametrize("override", ["GARBAGE", "DEL", "PATCH DELETE", "DELETE, PATCH", ""])
def test_garbage_method_override_keeps_post_semantics(
    override: str, client: Client, upload_dir: Path
) -> None:
    """A POST to the collection with a garbage X-HTTP-Method-Override still creates an upload
    and leaves the existing one untouched."""
    location = _prepare(client, deferred=False)
    before = stored_files(upload_dir)

    response = client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "3", "X-HTTP-Method-Override": override},
    )

    assert response.status_code == 201, response.data
    new_id = response.headers["Location"].rsplit("/", 1)[-1]
    after = stored_files(upload_dir)
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) == {new_id, f"{new_id}.json"}
    assert client.head(response.headers["Location"], headers=TUS).headers["Upload-Length"] == "3"
    assert _state(client, location)["Upload-Offset"] == str(OFFSET)


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 404), ("PATCH", 204)])
def test_method_override_is_only_honoured_on_post(
    method: str, status: int, client: Client, upload_dir: Path
) -> None:
    """X-HTTP-Method-Override: DELETE on anything but a POST does not delete the upload."""
    location = _prepare(client, deferred=False)
    before = stored_files(upload_dir)
    headers = {**TUS, "X-HTTP-Method-Override": "DELETE"}
    if method == "PATCH":
        headers = {**patch_headers(OFFSET), "X-HTTP-Method-Override": "DELETE"}

    response = client.open(location, method=method, headers=headers, data=b"")

    # HEAD reports, GET refuses an unfinished upload, an empty PATCH moves nothing: no DELETE.
    assert response.status_code == status, response.data
    assert _state(client, location)["Upload-Offset"] == str(OFFSET)
    assert stored_files(upload_dir) == before
