"""The concatenation extension on the core handler: partial and final uploads."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import TUS, metadata, patch_headers, stored_files
from core_helpers import (
    UNKNOWN_ID,
    create,
    head,
    id_of,
    make_handler,
    make_request,
    post,
    with_settings,
    write,
)

from flask_tus.core import HookEvent, TusHandler, TusResponse
from flask_tus.storage.local import LocalStorage


async def partial(
    handler: TusHandler, data: bytes, *, written: int | None = None, meta: str | None = None
) -> str:
    """A partial upload of ``data`` with ``written`` bytes stored (all by default)."""
    headers = {"Upload-Concat": "partial"}
    if meta is not None:
        headers["Upload-Metadata"] = meta
    return await create(handler, len(data), data if written is None else data[:written], **headers)


async def final(handler: TusHandler, *part_urls: str, **headers: str) -> TusResponse:
    return await post(handler, **{"Upload-Concat": "final;" + " ".join(part_urls), **headers})


async def download(handler: TusHandler, upload_id: str) -> bytes:
    response = await handler.handle(make_request("GET", upload_id, {}))
    assert response.status == 200, response.body
    assert response.stream is not None
    return b"".join([piece async for piece in response.stream])


@pytest.mark.parametrize(
    ("pieces", "order"),
    [
        pytest.param([b"abc", b"defgh"], [0, 1], id="two-in-order"),
        pytest.param([b"abc", b"defgh"], [1, 0], id="two-reversed"),
        pytest.param([b"a", b"bc", b"def", b"ghij"], [0, 1, 2, 3], id="four"),
        pytest.param([b"abc", b"", b"de"], [0, 1, 2], id="with-empty-partial"),
        pytest.param([b"xyz"], [0], id="single"),
    ],
)
async def test_final_is_partials_in_order(
    handler: TusHandler, upload_dir: Path, pieces: list[bytes], order: list[int]
) -> None:
    """A final upload's length is the sum and its bytes are the partials in the listed order."""
    ids = [await partial(handler, data) for data in pieces]
    urls = [f"/files/{ids[i]}" for i in order]
    response = await final(handler, *urls)
    assert response.status == 201, response.body
    final_id = id_of(response)
    expected = b"".join(pieces[i] for i in order)

    state = await head(handler, final_id)
    assert state.status == 200
    assert state.headers["Upload-Length"] == str(len(expected))
    assert state.headers["Upload-Offset"] == str(len(expected))
    assert state.headers["Upload-Concat"] == "final;" + " ".join(urls)
    assert (upload_dir / final_id).read_bytes() == expected
    if expected:
        assert await download(handler, final_id) == expected
    # The partials are left as they were.
    for upload_id, data in zip(ids, pieces, strict=True):
        assert (upload_dir / upload_id).read_bytes() == data


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("http://uploads.example.com/files/{id}", id="absolute"),
        pytest.param("https://uploads.example.com:8443/api/files/{id}/", id="absolute-slash"),
        pytest.param("/files/{id}", id="relative"),
        pytest.param("{id}", id="bare-id"),
    ],
)
async def test_final_accepts_relative_and_absolute_urls(handler: TusHandler, template: str) -> None:
    """Upload-Concat may name partials by relative or absolute URL."""
    first = await partial(handler, b"ab")
    second = await partial(handler, b"cd")
    response = await final(handler, template.format(id=first), template.format(id=second))
    assert response.status == 201, response.body
    assert await download(handler, id_of(response)) == b"abcd"


async def test_head_of_partial_repeats_upload_concat(handler: TusHandler) -> None:
    """HEAD of a partial upload says Upload-Concat: partial."""
    upload_id = await partial(handler, b"abcd", written=2)
    state = await head(handler, upload_id)
    assert state.headers["Upload-Concat"] == "partial"
    assert state.headers["Upload-Offset"] == "2"
    assert state.headers["Upload-Length"] == "4"


