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
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from .errors import LockLost, UploadLocked
from .protocols import LeaseStore, Locker, LockHandle

log = logging.getLogger("flask_tus")


class LeaseHandle:
    """The lease holder's view, kept up by :meth:`LeaseLocker._keep` in the background.

    ``requested``: a release was asked for. ``lost``: the lease went to another owner, or could
    not be renewed for so long that it may have. Either stops the writer; a lost lease also
    refuses the commit (:meth:`confirm`), which ``renew`` (renewing the lease for its full
    life, ``False`` when another owner has it) otherwise makes safe.
    """

    def __init__(self, renew: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.requested = False
        self.lost = False
        self._renew = renew

    def stop_requested(self) -> bool:
        return self.requested or self.lost

    async def confirm(self) -> None:
        if not self.lost and self._renew is not None:
            self.lost = not await self._renew()
        if self.lost:
            raise LockLost()


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
            renew = functools.partial(self._renew, upload_id, owner)
            handle = _Combined(LeaseHandle(renew), local_handle)
            keeper = asyncio.create_task(self._keep(upload_id, owner, handle.lease))
            try:
                yield handle
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
                await self._release(upload_id, owner)

    async def _release(self, upload_id: str, owner: str) -> None:
        """Give the lease back; if the store cannot be reached in a third of the ttl, leave it
        to expire (the request's answer does not wait for the store)."""
        try:
            async with asyncio.timeout(self.ttl / 3):
                await self.store.release_lease(upload_id, owner)
        except Exception:
            log.exception(
                "tus could not release the lease on upload %s; it expires in %s s",
                upload_id,
                self.ttl,
            )

    async def _renew(self, upload_id: str, owner: str) -> bool:
        """Renew ``owner``'s lease for a full ttl; ``False`` when another owner has it. Gives
        up (``TimeoutError``) after a third of the ttl: a store that slow cannot be trusted to
        have kept the lease."""
        async with asyncio.timeout(self.ttl / 3):
            return await self.store.acquire_lease(upload_id, owner, self.ttl)

    async def _keep(self, upload_id: str, owner: str, handle: LeaseHandle) -> None:
        """Renew the lease and watch for release requests until cancelled.

        When renewals fail (the store is unreachable or too slow) for two thirds of the ttl,
        the lease is taken as lost: the writer stops well before another host could take the
        lease over, and its commit is refused unless a last renewal succeeds
        (:meth:`LeaseHandle.confirm`). Each call to the store is bounded, so a store that hangs
        cannot hold this watch up.
        """
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.poll)
            try:
                async with asyncio.timeout(self.ttl / 3):
                    if await self.store.release_requested(upload_id, owner):
                        handle.requested = True
                if time.monotonic() - renewed >= self.ttl / 3:
                    if not await self._renew(upload_id, owner):
                        # Another owner has it (we stalled past the ttl): stop, commit nothing.
                        handle.lost = True
                        return
                    renewed = time.monotonic()
            except Exception:
                log.exception("tus lease upkeep failed for upload %s", upload_id)
                if time.monotonic() - renewed >= self.ttl * 2 / 3:
                    handle.lost = True


class _Combined:
    """Stop when either the lease or the host-local lock was asked to let go."""

    def __init__(self, lease: LeaseHandle, local: LockHandle | None) -> None:
        self.lease = lease
        self.local = local

    def stop_requested(self) -> bool:
        return self.lease.stop_requested() or (
            self.local is not None and self.local.stop_requested()
        )

    async def confirm(self) -> None:
        await self.lease.confirm()
        if self.local is not None:
            await self.local.confirm()
