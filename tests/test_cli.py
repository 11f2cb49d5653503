"""``flask tus delete-expired``: expiry cleanup, dry runs, orphans and busy uploads."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import OCTET, TUS, create, patch_headers
from flask import Flask

from flask_tus.core import Headers, TusRequest, TusResponse
from flask_tus.core.errors import UploadNotFound
from flask_tus.core.ids import new_id
from flask_tus.core.maintenance import INTERRUPTED_AFTER
from flask_tus.core.protocols import Locker, LockHandle

#: What a test holder does with the lock instead of waiting for the block to end: it gets the
#: holder's handle and an event set when the block ends.
HolderWork = Callable[[LockHandle, threading.Event], Awaitable[None]]


def upload_id_of(location: str) -> str:
    return location.rsplit("/", 1)[-1]


def run(app: Flask, *args: str) -> Result:
    result = app.test_cli_runner().invoke(args=["tus", *args])
    assert result.exception is None, result.output
    assert result.exit_code == 0, result.output
    return result


def expire(app: Flask, upload_id: str) -> None:
    """Move the record's ``expires_at`` one hour into the past, through the store."""
    store = app.extensions["tus"].handler.store

    async def rewrite() -> None:
        upload = await store.get(upload_id)
        past = upload.created_at - timedelta(hours=1)
        await store.commit(upload.copy(expires_at=past), expected_offset=upload.offset)

    asyncio.run(rewrite())


def exists(app: Flask, upload_id: str) -> bool:
    """Whether the store still has the record."""
    store = app.extensions["tus"].handler.store
    try:
        asyncio.run(store.get(upload_id))
    except UploadNotFound:
        return False
    return True


def new_upload(app: Flask, data: bytes = b"", length: int = 10) -> str:
    client = app.test_client()
    location = create(client, length=length)
    if data:
        assert client.patch(location, data=data, headers=patch_headers(0)).status_code == 204
    return upload_id_of(location)


@pytest.fixture
def cli_app(make_app: Any) -> Flask:
    app: Flask = make_app(TUS_LOCK_TIMEOUT=0.05)[0]
    return app


def test_expired_uploads_are_removed_with_their_data(cli_app: Flask, upload_dir: Path) -> None:
    """Expired uploads lose record and data together; live ones stay; the count is printed."""
    stale = new_upload(cli_app, b"abc")
    stale_empty = new_upload(cli_app)
    live = new_upload(cli_app, b"xyz")
    expire(cli_app, stale)
    expire(cli_app, stale_empty)

    result = run(cli_app, "delete-expired")

    assert f"deleted expired upload {stale}" in result.output
    assert f"deleted expired upload {stale_empty}" in result.output
    assert live not in result.output
    assert "deleted 2 expired" in result.output
    for gone in (stale, stale_empty):
        assert not exists(cli_app, gone)
        assert not (upload_dir / gone).exists()
        assert not (upload_dir / f"{gone}.json").exists()
    assert exists(cli_app, live)
    assert (upload_dir / live).read_bytes() == b"xyz"
    head = cli_app.test_client().head(f"/files/{stale}", headers=TUS)
    assert head.status_code in (404, 410)


def test_dry_run_removes_nothing_and_says_what_it_would_delete(
    cli_app: Flask, upload_dir: Path
) -> None:
    """``--dry-run`` lists the expired uploads as "would delete" and leaves every file."""
    stale = new_upload(cli_app, b"abc")
    new_upload(cli_app)
    expire(cli_app, stale)
    before = sorted(p.name for p in upload_dir.iterdir())

    result = run(cli_app, "delete-expired", "--dry-run")

    assert f"would delete expired upload {stale}" in result.output
    assert "would delete 1 expired" in result.output
    assert "deleted" not in result.output.replace("would delete", "")
    assert sorted(p.name for p in upload_dir.iterdir()) == before
    assert exists(cli_app, stale)
    # The real run afterwards still finds it.
    assert f"deleted expired upload {stale}" in run(cli_app, "delete-expired").output