async def test_head_of_final_names_partials_by_url(handler: TusHandler) -> None:
    """HEAD of a final repeats Upload-Concat with the partials' URLs under the collection."""
    first = await partial(handler, b"ab")
    second = await partial(handler, b"cd")
    response = await final(handler, f"http://elsewhere.example/files/{first}", f"/files/{second}")
    request = make_request("HEAD", id_of(response), TUS)
    request.collection_path = "/api/files/"
    state = await handler.handle(request)
    assert state.headers["Upload-Concat"] == f"final;/api/files/{first} /api/files/{second}"


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"Upload-Length": "4"}, id="upload-length"),
        pytest.param({"Upload-Length": "0"}, id="upload-length-zero"),
        pytest.param({"Upload-Defer-Length": "1"}, id="defer-length"),
    ],
)
async def test_final_with_length_is_400(
    handler: TusHandler, upload_dir: Path, extra: dict[str, str]
) -> None:
    """A final upload takes its length from its parts: Upload-Length on it is 400."""
    first = await partial(handler, b"ab")
    second = await partial(handler, b"cd")
    before = stored_files(upload_dir)
    response = await final(handler, f"/files/{first}", f"/files/{second}", **extra)
    assert response.status == 400
    assert "Location" not in response.headers
    assert stored_files(upload_dir) == before


async def test_patch_on_final_is_403(handler: TusHandler, upload_dir: Path) -> None:
    """PATCH on a final upload is 403, finished or not."""
    done = await partial(handler, b"ab")
    open_part = await partial(handler, b"cdef", written=1)
    finished_final = id_of(await final(handler, f"/files/{done}"))
    pending_final = id_of(await final(handler, f"/files/{done}", f"/files/{open_part}"))
    before = stored_files(upload_dir)
    for upload_id, offset in [(finished_final, 2), (pending_final, 0)]:
        response = await handler.handle(
            make_request("PATCH", upload_id, patch_headers(offset), b"zz")
        )
        assert response.status == 403
    assert stored_files(upload_dir) == before


async def test_partial_metadata_is_not_carried_over(handler: TusHandler) -> None:
    """A final upload has only its own metadata, never its partials'."""
    first = await partial(handler, b"ab", meta=metadata(filename="part1.bin"))
    second = await partial(handler, b"cd", meta=metadata(filename="part2.bin"))
    bare = id_of(await final(handler, f"/files/{first}", f"/files/{second}"))
    assert "Upload-Metadata" not in (await head(handler, bare)).headers

    own = metadata(filename="whole.bin")
    named = id_of(
        await final(handler, f"/files/{first}", f"/files/{second}", **{"Upload-Metadata": own})
    )
    assert (await head(handler, named)).headers["Upload-Metadata"] == own
    download = await handler.handle(make_request("GET", named, {}))
    assert 'filename="whole.bin"' in download.headers["Content-Disposition"]


async def test_final_with_unfinished_partials(handler: TusHandler, upload_dir: Path) -> None:
    """concatenation-unfinished: no Upload-Offset until the partials finish, then assembled."""
    completed: list[HookEvent] = []
    handler.hooks.add("on_complete", completed.append)
    first = await partial(handler, b"abc")
    second = await partial(handler, b"defgh", written=2)
    response = await final(handler, f"/files/{first}", f"/files/{second}")
    assert response.status == 201
    final_id = id_of(response)

    state = await head(handler, final_id)
    assert state.status == 200
    assert "Upload-Offset" not in state.headers
    assert state.headers["Upload-Length"] == "8"
    assert state.headers["Upload-Concat"] == f"final;/files/{first} /files/{second}"
    assert (await handler.handle(make_request("GET", final_id, {}))).status == 404
    assert [e.upload.id for e in completed] == [first]

    await write(handler, second, 2, b"fgh")
    state = await head(handler, final_id)
    assert state.headers["Upload-Offset"] == "8"
    assert state.headers["Upload-Length"] == "8"
    assert (upload_dir / final_id).read_bytes() == b"abcdefgh"
    assert await download(handler, final_id) == b"abcdefgh"
    finals = [e.upload.id for e in completed if e.upload.concat == "final"]
    assert finals == [final_id]


