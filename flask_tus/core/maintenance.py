"""Expiry cleanup over the store and storage protocols (the CLI drives it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UploadLocked, UploadNotFound
from .handler import TusHandler


@dataclass
class SweepReport:
    """Ids of expired uploads removed (or to remove, on a dry run), of expired uploads skipped
    because a request holds them, and of orphans: data without a record and the reverse."""

    expired: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    orphan_data: list[str] = field(default_factory=list)
    orphan_records: list[str] = field(default_factory=list)


async def sweep(handler: TusHandler, *, dry_run: bool = False) -> SweepReport:
    """Remove every expired upload's record and data together; report orphans.

    Finished uploads count as expired only with ``expire_completed``. An upload whose lock is
    held is skipped, so cleanup never removes bytes under a running PATCH.
    """
    report = SweepReport()
    now = handler.clock()
    record_ids: set[str] = set()
    async for upload in handler.store.iter_uploads():
        record_ids.add(upload.id)
        if not upload.is_expired(now, expire_completed=handler.settings.expire_completed):
            continue
        if dry_run:
            report.expired.append(upload.id)
            continue
        try:
            async with handler.locker.lock(upload.id):
                await handler.remove(upload.id)
        except UploadLocked:
            report.busy.append(upload.id)
            continue
        except UploadNotFound:
            continue
        report.expired.append(upload.id)
    data_ids = {upload_id async for upload_id in handler.storage.iter_ids()}
    removed = set(report.expired) if not dry_run else set()
    report.orphan_data = sorted(data_ids - record_ids)
    report.orphan_records = sorted(record_ids - data_ids - removed)
    return report
