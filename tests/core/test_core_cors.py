"""CORS on the core handler: allowed origins, exposed headers, and CORS on errors."""

from __future__ import annotations

import pytest
from conftest import TUS, patch_headers
from core_helpers import UNKNOWN_ID, create, make_request, with_settings

from flask_tus.core import TusHandler, TusResponse

ORIGIN = "https://app.example"
OTHER = "https://evil.example"
# Every response header of the protocol a browser client has to read (PROTOCOL.md, CORS).
PROTOCOL_HEADERS = {
    "Upload-Offset",
    "Location",
    "Upload-Length",
    "Tus-Version",
    "Tus-Resumable",
    "Tus-Max-Size",
    "Tus-Extension",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Expires",
}


def cors_headers(response: TusResponse) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def exposed(response: TusResponse) -> set[str]:
    return {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}


# Each case: (method, upload id or None for the collection, headers, body, expected status).
# "{id}" is replaced by a fresh upload's id with 3 bytes written.
CASES = [
    pytest.param("POST", None, {**TUS, "Upload-Length": "5"}, b"", 201, id="post-201"),
    pytest.param("HEAD", "{id}", TUS, b"", 200, id="head-200"),
    pytest.param("PATCH", "{id}", patch_headers(3), b"de", 204, id="patch-204"),
    pytest.param("GET", "{id}", {}, b"", 404, id="get-unfinished-404"),
    pytest.param("DELETE", "{id}", TUS, b"", 204, id="delete-204"),
    pytest.param("OPTIONS", None, {}, b"", 204, id="options-204"),
    pytest.param("PATCH", "{id}", patch_headers(0), b"xx", 409, id="patch-409"),
    pytest.param("PATCH", "{id}", {"Upload-Offset": "3"}, b"de", 412, id="patch-412"),
    pytest.param("POST", None, {"Upload-Length": "5"}, b"", 412, id="post-412"),
    pytest.param("HEAD", UNKNOWN_ID, TUS, b"", 404, id="head-404"),
    pytest.param("PATCH", UNKNOWN_ID, patch_headers(0), b"x", 404, id="patch-404"),
    pytest.param("PATCH", "{id}", {**TUS, "Upload-Offset": "3"}, b"de", 415, id="patch-415"),
    pytest.param("PATCH", "{id}", patch_headers(3), b"toolongbody", 413, id="patch-413"),
    pytest.param("POST", None, {**TUS}, b"", 400, id="post-400"),
    pytest.param("PUT", None, TUS, b"", 405, id="put-405"),
]


async def run_case(
    handler: TusHandler,
    method: str,
    upload_id: str | None,
    headers: dict[str, str],
    body: bytes,
    *,
    origin: str | None,
) -> TusResponse:
    if upload_id == "{id}":
        upload_id = await create(handler, 10, b"abc")
    sent = dict(headers)
    if origin is not None:
        sent["Origin"] = origin
    return await handler.handle(make_request(method, upload_id, sent, body))


@pytest.mark.parametrize(("method", "upload_id", "headers", "body", "status"), CASES)
async def test_any_origin_gets_cors_on_every_response(
    handler: TusHandler,
    *,
    method: str,
    upload_id: str | None,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    """With the default ``("*",)`` every response, errors included, carries the CORS headers."""
    response = await run_case(handler, method, upload_id, headers, body, origin=ORIGIN)
    assert response.status == status, response.body
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert exposed(response) >= PROTOCOL_HEADERS


@pytest.mark.parametrize(("method", "upload_id", "headers", "body", "status"), CASES)
async def test_listed_origin_is_echoed(
    handler: TusHandler,
    *,
    method: str,
    upload_id: str | None,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    """An origin in the allowed list is echoed back with Vary: Origin, on errors too."""
    with_settings(handler, cors_origins=(OTHER, ORIGIN))
    response = await run_case(handler, method, upload_id, headers, body, origin=ORIGIN)
    assert response.status == status, response.body
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in response.headers["Vary"]
    assert exposed(response) >= PROTOCOL_HEADERS


@pytest.mark.parametrize(("method", "upload_id", "headers", "body", "status"), CASES)
async def test_disallowed_origin_gets_no_cors(
    handler: TusHandler,
    *,
    method: str,
    upload_id: str | None,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    """An origin missing from the list gets no CORS headers (the request itself is served)."""
    with_settings(handler, cors_origins=(ORIGIN,))
    response = await run_case(handler, method, upload_id, headers, body, origin=OTHER)
    assert response.status == status, response.body
    assert cors_headers(response) == {}


@pytest.mark.parametrize(("method", "upload_id", "headers", "body", "status"), CASES)
async def test_cors_disabled_sends_none(
    handler: TusHandler,
    *,
    method: str,
    upload_id: str | None,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    """With ``cors_origins=()`` no response carries CORS headers, whatever the origin."""
    with_settings(handler, cors_origins=())
    response = await run_case(handler, method, upload_id, headers, body, origin=ORIGIN)
    assert response.status == status, response.body
    assert cors_headers(response) == {}


@pytest.mark.parametrize(("method", "upload_id", "headers", "body", "status"), CASES)
async def test_no_origin_no_cors(
    handler: TusHandler,
    *,
    method: str,
    upload_id: str | None,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    """A request without Origin (not from a browser script) gets no CORS headers."""
    response = await run_case(handler, method, upload_id, headers, body, origin=None)
    assert response.status == status, response.body
    assert cors_headers(response) == {}


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        pytest.param(("*",), ORIGIN, "*", id="any"),
        pytest.param((ORIGIN,), ORIGIN, ORIGIN, id="listed"),
        pytest.param((ORIGIN,), OTHER, None, id="unlisted"),
        pytest.param((ORIGIN,), ORIGIN + ".evil.example", None, id="suffix-not-a-match"),
        pytest.param((ORIGIN,), "http://app.example", None, id="scheme-differs"),
        pytest.param((), ORIGIN, None, id="disabled"),
    ],
)
async def test_preflight_per_origin(
    handler: TusHandler, origins: tuple[str, ...], origin: str, allowed: str | None
) -> None:
    """The preflight answers with CORS headers only for an allowed origin (exact match)."""
    with_settings(handler, cors_origins=origins)
    response = await handler.handle(
        make_request(
            "OPTIONS",
            None,
            {"Origin": origin, "Access-Control-Request-Method": "PATCH"},
        )
    )
    assert response.status == 204
    if allowed is None:
        assert cors_headers(response) == {}
    else:
        assert response.headers["Access-Control-Allow-Origin"] == allowed
        assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
        assert "Upload-Offset" in response.headers["Access-Control-Allow-Headers"]
        assert exposed(response) >= PROTOCOL_HEADERS


async def test_error_responses_keep_their_own_headers(handler: TusHandler) -> None:
    """CORS is added to an error response without dropping its Tus-Version (412)."""
    response = await handler.handle(
        make_request("POST", None, {"Upload-Length": "5", "Origin": ORIGIN})
    )
    assert response.status == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Tus-Version" in exposed(response)