async def test_final_with_deferred_partial_learns_its_length(handler: TusHandler) -> None:
    """A final over a deferred partial shows Upload-Length once every partial's is known."""
    first = await partial(handler, b"ab")
    created = await post(handler, **{"Upload-Concat": "partial", "Upload-Defer-Length": "1"})
    second = id_of(created)
    final_id = id_of(await final(handler, f"/files/{first}", f"/files/{second}"))
    state = await head(handler, final_id)
    assert "Upload-Length" not in state.headers
    assert "Upload-Offset" not in state.headers

    response = await handler.handle(
        make_request("PATCH", second, patch_headers(0, **{"Upload-Length": "3"}), b"c")
    )
    assert response.status == 204
    state = await head(handler, final_id)
    assert state.headers["Upload-Length"] == "5"
    assert "Upload-Offset" not in state.headers

    await write(handler, second, 1, b"de")
    assert await download(handler, final_id) == b"abcde"


async def test_final_learning_its_length_does_not_undo_an_assembly(handler: TusHandler) -> None:
    """The final's length is recorded under its lock: a request that assembled the final
    meanwhile keeps its finished record (no second on_complete, no 409)."""
    completed: list[HookEvent] = []
    handler.hooks.add("on_complete", completed.append)
    created = await post(handler, **{"Upload-Concat": "partial", "Upload-Defer-Length": "1"})
    part = id_of(created)
    final_id = id_of(await final(handler, f"/files/{part}"))
    response = await handler.handle(
        make_request("PATCH", part, patch_headers(0, **{"Upload-Length": "2"}), b"a")
    )
    assert response.status == 204

    async with handler.locker.lock(final_id) as held:
        # This HEAD sees an unfinished part of known length and goes to record the length.
        looking = asyncio.create_task(head(handler, final_id))
        for _ in range(500):
            if held.stop_requested():
                break
            await asyncio.sleep(0.01)
        assert held.stop_requested(), "the HEAD never asked for the final's lock"
        # Meanwhile the part finished and another request assembled the final.
        await write(handler, part, 1, b"b")
        record = await handler.store.get(final_id)
        await handler.storage.concatenate(final_id, (part,))
        now = handler.clock()
        done = record.copy(length=2, offset=2, completed_at=now)
        await handler.store.commit(done, expected_offset=0)
    state = await looking
    assert state.status == 200, state.body
    assert state.headers["Upload-Offset"] == "2"
    assert (await handler.store.get(final_id)).is_complete
    assert await download(handler, final_id) == b"ab"
    assert [e.upload.id for e in completed if e.upload.id == final_id] == []


async def test_on_complete_fires_once_for_final(handler: TusHandler) -> None:
    """The final upload is finished exactly once, however often it is looked at."""
    completed: list[HookEvent] = []
    handler.hooks.add("on_complete", completed.append)
    first = await partial(handler, b"ab")
    second = await partial(handler, b"cd")
    final_id = id_of(await final(handler, f"/files/{first}", f"/files/{second}"))
    for _ in range(3):
        await head(handler, final_id)
        await download(handler, final_id)
    finals = [e for e in completed if e.upload.id == final_id]
    assert len(finals) == 1
    assert finals[0].upload.offset == 4
    assert finals[0].upload.is_complete


