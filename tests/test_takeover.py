"""A newer request for a locked upload asks the holder to save and let go (design decision 6):
through the host-local file locks and through a store lease (LeaseLocker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flask_tus.async_models.json_store import JsonFileStore
from flask_tus.core import Headers, TusHandler, TusRequest, TusResponse, TusSettings
from flask_tus.core.errors import LockLost, UploadLocked, UploadNotFound
from flask_tus.core.lease import LeaseLocker
from flask_tus.core.protocols import Locker
from flask_tus.storage.local import LocalStorage
from flask_tus.storage.locks import ONE_FILE_SUPPORTED, FileLocker

PIECE = 64 * 1024
TOTAL = 20 * PIECE


class MemoryLeases:
    """A LeaseStore kept in memory, with the same semantics the database stores implement."""

    def __init__(self) -> None:
        self.leases: dict[str, tuple[str | None, float, bool]] = {}

    async def acquire_lease(self, upload_id: str, owner: str, ttl: float) -> bool:
        holder, expires, requested = self.leases.get(upload_id, (None, 0.0, False))
        now = time.monotonic()
        if holder is None or holder == owner or expires < now:
            self.leases[upload_id] = (owner, now + ttl, requested and holder == owner)
            return True
        return False

    async def release_lease(self, upload_id: str, owner: str) -> None:
        holder, _, _ = self.leases.get(upload_id, (None, 0.0, False))
        if holder == owner:
            self.leases[upload_id] = (None, 0.0, False)

    async def request_release(self, upload_id: str) -> None:
        holder, expires, _ = self.leases.get(upload_id, (None, 0.0, False))
        self.leases[upload_id] = (holder, expires, True)

    async def release_requested(self, upload_id: str, owner: str) -> bool:
        holder, _, requested = self.leases.get(upload_id, (None, 0.0, False))
        return holder == owner and requested


def make_handler(upload_dir: Path, locker: Locker) -> TusHandler:
    return TusHandler(
        store=JsonFileStore(upload_dir),
        storage=LocalStorage(upload_dir, fsync=False),
        locker=locker,
        settings=TusSettings(),
    )


async def slow_body(data: bytes, started: asyncio.Event) -> AsyncIterator[bytes]:
    """A client sending one piece every 20 ms."""
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]
        started.set()
        await asyncio.sleep(0.02)


async def one_shot(data: bytes) -> AsyncIterator[bytes]:
    yield data


def patch(upload_id: str, offset: int, body: AsyncIterator[bytes], length: int) -> TusRequest:
    headers = Headers.from_pairs(
        [
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Offset", str(offset)),
            ("Content-Type", "application/offset+octet-stream"),
        ]
    )
    return TusRequest("PATCH", upload_id, headers, body=body, content_length=length)


async def create(handler: TusHandler, length: int) -> str:
    headers = Headers.from_pairs([("Tus-Resumable", "1.0.0"), ("Upload-Length", str(length))])
    response = await handler.handle(TusRequest("POST", None, headers))
    assert response.status == 201
    return response.headers["Location"].rsplit("/", 1)[-1]


async def takeover(handler: TusHandler, upload_dir: Path) -> None:
    data = bytes(range(256)) * (TOTAL // 256)
    upload_id = await create(handler, TOTAL)
    started = asyncio.Event()
    old = asyncio.create_task(handler.handle(patch(upload_id, 0, slow_body(data, started), TOTAL)))
    await started.wait()
    # The reconnecting client read offset 0 before the old request saved anything.
    new: TusResponse = await handler.handle(patch(upload_id, 0, one_shot(data), TOTAL))
    old_response = await old

    # The old request stopped early, saved what had arrived and let go, telling its client it
    # was interrupted; the new one got the lock and learned (409) that the offset moved,
    # instead of being locked out (423).
    assert old_response.status == 400
    assert b"interrupted" in old_response.body
    saved = (await handler.store.get(upload_id)).offset
    assert 0 < saved < TOTAL
    assert new.status == 409
    assert (upload_dir / upload_id).read_bytes() == data[:saved]

    rest = await handler.handle(patch(upload_id, saved, one_shot(data[saved:]), TOTAL - saved))
    assert rest.status == 204
    assert (upload_dir / upload_id).read_bytes() == data


@pytest.mark.parametrize(
    "one_file",
    [
        pytest.param(
            True,
            id="one-file",
            marks=pytest.mark.skipif(not ONE_FILE_SUPPORTED, reason="needs 64-bit Linux"),
        ),
        pytest.param(False, id="file-per-upload"),
    ],
)
async def test_file_lock_holder_lets_go_for_a_newer_request(
    upload_dir: Path, one_file: bool
) -> None:
    """With the host-local locks, the newer request gets the upload, not a 423."""
    locker = FileLocker(upload_dir, timeout=2, one_file=one_file)
    await takeover(make_handler(upload_dir, locker), upload_dir)
    assert not list(upload_dir.glob("*.stop"))


async def test_lease_holder_lets_go_for_a_newer_request(upload_dir: Path) -> None:
    """With a store lease (several hosts), the release request reaches the holder."""
    locker = LeaseLocker(MemoryLeases(), ttl=5, timeout=2, poll=0.02)
    await takeover(make_handler(upload_dir, locker), upload_dir)


async def test_lease_refuses_while_held_and_frees_on_exit() -> None:
    """A second holder waits out the timeout and gets UploadLocked; after release it gets in."""
    leases = MemoryLeases()
    locker = LeaseLocker(leases, ttl=5, timeout=0.1)
    upload_id = "a" * 32
    async with locker.lock(upload_id) as handle:
        with pytest.raises(UploadLocked):
            async with locker.lock(upload_id):
                pass
        # The refused waiter asked the holder to let go; the holder sees it on its next poll.
        await asyncio.sleep(locker.poll * 2)
        assert handle.stop_requested()
    async with locker.lock(upload_id) as handle:
        assert not handle.stop_requested()
    assert leases.leases[upload_id][0] is None


async def test_stale_lease_is_taken_over_after_expiry() -> None:
    """A holder that died (never renews nor releases) blocks the upload only until its ttl."""
    leases = MemoryLeases()
    upload_id = "b" * 32
    assert await leases.acquire_lease(upload_id, "dead-host", 0.2)
    locker = LeaseLocker(leases, ttl=5, timeout=1)
    async with locker.lock(upload_id):
        holder = leases.leases[upload_id][0]
        assert holder not in (None, "dead-host")


async def test_lease_is_renewed_while_held() -> None:
    """A long write keeps its lease: renewal happens well before the ttl runs out."""
    leases = MemoryLeases()
    upload_id = "c" * 32
    locker = LeaseLocker(leases, ttl=0.3, timeout=0.05, poll=0.02)
    async with locker.lock(upload_id):
        await asyncio.sleep(0.6)
        assert not await leases.acquire_lease(upload_id, "other", 1)


async def test_lease_errors_from_the_store_propagate() -> None:
    """An unknown upload is the store's UploadNotFound, not a lock error."""

    class Missing(MemoryLeases):
        async def acquire_lease(self, upload_id: str, owner: str, ttl: float) -> bool:
            raise UploadNotFound()

    with pytest.raises(UploadNotFound):
        async with LeaseLocker(Missing()).lock("d" * 32):
            pass


