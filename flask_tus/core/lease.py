"""One writer per upload across hosts: a lease kept in the metadata store.

:class:`LeaseLocker` turns a :class:`~flask_tus.core.protocols.LeaseStore` into a
:class:`~flask_tus.core.protocols.Locker`. Server processes on different hosts that share the
database and the upload storage never interleave writes: a writer holds the upload's lease
(owner, expiry) and renews it while it works; a lease whose holder died expires and is taken
over; a waiter asks the holder to let go (the release request), and the holder does so between
body pieces. A waiter that must not take over (``take_over=False``) never asks: it only waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from .errors import UploadLocked
from .protocols import LeaseStore, Locker, LockHandle

log = logging.getLogger("flask_tus")


class LeaseHandle:
    """The lease holder's view: set when a release was requested (polled in the background)."""

    def __init__(self) -> None:
        self.requested = False

    def stop_requested(self) -> bool:
        return self.requested


class LeaseLocker:
    """A :class:`Locker` over a store's leases, optionally inside a host-local ``local`` lock.

    ``ttl``: seconds a lease lives without renewal (a crashed holder blocks the upload at most
    this long). ``timeout``: seconds a request waits before ``UploadLocked``. The holder renews
    its lease and looks for release requests every ``ttl / 3`` seconds or ``poll`` seconds,
    whichever is shorter.
    """

    def __init__(
        self,
        store: LeaseStore,
        *,
        local: Locker | None = None,
        ttl: float = 30.0,
        timeout: float = 0.5,
        interval: float = 0.05,
        poll: float = 0.25,
    ) -> None:
        self.store = store
        self.local = local
        self.ttl = ttl
        self.timeout = timeout
        self.interval = interval
        self.poll = min(poll, ttl / 3)

    @asynccontextmanager
    async def lock(self, upload_id: str, *, take_over: bool = True) -> AsyncIterator[LockHandle]:
        """Hold ``upload_id``'s lease (and the ``local`` lock first) for the block; see
        :meth:`Locker.lock <flask_tus.core.protocols.Locker.lock>`. ``UploadNotFound`` when the
        store has no such upload."""
        local: AbstractAsyncContextManager[LockHandle | None] = (
            self.local.lock(upload_id, take_over=take_over)
            if self.local
            else contextlib.nullcontext()
        )
        async with local as local_handle:
            owner = secrets.token_hex(16)
            deadline = time.monotonic() + self.timeout
            try:
                while not await self.store.acquire_lease(upload_id, owner, self.ttl):
                    if time.monotonic() >= deadline:
                        raise UploadLocked()
                    if take_over:
                        await self.store.request_release(upload_id)
                    await asyncio.sleep(self.interval)
            except asyncio.CancelledError:
                # An acquire cut short may still have landed in the database: give it back
                # rather than block the upload until the lease expires.
                await asyncio.shield(self.store.release_lease(upload_id, owner))
                raise
            handle = _Combined(LeaseHandle(), local_handle)
            keeper = asyncio.create_task(self._keep(upload_id, owner, handle.lease))
            try:
                yield handle
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
                await self.store.release_lease(upload_id, owner)

    async def _keep(self, upload_id: str, owner: str, handle: LeaseHandle) -> None:
        """Renew the lease and watch for release requests until cancelled."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.poll)
            try:
                if await self.store.release_requested(upload_id, owner):
                    handle.requested = True
                if time.monotonic() - renewed >= self.ttl / 3:
                    if not await self.store.acquire_lease(upload_id, owner, self.ttl):
                        # Lost (we stalled past the ttl and someone took over): stop writing.
                        handle.requested = True
                    renewed = time.monotonic()
            except Exception:
                log.exception("tus lease upkeep failed for upload %s", upload_id)


class _Combined:
    """Stop when either the lease or the host-local lock was asked to let go."""

    def __init__(self, lease: LeaseHandle, local: LockHandle | None) -> None:
        self.lease = lease
        self.local = local

    def stop_requested(self) -> bool:
        return self.lease.stop_requested() or (
            self.local is not None and self.local.stop_requested()
        )