@pytest.mark.parametrize(
    "concat",
    [
        pytest.param("final;", id="no-urls"),
        pytest.param("final", id="no-semicolon"),
        pytest.param("final; ", id="blank-list"),
        pytest.param("final;/files/xyz", id="short-id"),
        pytest.param("final;/files/../../etc/passwd", id="traversal"),
        pytest.param("final;/files/0123456789ABCDEF0123456789ABCDEF", id="uppercase-id"),
        pytest.param("final;/files/{id} /files/nope", id="one-bad-among-good"),
        pytest.param("final;/files/{id},/files/{id}", id="comma-separated"),
        pytest.param("final;/files/{id} /files/{id}", id="same-part-twice"),
        pytest.param(
            "final;/files/{id} http://elsewhere.example/files/{id}/", id="same-part-by-two-urls"
        ),
        pytest.param("final;/files/{id}, /files/{id}", id="comma-and-space"),
        pytest.param("final;http://[::1/files/{id}", id="invalid-url"),
        pytest.param("partial;", id="partial-with-semicolon"),
        pytest.param("complete", id="unknown-kind"),
        pytest.param("", id="empty"),
    ],
)
async def test_invalid_upload_concat_is_400(
    handler: TusHandler, upload_dir: Path, concat: str
) -> None:
    """Malformed Upload-Concat or invalid ids inside it: 400 and nothing created."""
    part = await partial(handler, b"ab")
    before = stored_files(upload_dir)
    headers = {"Upload-Concat": concat.format(id=part)}
    if concat.startswith("partial") or concat in ("complete", ""):
        headers["Upload-Length"] = "2"
    response = await post(handler, **headers)
    assert response.status == 400, response.body
    assert "Location" not in response.headers
    assert stored_files(upload_dir) == before


async def test_final_naming_unknown_upload_is_400(handler: TusHandler, upload_dir: Path) -> None:
    """A well-formed id that names no upload: 400."""
    part = await partial(handler, b"ab")
    before = stored_files(upload_dir)
    response = await final(handler, f"/files/{part}", f"/files/{UNKNOWN_ID}")
    assert response.status == 400
    assert stored_files(upload_dir) == before


@pytest.mark.parametrize(
    "kind",
    [pytest.param("plain", id="plain-upload"), pytest.param("final", id="final-upload")],
)
async def test_final_naming_non_partial_is_400(
    handler: TusHandler, upload_dir: Path, kind: str
) -> None:
    """Only partial uploads can be concatenated: a plain or final upload named is 400."""
    part = await partial(handler, b"ab")
    if kind == "plain":
        created = await post(handler, **{"Upload-Length": "2"})
        other = id_of(created)
        await write(handler, other, 0, b"cd")
    else:
        other = id_of(await final(handler, f"/files/{part}"))
    before = stored_files(upload_dir)
    response = await final(handler, f"/files/{part}", f"/files/{other}")
    assert response.status == 400
    assert stored_files(upload_dir) == before


