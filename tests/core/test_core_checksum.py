"""The checksum extension on the core handler: Upload-Checksum on PATCH."""

from __future__ import annotations

import base64
import hashlib
import zlib
from pathlib import Path

import pytest
from conftest import patch_headers, stored_files
from core_helpers import (
    body_of,
    create,
    dropping_body,
    offset_of,
    patch,
    streamed_request,
    with_settings,
)

from flask_tus.core import TusHandler, TusResponse

FIRST = b"hello "
CHUNK = b"tus checksum world"


def digest(algorithm: str, data: bytes) -> str:
    """``<algorithm> <base64 digest>`` computed here, independently of the server's code."""
    if algorithm == "crc32":
        raw = zlib.crc32(data).to_bytes(4, "big")
    else:
        raw = hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(raw).decode()}"


async def started_upload(handler: TusHandler) -> str:
    """An upload of FIRST + CHUNK with FIRST already stored."""
    return await create(handler, len(FIRST + CHUNK), FIRST)


async def patch_chunk(handler: TusHandler, upload_id: str, checksum: str) -> TusResponse:
    return await patch(handler, upload_id, len(FIRST), CHUNK, **{"Upload-Checksum": checksum})


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512", "crc32"])
async def test_checksum_accepted_when_right(
    handler: TusHandler, upload_dir: Path, algorithm: str
) -> None:
    """Every advertised algorithm verifies this PATCH's body; a match stores it."""
    assert algorithm in handler.settings.checksum_algorithms
    upload_id = await started_upload(handler)
    response = await patch_chunk(handler, upload_id, digest(algorithm, CHUNK))
    assert response.status == 204, response.body
    assert response.headers["Upload-Offset"] == str(len(FIRST + CHUNK))
    assert (upload_dir / upload_id).read_bytes() == FIRST + CHUNK


async def test_checksum_algorithm_name_is_case_insensitive(handler: TusHandler) -> None:
    """``SHA1`` names the same algorithm as ``sha1``."""
    upload_id = await started_upload(handler)
    response = await patch_chunk(handler, upload_id, digest("sha1", CHUNK).replace("sha1", "SHA1"))
    assert response.status == 204


async def test_checksum_over_several_body_pieces(handler: TusHandler, upload_dir: Path) -> None:
    """The checksum covers the whole body however it is split into pieces."""
    upload_id = await started_upload(handler)
    headers = patch_headers(len(FIRST), **{"Upload-Checksum": digest("sha256", CHUNK)})
    request = streamed_request(
        "PATCH", upload_id, headers, body_of(CHUNK[:4], CHUNK[4:9], CHUNK[9:]), len(CHUNK)
    )
    response = await handler.handle(request)
    assert response.status == 204
    assert (upload_dir / upload_id).read_bytes() == FIRST + CHUNK


def _wrong(algorithm: str) -> str:
    return digest(algorithm, CHUNK + b"!")


def _other_body_digest_sha1() -> str:
    return digest("sha1", FIRST + CHUNK)


@pytest.mark.parametrize(
    ("checksum", "status"),
    [
        *[
            pytest.param(_wrong(a), 460, id=f"mismatch-{a}")
            for a in ("sha1", "md5", "sha256", "sha512", "crc32")
        ],
        pytest.param(_other_body_digest_sha1(), 460, id="mismatch-whole-file-digest"),
        pytest.param(
            digest("md5", CHUNK).replace("md5", "sha1"), 460, id="digest-of-other-algorithm"
        ),
        pytest.param("sha3 " + base64.b64encode(b"x" * 32).decode(), 400, id="unknown-sha3"),
        pytest.param("md4 " + base64.b64encode(b"x" * 16).decode(), 400, id="unknown-md4"),
        pytest.param("blake2b " + digest("sha512", CHUNK).split()[1], 400, id="unknown-blake2b"),
        pytest.param("sha1", 400, id="no-digest"),
        pytest.param("", 400, id="empty"),
        pytest.param("sha1 ", 400, id="empty-digest"),
        pytest.param("sha1  " + digest("sha1", CHUNK).split()[1], 400, id="double-space"),
        pytest.param("sha1 not*base64!", 400, id="not-base64"),
        pytest.param("sha1 YWJj", 460, id="base64-wrong-length"),
        pytest.param("sha1 YWJ", 400, id="bad-padding"),
        pytest.param(digest("sha1", CHUNK) + " extra", 400, id="three-parts"),
    ],
)
async def test_checksum_refusals_discard_chunk(
    handler: TusHandler, upload_dir: Path, checksum: str, status: int
) -> None:
    """Mismatch 460, unknown algorithm or malformed value 400: the chunk is discarded."""
    upload_id = await started_upload(handler)
    before = stored_files(upload_dir)
    response = await patch_chunk(handler, upload_id, checksum)
    assert response.status == status, response.body
    assert "Upload-Offset" not in response.headers
    assert stored_files(upload_dir) == before
    assert (upload_dir / upload_id).read_bytes() == FIRST
    assert await offset_of(handler, upload_id) == len(FIRST)
    # The client can send the chunk again with the right checksum.
    retry = await patch_chunk(handler, upload_id, digest("sha1", CHUNK))
    assert retry.status == 204


async def test_checksum_algorithm_not_offered_is_400(handler: TusHandler, upload_dir: Path) -> None:
    """An algorithm the settings do not offer is refused like an unknown one."""
    with_settings(handler, checksum_algorithms=("sha1",))
    upload_id = await started_upload(handler)
    response = await patch_chunk(handler, upload_id, digest("md5", CHUNK))
    assert response.status == 400
    assert (upload_dir / upload_id).read_bytes() == FIRST


async def test_checksum_disconnect_keeps_nothing(handler: TusHandler, upload_dir: Path) -> None:
    """A cut-off body cannot be verified against its checksum, so none of it is kept."""
    upload_id = await started_upload(handler)
    headers = patch_headers(len(FIRST), **{"Upload-Checksum": digest("sha1", CHUNK)})
    request = streamed_request("PATCH", upload_id, headers, dropping_body(CHUNK[:5]), len(CHUNK))
    response = await handler.handle(request)
    assert response.status >= 400
    assert (upload_dir / upload_id).read_bytes() == FIRST
    assert await offset_of(handler, upload_id) == len(FIRST)


async def test_checksum_completion_fires_only_on_match(handler: TusHandler) -> None:
    """A mismatched last chunk does not finish the upload; the matching retry does, once."""
    completed: list[str] = []
    handler.hooks.add("on_complete", lambda event: completed.append(event.upload.id))
    upload_id = await started_upload(handler)
    assert (await patch_chunk(handler, upload_id, _wrong("sha1"))).status == 460
    assert completed == []
    assert (await patch_chunk(handler, upload_id, digest("sha1", CHUNK))).status == 204
    assert completed == [upload_id]