def test_nothing_to_do_prints_zero_counts(cli_app: Flask) -> None:
    """With nothing expired, nothing is deleted and the summary says 0."""
    upload_id = new_upload(cli_app, b"abc")
    result = run(cli_app, "delete-expired")
    assert "deleted 0 expired, skipped 0 in use, 0 orphan data, 0 orphan records" in result.output
    assert exists(cli_app, upload_id)


def test_finished_uploads_do_not_expire_by_default(cli_app: Flask, upload_dir: Path) -> None:
    """A finished upload past its expiry is kept unless ``TUS_EXPIRE_COMPLETED`` is set."""
    done = new_upload(cli_app, b"0123456789", length=10)
    expire(cli_app, done)
    result = run(cli_app, "delete-expired")
    assert "deleted 0 expired" in result.output
    assert exists(cli_app, done)
    assert (upload_dir / done).read_bytes() == b"0123456789"


def test_finished_uploads_expire_when_configured(make_app: Any, upload_dir: Path) -> None:
    """With ``TUS_EXPIRE_COMPLETED = True`` a finished upload past its expiry is removed."""
    app, _ = make_app(TUS_EXPIRE_COMPLETED=True)
    done = new_upload(app, b"0123456789", length=10)
    expire(app, done)
    result = run(app, "delete-expired")
    assert f"deleted expired upload {done}" in result.output
    assert "deleted 1 expired" in result.output
    assert not exists(app, done)
    assert not (upload_dir / done).exists()


def test_uploads_without_expiry_are_kept(make_app: Any) -> None:
    """With ``TUS_EXPIRATION = None`` records carry no expiry and the sweep never removes them."""
    app, _ = make_app(TUS_EXPIRATION=None)
    upload_id = new_upload(app, b"abc")
    assert "deleted 0 expired" in run(app, "delete-expired").output
    assert exists(app, upload_id)


def test_orphans_are_reported_and_kept(cli_app: Flask, upload_dir: Path) -> None:
    """Data without a record and a record without data are reported, never deleted."""
    orphan_data = new_id()
    (upload_dir / orphan_data).write_bytes(b"lost bytes")
    orphan_record = new_upload(cli_app, b"abc")
    (upload_dir / orphan_record).unlink()
    normal = new_upload(cli_app, b"abc")

    for args in (("delete-expired",), ("delete-expired", "--dry-run")):
        result = run(cli_app, *args)
        assert f"orphan data without a record: {orphan_data}" in result.output
        assert f"orphan record without data: {orphan_record}" in result.output
        assert "1 orphan data, 1 orphan records" in result.output
        assert normal not in result.output

    assert (upload_dir / orphan_data).read_bytes() == b"lost bytes"
    assert exists(cli_app, orphan_record)