async def test_cancelled_wait_for_a_lease_gives_back_what_it_took() -> None:
    """A request cancelled while its acquire is in flight (server shutdown, client gone) does
    not leave a lease behind that would block the upload until it expires."""

    class SlowAcquire(MemoryLeases):
        async def acquire_lease(self, upload_id: str, owner: str, ttl: float) -> bool:
            taken = await super().acquire_lease(upload_id, owner, ttl)
            await asyncio.sleep(10)  # the database answered, the reply is still on its way
            return taken

    leases = SlowAcquire()
    upload_id = "e" * 32

    async def take() -> None:
        async with LeaseLocker(leases, ttl=60, timeout=1).lock(upload_id):
            pass

    waiter = asyncio.create_task(take())
    await asyncio.sleep(0.05)
    assert leases.leases[upload_id][0] is not None
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert leases.leases[upload_id][0] is None


class FlakyLeases(MemoryLeases):
    """MemoryLeases whose every call fails (``down``) or hangs (``hung``) on demand, as a
    database cut off from this host does."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.hung = False

    async def _reach(self) -> None:
        if self.hung:
            await asyncio.Event().wait()
        if self.down:
            raise ConnectionError("store unreachable")

    async def acquire_lease(self, upload_id: str, owner: str, ttl: float) -> bool:
        await self._reach()
        return await super().acquire_lease(upload_id, owner, ttl)

    async def release_lease(self, upload_id: str, owner: str) -> None:
        await self._reach()
        await super().release_lease(upload_id, owner)

    async def release_requested(self, upload_id: str, owner: str) -> bool:
        await self._reach()
        return await super().release_requested(upload_id, owner)


def steal(leases: MemoryLeases, upload_id: str) -> None:
    """Another host takes the lease, as it may once the holder's has expired."""
    leases.leases[upload_id] = ("other-host", time.monotonic() + 60, False)


