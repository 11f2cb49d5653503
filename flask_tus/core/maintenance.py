"""Expiry cleanup over the store and storage protocols (the CLI drives it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .errors import UploadLocked, UploadNotFound
from .handler import TusHandler

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


async def sweep(handler: TusHandler, *, dry_run: bool = False) -> SweepReport:
    """Remove every expired upload's record and data together; report orphans.

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
    report.orphan_data = sorted(data_ids - record_ids)
    report.orphan_records = sorted(record_ids - data_ids - removed)
    return report