def _age(path: Path, seconds: float) -> None:
    """Set ``path``'s modification time ``seconds`` into the past."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_empty_data_of_an_interrupted_creation_is_removed(
    cli_app: Flask, upload_dir: Path, dry_run: bool
) -> None:
    """Empty data without a record, untouched for an hour (what a crash between creating an
    upload's data and its record leaves; nobody got its URL), is removed, or on a dry run
    would be. Younger empty data (a creation under way) and data holding bytes are only
    reported; so is data whose record cannot be read."""
    interrupted, young, with_bytes, unreadable = new_id(), new_id(), new_id(), new_id()
    for upload_id in (interrupted, young, unreadable):
        (upload_dir / upload_id).write_bytes(b"")
    (upload_dir / with_bytes).write_bytes(b"lost bytes")
    (upload_dir / f"{unreadable}.json").write_bytes(b"")
    hour = INTERRUPTED_AFTER.total_seconds()
    for upload_id in (interrupted, with_bytes, unreadable):
        _age(upload_dir / upload_id, hour + 60)
    _age(upload_dir / young, hour - 60)
    normal = new_upload(cli_app, b"")  # finished, empty, and has a record
    _age(upload_dir / normal, hour + 60)

    result = run(cli_app, "delete-expired", *(["--dry-run"] if dry_run else []))
    verb = "would delete" if dry_run else "deleted"
    assert f"{verb} empty data of an interrupted creation: {interrupted}" in result.output
    for upload_id in (young, with_bytes, unreadable):
        assert f"orphan data without a record: {upload_id}" in result.output
    assert f", {verb} 1 interrupted" in result.output
    assert normal not in result.output
    assert (upload_dir / interrupted).exists() == dry_run
    for upload_id in (young, with_bytes, unreadable, normal):
        assert (upload_dir / upload_id).exists()
    assert result.exit_code == 0


def test_interrupted_creation_whose_record_arrives_is_kept(
    cli_app: Flask, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data that looked like an interrupted creation is looked at again under its lock: when
    its record has come since the listing, it stays."""
    upload_id = new_upload(cli_app, b"")
    _age(upload_dir / upload_id, INTERRUPTED_AFTER.total_seconds() + 60)
    store = cli_app.extensions["tus"].handler.store
    listed = store.iter_uploads

    async def without_it() -> Any:
        async for upload in listed():
            if upload.id != upload_id:
                yield upload

    real_get = store.get
    locker = cli_app.extensions["tus"].handler.locker
    real_lock = locker.lock
    arrived: list[str] = []

    async def not_yet(asked_id: str) -> Any:
        if asked_id == upload_id and not arrived:
            raise UploadNotFound()
        return await real_get(asked_id)

    def lock_then_arrive(locked_id: str, **kwargs: Any) -> Any:
        # The record is created while the sweep waits for the lock.
        arrived.append(locked_id)
        return real_lock(locked_id, **kwargs)

    monkeypatch.setattr(store, "iter_uploads", without_it)
    monkeypatch.setattr(store, "get", not_yet)
    monkeypatch.setattr(locker, "lock", lock_then_arrive)
    result = run(cli_app, "delete-expired")
    assert arrived == [upload_id]
    assert f"orphan data without a record: {upload_id}" in result.output
    assert "interrupted" not in result.output
    assert (upload_dir / upload_id).exists()


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_expired_record_without_data_is_removed_not_reported(
    cli_app: Flask, upload_dir: Path, dry_run: bool
) -> None:
    """An expired record whose data is already gone is removed (or, on a dry run, would be),
    and not reported as an orphan as well."""
    upload_id = new_upload(cli_app, b"abc")
    (upload_dir / upload_id).unlink()
    expire(cli_app, upload_id)
    result = run(cli_app, "delete-expired", *(["--dry-run"] if dry_run else []))
    assert f"{'would delete' if dry_run else 'deleted'} expired upload {upload_id}" in result.output
    assert "orphan record" not in result.output.replace("0 orphan records", "")
    assert exists(cli_app, upload_id) == dry_run


def concatenated(app: Flask, *parts: bytes, finished: bool = True) -> tuple[str, list[str]]:
    """A final upload made of partial uploads of ``parts`` (sent whole when ``finished``,
    else all but their last byte), created before they finish and never asked for since."""
    client = app.test_client()
    part_urls = [create(client, length=len(data), **{"Upload-Concat": "partial"}) for data in parts]
    created = client.post(
        "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(part_urls)}
    )
    assert created.status_code == 201
    for url, data in zip(part_urls, parts, strict=True):
        sent = data if finished else data[:-1]
        assert client.patch(url, data=sent, headers=patch_headers(0)).status_code == 204
    return upload_id_of(created.headers["Location"]), [upload_id_of(url) for url in part_urls]


def test_expired_final_whose_parts_finished_is_kept(cli_app: Flask, upload_dir: Path) -> None:
    """A final whose parts all finished is only waiting to be assembled: past its expiry the
    sweep keeps it, and the next HEAD assembles it."""
    final_id, _ = concatenated(cli_app, b"ab", b"cd")
    expire(cli_app, final_id)
    result = run(cli_app, "delete-expired")
    assert "deleted 0 expired" in result.output
    head = cli_app.test_client().head(f"/files/{final_id}", headers=TUS)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "4"
    assert (upload_dir / final_id).read_bytes() == b"abcd"


@pytest.mark.parametrize("part_state", ["unfinished", "deleted"])
def test_expired_final_whose_parts_did_not_finish_is_removed(
    cli_app: Flask, upload_dir: Path, part_state: str
) -> None:
    """A final with a part unfinished or gone at its expiry is removed like any upload."""
    final_id, part_ids = concatenated(cli_app, b"ab", b"cd", finished=part_state == "deleted")
    if part_state == "deleted":
        response = cli_app.test_client().delete(f"/files/{part_ids[1]}", headers=TUS)
        assert response.status_code == 204
    expire(cli_app, final_id)
    result = run(cli_app, "delete-expired")
    assert f"deleted expired upload {final_id}" in result.output
    assert not exists(cli_app, final_id)
    assert not (upload_dir / final_id).exists()


@contextmanager
def held_lock(app: Flask, upload_id: str, work: HolderWork | None = None) -> Iterator[None]:
    """Hold ``upload_id``'s lock from another thread (on its own event loop) for the block or,
    given ``work``, for as long as ``work`` runs (the block may then end first)."""
    locker = app.extensions["tus"].handler.locker
    locked, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    async def hold() -> None:
        async with locker.lock(upload_id) as handle:
            locked.set()
            if work is None:
                await asyncio.to_thread(release.wait, 30)
            else:
                await work(handle, release)

    def target() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
            locked.set()

    thread = threading.Thread(target=target)
    thread.start()
    try:
        assert locked.wait(30)
        assert not errors, errors
        yield
    finally:
        release.set()
        thread.join(30)
    assert not errors, errors


def test_upload_in_use_is_skipped(cli_app: Flask, upload_dir: Path) -> None:
    """An expired upload whose lock is held is skipped as "in use" and keeps its files."""
    busy = new_upload(cli_app, b"abc")
    idle = new_upload(cli_app, b"def")
    expire(cli_app, busy)
    expire(cli_app, idle)

    with held_lock(cli_app, busy):
        result = run(cli_app, "delete-expired")

    assert f"skipped expired upload {busy}: in use" in result.output
    assert f"deleted expired upload {idle}" in result.output
    assert "deleted 1 expired, skipped 1 in use" in result.output
    assert exists(cli_app, busy)
    assert (upload_dir / busy).read_bytes() == b"abc"

    # Once the lock is free, the next sweep removes it.
    again = run(cli_app, "delete-expired")
    assert f"deleted expired upload {busy}" in again.output
    assert not exists(cli_app, busy)
    assert not (upload_dir / busy).exists()


def signal_lock_requests(
    monkeypatch: pytest.MonkeyPatch, app: Flask, upload_id: str, asked: threading.Event
) -> None:
    """Set ``asked`` when the app's locker is next asked for ``upload_id``'s lock (by the sweep,
    when a test holder already holds it), before the request starts to wait."""
    locker: Locker = app.extensions["tus"].handler.locker
    lock = locker.lock

    def signalling_lock(wanted: str, **options: bool) -> AbstractAsyncContextManager[LockHandle]:
        if wanted == upload_id:
            asked.set()
        return lock(wanted, **options)

    monkeypatch.setattr(locker, "lock", signalling_lock)


def test_upload_finished_while_the_sweep_waits_is_kept(
    make_app: Any, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep listed an upload as unfinished and expired; the request holding its lock
    finishes it while the sweep waits. The sweep reads the record again once it holds the lock,
    sees a finished upload, and keeps record and bytes."""
    app, _ = make_app(TUS_LOCK_TIMEOUT=30)
    handler = app.extensions["tus"].handler
    upload_id = new_upload(app, b"abc", length=10)
    expire(app, upload_id)
    asked = threading.Event()

    async def finish(handle: LockHandle, block_done: threading.Event) -> None:
        # What a PATCH holding the lock does, without looking for stop requests: write the
        # rest of the bytes, then commit the final offset.
        assert await asyncio.to_thread(asked.wait, 30), "the sweep never asked for the lock"
        upload = await handler.store.get(upload_id)
        async with handler.storage.open_writer(upload_id, upload.offset) as writer:
            await writer.write(b"defghij")
            await writer.flush()
        finished = upload.copy(offset=10, completed_at=handler.clock())
        await handler.store.commit(finished, expected_offset=upload.offset)

    with held_lock(app, upload_id, finish):
        signal_lock_requests(monkeypatch, app, upload_id, asked)
        result = run(app, "delete-expired")

    assert "deleted 0 expired, skipped 0 in use" in result.output
    assert exists(app, upload_id)
    record = asyncio.run(handler.store.get(upload_id))
    assert record.offset == 10
    assert record.is_complete
    assert (upload_dir / upload_id).read_bytes() == b"abcdefghij"


def test_sweep_never_asks_the_holder_of_an_expired_upload_to_stop(
    make_app: Any, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the sweep waits for an expired upload's lock, the holder (a running PATCH would
    cut its body short if asked) sees no request to stop; the sweep gives up, reports the upload
    in use and leaves it."""
    app, _ = make_app(TUS_LOCK_TIMEOUT=0.5)
    upload_id = new_upload(app, b"abc")
    expire(app, upload_id)
    asked = threading.Event()
    seen: list[bool] = []

    async def watch(handle: LockHandle, block_done: threading.Event) -> None:
        assert await asyncio.to_thread(asked.wait, 30), "the sweep never asked for the lock"
        # Polled as a PATCH polls between body pieces, until the sweep has given up.
        while not block_done.is_set():
            seen.append(handle.stop_requested())
            await asyncio.sleep(0.01)

    with held_lock(app, upload_id, watch):
        signal_lock_requests(monkeypatch, app, upload_id, asked)
        result = run(app, "delete-expired")

    assert seen
    assert not any(seen), "the sweep asked the holder to stop"
    assert f"skipped expired upload {upload_id}: in use" in result.output
    assert "deleted 0 expired, skipped 1 in use" in result.output
    assert exists(app, upload_id)
    assert (upload_dir / upload_id).read_bytes() == b"abc"


def test_patch_finishing_while_the_sweep_waits_succeeds_and_keeps_its_upload(
    make_app: Any, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATCH that passed its expiry check runs past ``expires_at`` and finishes while the
    sweep waits for its lock: its client hears 204, and the upload it was told is saved stays,
    record and bytes."""
    app, _ = make_app(TUS_LOCK_TIMEOUT=30)
    handler = app.extensions["tus"].handler
    upload_id = new_upload(app, b"abc", length=10)
    started, asked = threading.Event(), threading.Event()
    responses: list[TusResponse] = []
    errors: list[BaseException] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"def"
        started.set()
        await asyncio.to_thread(asked.wait, 30)
        yield b"ghij"

    def patch() -> None:
        headers = Headers.from_pairs(
            [*TUS.items(), ("Upload-Offset", "3"), ("Content-Type", OCTET)]
        )
        request = TusRequest("PATCH", upload_id, headers, body=body(), content_length=7)
        try:
            responses.append(asyncio.run(handler.handle(request)))
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=patch)
    thread.start()
    try:
        assert started.wait(30)
        assert not errors, errors
        # The clock passes expires_at while the PATCH runs.
        expire(app, upload_id)
        signal_lock_requests(monkeypatch, app, upload_id, asked)
        result = run(app, "delete-expired")
    finally:
        asked.set()
        thread.join(30)

    assert not errors, errors
    assert [response.status for response in responses] == [204], responses
    assert "deleted 0 expired, skipped 0 in use" in result.output
    assert exists(app, upload_id)
    assert asyncio.run(handler.store.get(upload_id)).is_complete
    assert (upload_dir / upload_id).read_bytes() == b"abcdefghij"


def test_counts_of_a_mixed_sweep(cli_app: Flask, upload_dir: Path) -> None:
    """The summary counts deleted, in-use and orphan uploads of one sweep."""
    expired = [new_upload(cli_app, b"a") for _ in range(3)]
    for upload_id in expired:
        expire(cli_app, upload_id)
    busy = new_upload(cli_app)
    expire(cli_app, busy)
    (upload_dir / new_id()).write_bytes(b"")
    (upload_dir / new_id()).write_bytes(b"x")
    without_data = new_upload(cli_app)
    (upload_dir / without_data).unlink()

    with held_lock(cli_app, busy):
        result = run(cli_app, "delete-expired")
    assert result.output.strip().splitlines()[-1] == (
        "deleted 3 expired, skipped 1 in use, 2 orphan data, 1 orphan records"
    )


def test_seed_spelling_delete_expired(cli_app: Flask, upload_dir: Path) -> None:
    """``flask tus delete_expired`` (the seed's spelling) does the same work."""
    stale = new_upload(cli_app, b"abc")
    expire(cli_app, stale)
    dry = run(cli_app, "delete_expired", "--dry-run")
    assert f"would delete expired upload {stale}" in dry.output
    assert exists(cli_app, stale)
    result = run(cli_app, "delete_expired")
    assert f"deleted expired upload {stale}" in result.output
    assert not exists(cli_app, stale)
    assert not (upload_dir / stale).exists()


def test_command_runs_its_own_event_loop_each_time(cli_app: Flask) -> None:
    """From plain sync code, with no loop running, the command works and works again."""
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    for _ in range(3):
        stale = new_upload(cli_app, b"abc")
        expire(cli_app, stale)
        assert "deleted 1 expired" in run(cli_app, "delete-expired").output
        assert not exists(cli_app, stale)


def test_group_help_lists_the_command(cli_app: Flask) -> None:
    """``flask tus --help`` lists ``delete-expired``."""
    result = cli_app.test_cli_runner().invoke(args=["tus", "--help"])
    assert result.exit_code == 0
    assert "delete-expired" in result.output


def test_one_failing_upload_does_not_stop_the_cleanup(
    cli_app: Flask, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An expired upload that cannot be removed is reported (exit status 1, error logged), and
    the cleanup goes on with the others."""
    ids = [new_upload(cli_app, b"abc") for _ in range(3)]
    for upload_id in ids:
        expire(cli_app, upload_id)
    storage = cli_app.extensions["tus"].handler.storage
    real_delete = storage.delete

    async def delete(upload_id: str) -> None:
        if upload_id == ids[1]:
            raise PermissionError(f"cannot remove {upload_id}")
        await real_delete(upload_id)

    monkeypatch.setattr(storage, "delete", delete)
    result = cli_app.test_cli_runner().invoke(args=["tus", "delete-expired"])
    assert result.exit_code == 1
    assert f"could not delete expired upload {ids[1]}" in result.output
    assert "deleted 2 expired" in result.output
    assert "1 failed" in result.output
    assert not (upload_dir / ids[0]).exists()
    assert not (upload_dir / ids[2]).exists()
    assert (upload_dir / ids[1]).exists()


def test_unreadable_store_is_one_clear_line(
    cli_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the records cannot be listed at all, the command says so in one line and exits
    with status 1, without a traceback."""
    store = cli_app.extensions["tus"].handler.store

    async def broken() -> Any:
        raise OSError("the disk went away")
        yield  # pragma: no cover - makes this an async generator

    monkeypatch.setattr(store, "iter_uploads", broken)
    result = cli_app.test_cli_runner().invoke(args=["tus", "delete-expired"])
    assert result.exit_code == 1
    assert "cleanup failed" in result.output and "the disk went away" in result.output
    assert "Traceback" not in result.output