async def lease_lost_while_writing(
    upload_dir: Path, break_store: Any, expected_status: int
) -> None:
    """A PATCH under a lease whose store breaks (``break_store(leases, upload_id)``) mid-body:
    it stops writing and commits nothing; the record keeps its offset."""
    leases = FlakyLeases()
    locker = LeaseLocker(leases, ttl=0.6, timeout=0.5, interval=0.01, poll=0.02)
    handler = make_handler(upload_dir, locker)
    # 60 pieces, one every 20 ms: 1.2 s, twice the ttl. The loss is seen at the next renewal
    # (a stolen lease) or 2/3 of the ttl after the last one (a store away): 0.4 s at most.
    length = 60 * PIECE
    data = bytes(range(256)) * (length // 256)
    upload_id = await create(handler, length)
    started = asyncio.Event()
    request = handler.handle(patch(upload_id, 0, slow_body(data, started), length))
    task = asyncio.create_task(request)
    await started.wait()
    break_store(leases, upload_id)
    async with asyncio.timeout(5):
        response = await task
    assert response.status == expected_status, response.body
    assert (await handler.store.get(upload_id)).offset == 0
    assert (upload_dir / upload_id).stat().st_size < length


async def test_lease_taken_by_another_host_stops_the_writer_and_its_commit(
    upload_dir: Path,
) -> None:
    """A holder whose lease another host took (it stalled past the ttl) stops writing at its
    next renewal and commits nothing (409): its bytes past the offset are the new owner's to
    cut."""
    await lease_lost_while_writing(upload_dir, steal, 409)


async def test_unreachable_store_stops_the_writer_before_the_lease_could_lapse(
    upload_dir: Path,
) -> None:
    """When the lease cannot be renewed for 2/3 of its ttl, the writer stops, well before
    another host could take the lease over; with the store still away nothing is committed."""

    def cut_off(leases: FlakyLeases, upload_id: str) -> None:
        leases.down = True

    await lease_lost_while_writing(upload_dir, cut_off, 409)


async def test_hanging_store_cannot_keep_the_writer_going(upload_dir: Path) -> None:
    """A store whose calls never return is given up on (each call is bounded): the writer
    stops as with an unreachable one and commits nothing."""

    def hang(leases: FlakyLeases, upload_id: str) -> None:
        leases.hung = True

    await lease_lost_while_writing(upload_dir, hang, 409)


async def test_confirm_renews_the_lease_before_the_commit(upload_dir: Path) -> None:
    """Right before the commit the holder renews its lease for a full ttl, so no other host can
    take it during the commit; a lease another host holds by then refuses the commit."""
    leases = MemoryLeases()
    locker = LeaseLocker(leases, ttl=30, timeout=0.5)
    upload_id = await create(make_handler(upload_dir, locker), TOTAL)
    async with locker.lock(upload_id) as held:
        _, expires_before, _ = leases.leases[upload_id]
        await asyncio.sleep(0.05)
        await held.confirm()
        _, expires_after, _ = leases.leases[upload_id]
        assert expires_after > expires_before
        steal(leases, upload_id)
        with pytest.raises(LockLost):
            await held.confirm()
