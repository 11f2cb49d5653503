"""OPTIONS on the core handler: what the server advertises, and the CORS preflight."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from core_helpers import UNKNOWN_ID, make_handler

from flask_tus.core import Headers, TusHandler, TusRequest, TusResponse
from flask_tus.core.protocols import ChunkWriter
from flask_tus.storage.local import LocalStorage

ALL_EXTENSIONS = [
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
    "concatenation",
    "concatenation-unfinished",
]


class NonConcatenatingStorage:
    """LocalStorage behind a wrapper that lacks ``concatenate``."""

    def __init__(self, inner: LocalStorage) -> None:
        self._inner = inner

    async def create(self, upload_id: str) -> None:
        await self._inner.create(upload_id)

    def open_writer(self, upload_id: str, offset: int) -> AbstractAsyncContextManager[ChunkWriter]:
        return self._inner.open_writer(upload_id, offset)

    def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        return self._inner.read(upload_id, start, end)

    async def delete(self, upload_id: str) -> None:
        await self._inner.delete(upload_id)

    def iter_ids(self) -> AsyncIterator[str]:
        return self._inner.iter_ids()

    async def md5(self, upload_id: str) -> str:
        return await self._inner.md5(upload_id)


def options(headers: dict[str, str] | None = None, upload_id: str | None = None) -> TusRequest:
    return TusRequest("OPTIONS", upload_id, Headers.from_pairs((headers or {}).items()))


def build(upload_dir: Path, *, concatenating: bool = True, **settings: Any) -> TusHandler:
    """A handler on the default backends with ``settings`` changed from the defaults."""
    storage = LocalStorage(upload_dir, fsync=False)
    return make_handler(
        upload_dir, storage if concatenating else NonConcatenatingStorage(storage), **settings
    )


def extensions(response: TusResponse) -> list[str]:
    return response.headers["Tus-Extension"].split(",")


async def test_options_default_backends_advertise_everything(handler: TusHandler) -> None:
    """OPTIONS: 204 with the version, every extension, the size limit and the algorithms."""
    response = await handler.handle(options())
    assert response.status == 204
    assert response.body == b""
    assert response.headers["Tus-Version"] == "1.0.0"
    assert extensions(response) == ALL_EXTENSIONS
    assert response.headers["Tus-Max-Size"] == str(2**32)
    assert response.headers["Tus-Checksum-Algorithm"].split(",") == [
        "sha1",
        "md5",
        "sha256",
        "sha512",
        "crc32",
    ]


@pytest.mark.parametrize(
    ("settings", "concatenating", "missing_extensions", "absent_headers", "present"),
    [
        pytest.param(
            {}, False, {"concatenation", "concatenation-unfinished"}, [], {}, id="no-concat"
        ),
        pytest.param({"expiration": None}, True, {"expiration"}, [], {}, id="no-expiration"),
        pytest.param(
            {"checksum_algorithms": ()},
            True,
            {"checksum"},
            ["Tus-Checksum-Algorithm"],
            {},
            id="no-checksum",
        ),
        pytest.param(
            {"checksum_algorithms": ("sha1",)},
            True,
            set(),
            [],
            {"Tus-Checksum-Algorithm": "sha1"},
            id="sha1-only",
        ),
        pytest.param({"max_size": None}, True, set(), ["Tus-Max-Size"], {}, id="no-max-size"),
        pytest.param(
            {"max_size": 1000}, True, set(), [], {"Tus-Max-Size": "1000"}, id="max-size-1000"
        ),
        pytest.param(
            {"expiration": None, "checksum_algorithms": (), "max_size": None},
            False,
            {"expiration", "checksum", "concatenation", "concatenation-unfinished"},
            ["Tus-Max-Size", "Tus-Checksum-Algorithm"],
            {},
            id="bare",
        ),
    ],
)
async def test_options_advertises_only_what_backends_do(
    upload_dir: Path,
    *,
    settings: dict[str, Any],
    concatenating: bool,
    missing_extensions: set[str],
    absent_headers: list[str],
    present: dict[str, str],
) -> None:
    """Tus-Extension lists exactly what the configured backends implement; limits only if set."""
    handler = build(upload_dir, concatenating=concatenating, **settings)
    response = await handler.handle(options())
    assert response.status == 204
    assert extensions(response) == [e for e in ALL_EXTENSIONS if e not in missing_extensions]
    for name in absent_headers:
        assert name not in response.headers
    for name, value in present.items():
        assert response.headers[name] == value


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-tus-resumable"),
        pytest.param({"Tus-Resumable": "0.2.2"}, id="other-version"),
        pytest.param({"Tus-Resumable": "1.0.0"}, id="current-version"),
    ],
)
@pytest.mark.parametrize("upload_id", [None, UNKNOWN_ID], ids=["collection", "upload-url"])
async def test_options_ignores_tus_resumable(
    handler: TusHandler, headers: dict[str, str], upload_id: str | None
) -> None:
    """OPTIONS is answered whatever Tus-Resumable says (or when it is missing)."""
    response = await handler.handle(options(headers, upload_id))
    assert response.status == 204
    assert response.headers["Tus-Version"] == "1.0.0"


@pytest.mark.parametrize(
    ("headers", "expected", "absent"),
    [
        pytest.param(
            {"Origin": "https://app.example", "Access-Control-Request-Method": "PATCH"},
            {"Access-Control-Allow-Origin": "*", "Access-Control-Max-Age": "86400"},
            [],
            id="preflight",
        ),
        pytest.param(
            {
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "tus-resumable,upload-length",
            },
            {"Access-Control-Allow-Origin": "*"},
            [],
            id="preflight-with-request-headers",
        ),
        pytest.param(
            {"Origin": "https://app.example"},
            {"Access-Control-Allow-Origin": "*"},
            [
                "Access-Control-Allow-Methods",
                "Access-Control-Allow-Headers",
                "Access-Control-Max-Age",
            ],
            id="origin-without-preflight",
        ),
        pytest.param(
            {"Access-Control-Request-Method": "PATCH"},
            {},
            [
                "Access-Control-Allow-Origin",
                "Access-Control-Allow-Methods",
                "Access-Control-Allow-Headers",
            ],
            id="no-origin",
        ),
    ],
)
async def test_options_cors_preflight(
    handler: TusHandler, headers: dict[str, str], expected: dict[str, str], absent: list[str]
) -> None:
    """A CORS preflight (Origin + Access-Control-Request-Method) gets the CORS headers."""
    response = await handler.handle(options(headers))
    assert response.status == 204
    for name, value in expected.items():
        assert response.headers[name] == value
    for name in absent:
        assert name not in response.headers


async def test_options_preflight_allows_every_tus_method_and_header(handler: TusHandler) -> None:
    """The preflight allows the tus methods and every request header a tus client sends."""
    response = await handler.handle(
        options({"Origin": "https://app.example", "Access-Control-Request-Method": "PATCH"})
    )
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"POST", "HEAD", "PATCH", "DELETE", "GET", "OPTIONS"} <= methods
    allowed = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {
        "content-type",
        "tus-resumable",
        "upload-length",
        "upload-defer-length",
        "upload-offset",
        "upload-metadata",
        "upload-concat",
        "upload-checksum",
        "x-http-method-override",
    } <= allowed