async def test_final_naming_expired_partial_is_400(handler: TusHandler) -> None:
    """An expired partial cannot be concatenated."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    handler.clock = lambda: start
    part = await partial(handler, b"abcd", written=2)
    handler.clock = lambda: start + timedelta(days=2)
    response = await final(handler, f"/files/{part}")
    assert response.status == 400


@pytest.mark.parametrize(
    ("pieces", "deferred"),
    [
        pytest.param([b"abcdef", b"ghijkl"], False, id="finished-parts"),
        pytest.param([b"abcdef", b"ghijkl"], True, id="known-lengths-unfinished"),
    ],
)
async def test_final_longer_than_the_maximum_is_413(
    handler: TusHandler, upload_dir: Path, pieces: list[bytes], deferred: bool
) -> None:
    """Parts that together pass ``Tus-Max-Size`` make no final: 413, nothing created."""
    with_settings(handler, max_size=10)
    ids = [await partial(handler, data, written=0 if deferred else None) for data in pieces]
    before = stored_files(upload_dir)
    response = await final(handler, *(f"/files/{i}" for i in ids))
    assert response.status == 413, response.body
    assert b"maximum size of 10" in response.body
    assert "Location" not in response.headers
    assert stored_files(upload_dir) == before


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_final_whose_deferred_part_passes_the_maximum_is_never_assembled(
    handler: TusHandler, upload_dir: Path, method: str
) -> None:
    """A part whose length was deferred when the final was made counts once it is known: parts
    that together pass the maximum are refused (413) and never assembled, and the final
    expires like an unfinished upload."""
    with_settings(handler, max_size=10)
    first = await partial(handler, b"abcdef")
    created = await post(handler, **{"Upload-Concat": "partial", "Upload-Defer-Length": "1"})
    second = id_of(created)
    final_id = id_of(await final(handler, f"/files/{first}", f"/files/{second}"))
    response = await handler.handle(
        make_request("PATCH", second, patch_headers(0, **{"Upload-Length": "6"}), b"ghijkl")
    )
    assert response.status == 204

    refused = await handler.handle(make_request(method, final_id, TUS))
    assert refused.status == 413, refused.body
    assert (upload_dir / final_id).read_bytes() == b""
    record = await handler.store.get(final_id)
    assert not record.is_complete
    assert record.expires_at is not None
    assert await handler.is_expired(record, record.expires_at)


async def test_final_longer_than_any_store_can_count_is_413(
    handler: TusHandler, upload_dir: Path
) -> None:
    """With no maximum size, parts whose lengths add up past 2**63 - 1 (what every store keeps)
    make no final: 413 before anything is created, not a 500 leaving a data file behind."""
    with_settings(handler, max_size=None)
    huge = str(2**63 - 1)
    ids = [
        id_of(await post(handler, **{"Upload-Concat": "partial", "Upload-Length": huge}))
        for _ in range(2)
    ]
    before = stored_files(upload_dir)
    response = await final(handler, *(f"/files/{i}" for i in ids))
    assert response.status == 413, response.body
    assert stored_files(upload_dir) == before


async def test_final_at_the_maximum_is_created(handler: TusHandler) -> None:
    """Parts adding up to exactly ``Tus-Max-Size`` are concatenated."""
    with_settings(handler, max_size=10)
    ids = [await partial(handler, data) for data in (b"abcde", b"fghij")]
    response = await final(handler, *(f"/files/{i}" for i in ids))
    assert response.status == 201, response.body
    assert await download(handler, id_of(response)) == b"abcdefghij"


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_final_whose_parts_finished_in_time_does_not_expire(
    handler: TusHandler, method: str
) -> None:
    """A final made before its parts finished is assembled when first asked for, even after
    its own expiry: the parts finished in time."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    handler.clock = lambda: start
    part = await partial(handler, b"abcd", written=2)
    final_id = id_of(await final(handler, f"/files/{part}"))
    handler.clock = lambda: start + timedelta(hours=23)
    await write(handler, part, 2, b"cd")
    handler.clock = lambda: start + timedelta(days=2)
    response = await handler.handle(make_request(method, final_id, TUS))
    assert response.status == 200, response.body
    if method == "HEAD":
        assert response.headers["Upload-Offset"] == "4"
    else:
        assert await download(handler, final_id) == b"abcd"


async def test_final_whose_parts_did_not_finish_expires(handler: TusHandler) -> None:
    """A final whose parts are unfinished when it expires is gone (410)."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    handler.clock = lambda: start
    part = await partial(handler, b"abcd", written=2)
    final_id = id_of(await final(handler, f"/files/{part}"))
    handler.clock = lambda: start + timedelta(days=2)
    assert (await head(handler, final_id)).status == 410


async def test_partial_with_body_is_written(handler: TusHandler, upload_dir: Path) -> None:
    """A partial upload takes creation-with-upload like any other."""
    response = await handler.handle(
        make_request(
            "POST",
            None,
            {
                **TUS,
                "Upload-Concat": "partial",
                "Upload-Length": "3",
                "Content-Type": "application/offset+octet-stream",
            },
            b"abc",
        )
    )
    assert response.status == 201
    assert response.headers["Upload-Offset"] == "3"
    assert (upload_dir / id_of(response)).read_bytes() == b"abc"


class PlainLocalStorage(LocalStorage):
    """LocalStorage that does not offer concatenation (a ``None`` member fails the Protocol)."""

    concatenate = None  # type: ignore[assignment]


async def test_concat_refused_when_storage_cannot_concatenate(upload_dir: Path) -> None:
    """Without a concatenating storage, Upload-Concat is refused (400) and not advertised."""
    handler = make_handler(upload_dir, PlainLocalStorage(upload_dir, fsync=False))
    assert "concatenation" not in handler.extensions
    response = await post(handler, **{"Upload-Concat": "partial", "Upload-Length": "2"})
    assert response.status == 400
    assert [name for name in stored_files(upload_dir) if not name.startswith(".")] == []
