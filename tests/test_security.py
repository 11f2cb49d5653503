"""Security rules: unguessable ids, no path from metadata, trusted Location, safe downloads."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from conftest import OCTET, TUS, create, metadata, patch_headers, stored_files
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_tus.storage.locks import LOCKS_FILE

ID = re.compile(r"[0-9a-f]{32}")
CREATIONS = 1000


def _id(location: str) -> str:
    upload_id = location.rsplit("/", 1)[-1]
    assert ID.fullmatch(upload_id), location
    return upload_id


def _finished(client: FlaskClient, data: bytes, **meta: str) -> str:
    """A finished upload holding ``data`` with the given metadata; returns its Location."""
    response = client.post(
        "/files/",
        headers={
            **TUS,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": metadata(**meta),
            "Content-Type": OCTET,
        },
        data=data,
    )
    assert response.status_code == 201, response.data
    assert response.headers["Upload-Offset"] == str(len(data))
    location: str = response.headers["Location"]
    return location


# -------------------------------------------------------------------- ids


def test_ids_carry_128_random_bits(make_app: Callable[..., Any]) -> None:
    """Ids are 32 lowercase hex digits, all distinct, and every one of the 128 bits varies.

    A fixed nibble (uuid4's version digit, a timestamp's high bits, a counter) shows up as a bit
    that is (almost) always 0 or 1 across 1000 ids; each random bit is set 500 +- 16 times, so
    the 300..700 band cannot be missed by chance (12 standard deviations).
    """
    client = make_app(TUS_FSYNC=False)[0].test_client()
    ids = [_id(create(client, 1)) for _ in range(CREATIONS)]

    assert len(set(ids)) == CREATIONS
    numbers = [int(upload_id, 16) for upload_id in ids]
    for bit in range(128):
        ones = sum((number >> bit) & 1 for number in numbers)
        assert 300 <= ones <= 700, f"bit {bit} was set in {ones} of {CREATIONS} ids"


def test_ids_are_not_derived_from_metadata_or_length(client: FlaskClient) -> None:
    """Identical creation requests get unrelated ids: nothing in the request feeds the id."""
    meta = metadata(filename="report.pdf", filetype="application/pdf")
    first = _id(create(client, 42, **{"Upload-Metadata": meta}))
    second = _id(create(client, 42, **{"Upload-Metadata": meta}))

    assert first != second
    # Not even a shared prefix or suffix worth mentioning (8 equal hex digits: 1 in 4 billion).
    assert first[:8] != second[:8]
    assert first[-8:] != second[-8:]
    assert b"report".hex() not in first + second


# -------------------------------------------------------------------- metadata never a path


@pytest.mark.parametrize(
    "filename",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..\\..\\windows\\win.ini",
        "../uploads/../../escape",
        ".records.lock",
        ".tus-locks",
        "x.json",
    ],
)
def test_metadata_never_becomes_a_path(
    filename: str, client: FlaskClient, upload_dir: Path
) -> None:
    """After a full upload with a hostile filename only ``<id>`` and ``<id>.json`` appear."""
    before = stored_files(upload_dir)
    parent_before = sorted(p.name for p in upload_dir.parent.iterdir())
    location = create(client, 5, **{"Upload-Metadata": metadata(filename=filename)})
    assert client.patch(location, headers=patch_headers(0), data=b"hello").status_code == 204
    upload_id = _id(location)

    after = stored_files(upload_dir)
    assert set(after) - set(before) - {LOCKS_FILE} == {upload_id, f"{upload_id}.json"}
    assert after[upload_id] == b"hello"
    assert not [p for p in upload_dir.rglob("*") if p.is_dir()]
    assert sorted(p.name for p in upload_dir.parent.iterdir()) == parent_before
    # HEAD hands the metadata back untouched; it was stored, not used.
    head = client.head(location, headers=TUS)
    assert head.headers["Upload-Metadata"] == metadata(filename=filename)


# -------------------------------------------------------------------- Location


FORWARDED = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}


def _location(client: FlaskClient, headers: dict[str, str], **environ: str) -> str:
    response = client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "1", **headers},
        environ_overrides=environ or None,
    )
    assert response.status_code == 201, response.data
    location: str = response.headers["Location"]
    return location


def test_location_is_relative_by_default(client: FlaskClient) -> None:
    """Without configuration Location is a path, whatever the Host header says."""
    location = _location(client, {"Host": "evil.example"})
    assert re.fullmatch(r"/files/[0-9a-f]{32}", location)


@pytest.mark.parametrize(
    "proxies", [(), ["10.0.0.0/8"], "192.168.0.1, 10.0.0.1"], ids=["none", "other-net", "others"]
)
def test_forwarded_headers_from_untrusted_client_are_ignored(
    proxies: Any, make_app: Callable[..., Any]
) -> None:
    """X-Forwarded-Host/Proto from a client that is not a trusted proxy leave Location relative."""
    client = make_app(TUS_TRUSTED_PROXIES=proxies)[0].test_client()
    location = _location(client, FORWARDED)
    assert re.fullmatch(r"/files/[0-9a-f]{32}", location)


@pytest.mark.parametrize(
    ("host", "proto", "prefix"),
    [
        ("files.example.org", "https", "https://files.example.org"),
        ("files.example.org:8443", "https", "https://files.example.org:8443"),
        ("files.example.org", "http", "http://files.example.org"),
        ("[::1]:8080", "http", "http://[::1]:8080"),
        # A proxy that appends keeps what the client sent: only the last entry is the proxy's.
        ("evil.example, files.example.org", "http, https", "https://files.example.org"),
    ],
    ids=["host", "host-port", "http", "ipv6", "last-of-list"],
)
def test_trusted_proxy_makes_location_absolute(
    host: str, proto: str, prefix: str, make_app: Callable[..., Any]
) -> None:
    """From a trusted proxy (the test client is 127.0.0.1) Location uses the forwarded origin."""
    client = make_app(TUS_TRUSTED_PROXIES=["127.0.0.1"])[0].test_client()
    location = _location(client, {"X-Forwarded-Host": host, "X-Forwarded-Proto": proto})
    assert re.fullmatch(re.escape(prefix) + r"/files/[0-9a-f]{32}", location), location
    # The path part still names the upload.
    path = location[len(prefix) :]
    assert client.head(path, headers=TUS).status_code == 200


def test_trusted_proxy_with_junk_proto_falls_back_to_http(make_app: Callable[..., Any]) -> None:
    """A forwarded scheme other than http/https never reaches Location."""
    client = make_app(TUS_TRUSTED_PROXIES=["127.0.0.1"])[0].test_client()
    location = _location(
        client, {"X-Forwarded-Host": "files.example.org", "X-Forwarded-Proto": "javascript"}
    )
    assert location.startswith("http://files.example.org/files/")


@pytest.mark.parametrize(
    "host",
    [
        "evil.com/path",
        "a b",
        "evil.com\r\nSet-Cookie: session=stolen",
        "evil.com\nX-Injected: 1",
        "user@evil.com",
        "evil.com?x=1",
        "evil.com#frag",
        "evil.com\\path",
        "evil.com:port",
        "",
    ],
    ids=[
        "path",
        "space",
        "crlf",
        "lf",
        "userinfo",
        "query",
        "fragment",
        "backslash",
        "bad-port",
        "empty",
    ],
)
def test_junk_forwarded_host_is_ignored(host: str, make_app: Callable[..., Any]) -> None:
    """Even from a trusted proxy, a forwarded host that is not a host[:port] is ignored."""
    client = make_app(TUS_TRUSTED_PROXIES=["127.0.0.1"])[0].test_client()
    # Set in the WSGI environ directly: the test client refuses to build a header with CR/LF.
    response = client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "1"},
        environ_overrides={"HTTP_X_FORWARDED_HOST": host, "HTTP_X_FORWARDED_PROTO": "https"},
    )
    assert response.status_code == 201, response.data
    assert re.fullmatch(r"/files/[0-9a-f]{32}", response.headers["Location"])
    assert "Set-Cookie" not in response.headers
    assert "X-Injected" not in response.headers


# -------------------------------------------------------------------- downloads


ACTIVE = b"<script>alert(document.cookie)</script>"


def _assert_download(response: TestResponse, data: bytes) -> None:
    assert response.status_code == 200, response.data
    assert response.data == data
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "filetype",
    [
        "text/html",
        "TEXT/HTML; charset=utf-8",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/javascript",
        "application/javascript",
        "text/xml",
        "application/pdf",
        "text/html\r\nX-Injected: 1",
        "not a type",
    ],
)
def test_active_filetype_is_served_as_octet_stream_attachment(
    filetype: str, client: FlaskClient
) -> None:
    """A filetype a browser would run is never echoed: octet-stream, attachment, nosniff."""
    location = _finished(client, ACTIVE, filename="page.html", filetype=filetype)

    response = client.get(location)

    _assert_download(response, ACTIVE)
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert "X-Injected" not in response.headers


@pytest.mark.parametrize(
    ("filetype", "disposition"),
    [("image/png", "inline"), ("text/plain", "inline"), ("application/zip", "attachment")],
)
def test_passive_filetype_is_echoed(filetype: str, disposition: str, client: FlaskClient) -> None:
    """Control: a harmless filetype is served as itself (media and plain text inline)."""
    location = _finished(client, b"\x89PNG data", filename="a.bin", filetype=filetype)

    response = client.get(location)

    _assert_download(response, b"\x89PNG data")
    assert response.headers["Content-Type"] == filetype
    assert response.headers["Content-Disposition"].startswith(disposition + ";")


DISPOSITION = re.compile(
    r"(?P<kind>attachment|inline); filename=\"(?P<name>[^\"\\\r\n]*)\""
    r"(?:; filename\*=UTF-8''(?P<ext>[A-Za-z0-9%._~!$&'()*+,=:@-]*))?"
)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ('evil"name.txt', "evilname.txt"),
        ('x.txt"; filename="evil.html', "x.txt filename=evil.html"),
        ("a\r\nSet-Cookie: s=1.txt", "aSet-Cookie: s=1.txt"),
        ("../../etc/passwd", "passwd"),
        ("/absolute/path/report.txt", "report.txt"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("dir/", "download"),
        ("..", "download"),
        ("", "download"),
        ("a;b.txt", "ab.txt"),
        ("tab\there.txt", "tabhere.txt"),
    ],
    ids=[
        "quote",
        "quote-injection",
        "crlf",
        "traversal",
        "absolute",
        "backslashes",
        "trailing-slash",
        "dot-dot",
        "empty",
        "semicolon",
        "tab",
    ],
)
def test_filename_is_sanitised_in_content_disposition(
    filename: str, expected: str, client: FlaskClient
) -> None:
    """Quotes, CR/LF, separators and directories never reach Content-Disposition."""
    location = _finished(client, b"data", filename=filename, filetype="application/zip")

    response = client.get(location)

    _assert_download(response, b"data")
    header = response.headers["Content-Disposition"]
    match = DISPOSITION.fullmatch(header)
    assert match is not None, header
    assert match["kind"] == "attachment"
    assert match["name"] == expected
    assert match["ext"] is None
    assert "Set-Cookie" not in response.headers


def test_non_ascii_filename_gets_an_ascii_fallback_and_rfc8187_name(client: FlaskClient) -> None:
    """A non-ASCII name: an ASCII ``filename`` plus the exact name in ``filename*``."""
    name = "résumé/../naïve \u202e.txt"
    location = _finished(client, b"data", filename=name, filetype="application/zip")

    header = client.get(location).headers["Content-Disposition"]

    match = DISPOSITION.fullmatch(header)
    assert match is not None, header
    assert match["name"].isascii()
    assert "/" not in match["name"]
    assert match["ext"] is not None
    exact = unquote(match["ext"])
    assert exact.startswith("naïve")
    assert "/" not in exact
    assert "\u202e" not in exact  # a right-to-left override is not printable


def test_metadata_value_bytes_are_base64_only_in_header(client: FlaskClient) -> None:
    """The raw metadata (with a CR/LF inside) is only ever returned base64-encoded by HEAD."""
    raw = "a\r\nSet-Cookie: s=1"
    location = create(client, 1, **{"Upload-Metadata": metadata(filename=raw)})

    head = client.head(location, headers=TUS)

    assert head.headers["Upload-Metadata"] == "filename " + base64.b64encode(raw.encode()).decode()
    assert "Set-Cookie" not in head.headers
