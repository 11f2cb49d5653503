"""The small interfaces the protocol core reaches storage through.

A metadata store keeps :class:`~flask_tus.core.upload.Upload` records; a data storage keeps the
bytes; a locker gives one writer per upload. Optional abilities are separate Protocols, checked
with ``isinstance`` so that OPTIONS advertises only what the configured backends really do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from .upload import Upload


@runtime_checkable
class UploadStore(Protocol):
    """Persists upload records. The store is the authority on offsets."""

    async def create(self, upload: Upload) -> None:
        """Insert a new record; its id is new (ids are random)."""

    async def get(self, upload_id: str) -> Upload:
        """The record for ``upload_id``; raises ``UploadNotFound`` when there is none."""

    async def commit(self, upload: Upload, *, expected_offset: int) -> None:
        """Replace the record with ``upload`` if its stored offset is still ``expected_offset``.

        This is the compare-and-set that makes offsets safe: raises ``OffsetMismatch`` when
        another request committed first, ``UploadNotFound`` when the record is gone.
        """

    async def delete(self, upload_id: str) -> None:
        """Remove the record; a missing record is not an error."""

    def iter_uploads(self) -> AsyncIterator[Upload]:
        """Every record (for expiry cleanup and orphan reports)."""


class ChunkWriter(Protocol):
    """Writes one request's bytes at consecutive positions from a start offset."""

    async def write(self, data: bytes) -> None:
        """Store ``data`` right after what this writer stored before."""

    async def flush(self) -> None:
        """Make every byte written so far durable (before its offset is committed)."""

    async def discard(self) -> None:
        """Drop everything this writer stored: the data ends at the start offset again."""


@runtime_checkable
class SalvagingWriter(Protocol):
    """Optional: a writer that can keep what it wrote before a write failed (a full disk)."""

    async def salvage(self) -> int:
        """After ``write`` raised ``OSError``: make the bytes written in full before it durable,
        close, and return how many there are from the start offset."""


@runtime_checkable
class DataStorage(Protocol):
    """Keeps the bytes of uploads, addressed by upload id, always written at explicit offsets."""

    async def create(self, upload_id: str) -> None:
        """Create empty data for a new upload."""

    def open_writer(self, upload_id: str, offset: int) -> AbstractAsyncContextManager[ChunkWriter]:
        """A writer starting at ``offset``.

        Bytes stored beyond ``offset`` (written by a request whose offset was never committed)
        are cut off first. Raises ``UploadNotFound`` when the data does not exist.
        """

    def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive, in pieces of bounded size."""

    async def delete(self, upload_id: str) -> None:
        """Remove the data; missing data is not an error."""

    def iter_ids(self) -> AsyncIterator[str]:
        """The id of every upload that has data (for orphan reports)."""

    async def md5(self, upload_id: str) -> str:
        """Hex MD5 of the stored bytes, read in bounded pieces without blocking the loop."""


@runtime_checkable
class ConcatenatingStorage(Protocol):
    """Optional: storage that can build a final upload from partial ones (concatenation)."""

    async def concatenate(self, target_id: str, source_ids: tuple[str, ...]) -> None:
        """Replace ``target_id``'s data with the sources' data, in order."""


@dataclass(frozen=True)
class DataInfo:
    """What a storage tells about one upload's data: its size and when it last changed."""

    size: int
    modified_at: datetime


@runtime_checkable
class InspectableStorage(Protocol):
    """Optional: storage that tells the size and age of an upload's data (cleanup uses it to
    remove the empty data a crash during a creation leaves behind)."""

    async def info(self, upload_id: str) -> DataInfo:
        """The data's size and last change; raises ``UploadNotFound`` when there is none."""


class LockHandle(Protocol):
    """What the holder of an upload's lock sees while it holds it."""

    def stop_requested(self) -> bool:
        """True once a newer request for the same upload asked this holder to finish early.

        A writer that sees it stops reading its body, commits what arrived and lets go, so a
        client that reconnected after a network failure is not locked out by its own old request
        (decision 6 of the design). Cheap enough to call between body pieces.
        """

    async def confirm(self) -> None:
        """Make sure the lock is still this holder's, and stays so for a while; called right
        before a commit. Raises ``LockLost`` when it is not: the commit must not happen.

        A lock the kernel keeps for an open descriptor cannot lapse (nothing to do); a lease
        is renewed for its full life, so no other host can take it during the commit.
        """


@runtime_checkable
class Locker(Protocol):
    """One writer per upload."""

    def lock(
        self, upload_id: str, *, take_over: bool = True
    ) -> AbstractAsyncContextManager[LockHandle]:
        """Hold the upload's lock for the ``async with`` block.

        While waiting, the locker asks the current holder to stop (see
        :meth:`LockHandle.stop_requested`). With ``take_over`` false it only waits, and the
        holder never sees a request to stop: for work such as expiry cleanup, which must not
        cut a running request short. Either way raises ``UploadLocked`` when the holder keeps
        the lock past the locker's wait time.
        """


@runtime_checkable
class LeaseStore(Protocol):
    """Optional: a store that keeps a per-upload lease, for one writer across hosts.

    The lease lives in the upload's record: an owner, an expiry, and a release request. Every
    call is atomic in the store (a single conditional update).
    """

    async def acquire_lease(self, upload_id: str, owner: str, ttl: float) -> bool:
        """Give ``owner`` the lease until ``ttl`` seconds from now when it is free, expired or
        already ``owner``'s (which renews it); clears a pending release request when taken.
        False when another owner holds it. Raises ``UploadNotFound`` for an unknown upload."""

    async def release_lease(self, upload_id: str, owner: str) -> None:
        """Free the lease if ``owner`` holds it; otherwise do nothing."""

    async def request_release(self, upload_id: str) -> None:
        """Ask whoever holds the lease to finish early and let go."""

    async def release_requested(self, upload_id: str, owner: str) -> bool:
        """Whether a release was requested while ``owner`` holds the lease."""
