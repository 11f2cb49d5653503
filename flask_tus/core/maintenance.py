"""Expiry cleanup over the store and storage protocols (the CLI drives it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .errors import UploadLocked, UploadNotFound
from .handler import TusHandler
from .protocols import InspectableStorage

log = logging.getLogger("flask_tus")


@dataclass
class SweepReport:
    """Ids of expired uploads removed (or to remove, on a dry run), of expired uploads skipped
    because a request holds them, of uploads that could not be handled (the error is logged),
    and of orphans: data without a record and the reverse."""

    expired: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    orphan_data: list[str] = field(default_factory=list)
    orphan_records: list[str] = field(default_factory=list)
    #: Empty data without a record, untouched for :data:`INTERRUPTED_AFTER`: removed (or to
    #: remove, on a dry run) as the remains of interrupted creations; not in ``orphan_data``.
    interrupted: list[str] = field(default_factory=list)


#: How long an empty data file without a record must have been left alone before cleanup takes
#: it for the remains of an interrupted creation rather than a creation still under way (the
#: record follows the data within one store call, which has its own timeouts).
INTERRUPTED_AFTER = timedelta(hours=1)


async def sweep(handler: TusHandler, *, dry_run: bool = False) -> SweepReport:
    """Remove every expired upload's record and data together, and the empty data that
    interrupted creations left (see :func:`_clear_interrupted`); report other orphans.

    Finished uploads count as expired only with ``expire_completed``, and a final upload whose
    parts all finished does not count (see :meth:`TusHandler.is_expired`). An upload is removed only
    if the record read again under its lock is still expired: a PATCH that held the lock since
    the listing may have finished it. An upload whose lock stays held is skipped (``busy``)
    without asking its holder to stop, so cleanup never interrupts a running PATCH nor removes
    bytes under one. A dry run takes no lock and reports what the listing shows.
    """
    report = SweepReport()
    now = handler.clock()
    record_ids: set[str] = set()
    async for upload in handler.store.iter_uploads():
        record_ids.add(upload.id)
        if not await handler.is_expired(upload, now):
            continue
        if dry_run:
            report.expired.append(upload.id)
            continue
        try:
            # Never take over: the holder may be a PATCH about to finish this upload, and asking
            # it to stop would cut it short (400) only for the sweep to delete what it saved.
            async with handler.locker.lock(upload.id, take_over=False):
                # The listed copy predates the lock: a PATCH may have finished the upload since.
                current = await handler.store.get(upload.id)
                if not await handler.is_expired(current, now):
                    continue
                await handler.remove(upload.id)
        except UploadLocked:
            report.busy.append(upload.id)
            continue
        except UploadNotFound:
            continue
        except Exception:
            # One upload that cannot be removed (a file it cannot delete, a record it cannot
            # read) must not stop the cleanup of the others.
            log.exception("tus cleanup could not remove expired upload %s", upload.id)
            report.failed.append(upload.id)
            continue
        report.expired.append(upload.id)
    data_ids = {upload_id async for upload_id in handler.storage.iter_ids()}
    # Expired records without data are removed (or would be, on a dry run) like any other
    # expired upload: they are not reported as orphans as well.
    removed = set(report.expired)
    report.orphan_records = sorted(record_ids - data_ids - removed)
    for upload_id in sorted(data_ids - record_ids):
        cleared = await _clear_interrupted(handler, upload_id, dry_run)
        if cleared:
            report.interrupted.append(upload_id)
        elif cleared is not None:
            report.orphan_data.append(upload_id)
    return report


async def _clear_interrupted(handler: TusHandler, upload_id: str, dry_run: bool) -> bool | None:
    """Remove ``upload_id``'s data (unless ``dry_run``) if it is what an interrupted creation
    leaves: empty, without a record, untouched for :data:`INTERRUPTED_AFTER`. ``False`` keeps
    it to be reported as an orphan; ``None`` when it was gone already.

    A creation makes the data file first and the record second, so a crash in between (or a
    store that failed and could not say whether it kept the record) leaves such a file; no
    client ever got its URL. Data holding bytes is never removed: it may be all that is left
    of an upload whose record was lost. Nor is data whose record cannot be read.
    """
    storage = handler.storage
    if not isinstance(storage, InspectableStorage):
        return False
    interrupted = await _is_interrupted(handler, storage, upload_id)
    if not interrupted or dry_run:
        return interrupted
    try:
        async with handler.locker.lock(upload_id, take_over=False):
            # Looked at again under the lock: the record may have come since the listing.
            return await _delete_if_interrupted(handler, storage, upload_id)
    except UploadLocked:
        return False  # a request holds it: looked at again next time
    except UploadNotFound:
        # A lease (the SQL and MongoDB stores' lock across hosts) is taken on the record,
        # which there is none of. Nor does a creation lock anything before its record exists:
        # the age is the guard here.
        return await _delete_if_interrupted(handler, storage, upload_id)


async def _delete_if_interrupted(
    handler: TusHandler, storage: InspectableStorage, upload_id: str
) -> bool | None:
    interrupted = await _is_interrupted(handler, storage, upload_id)
    if interrupted:
        await handler.storage.delete(upload_id)
    return interrupted


async def _is_interrupted(
    handler: TusHandler, storage: InspectableStorage, upload_id: str
) -> bool | None:
    """Whether the data is empty, old enough and has no record; ``None`` when it is gone."""
    try:
        info = await storage.info(upload_id)
    except UploadNotFound:
        return None
    # File times come from the system clock, not the handler's (tests move that one).
    if info.size or datetime.now(UTC) - info.modified_at < INTERRUPTED_AFTER:
        return False
    try:
        await handler.store.get(upload_id)
    except UploadNotFound:
        return True
    except Exception:
        # A record that cannot be read: the data stays and is reported as an orphan.
        log.warning("tus cleanup kept data %s: its record is unreadable", upload_id)
    return False
