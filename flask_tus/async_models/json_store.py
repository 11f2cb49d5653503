"""The embedded default metadata store: one JSON file per upload, no service needed.

Records live beside the data as ``<directory>/<id>.json``. Every write goes to a temporary file
that is fsynced and then renamed over the record, so a record is always either the old or the
new version, even after ``kill -9`` or a power cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from ..core.errors import OffsetMismatch, UploadNotFound
from ..core.ids import is_valid_id
from ..core.upload import Upload

log = logging.getLogger("flask_tus")

_SUFFIX = ".json"


class JsonFileStore:
    """Upload records as JSON files in ``directory`` (created if missing).

    Compare-and-set commits hold an exclusive ``flock`` on ``<directory>/.records.lock`` for
    the read-compare-write, so they are atomic across threads and processes on this host.
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._lock_path = self.directory / ".records.lock"

    def _path(self, upload_id: str) -> Path:
        if not is_valid_id(upload_id):
            raise UploadNotFound()
        return self.directory / f"{upload_id}{_SUFFIX}"

    # Blocking helpers, always run in a worker thread.

    def _write_temp(self, upload: Upload) -> str:
        """The record in a new temporary file beside its final name, synced when ``fsync``."""
        fd, tmp = tempfile.mkstemp(prefix=f".{upload.id}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(upload.to_dict(), file, separators=(",", ":"))
                file.flush()
                if self.fsync:
                    os.fsync(file.fileno())
        except BaseException:
            _unlink(tmp)
            raise
        return tmp

    def _write(self, upload: Upload) -> None:
        tmp = self._write_temp(upload)
        try:
            os.replace(tmp, self._path(upload.id))
        except BaseException:
            _unlink(tmp)
            raise
        self._sync_dir()

    def _sync_dir(self) -> None:
        if self.fsync:
            _fsync_dir(self.directory)

    def _read(self, upload_id: str) -> Upload:
        try:
            with open(self._path(upload_id), encoding="utf-8") as file:
                return Upload.from_dict(json.load(file))
        except FileNotFoundError as exc:
            raise UploadNotFound() from exc

    @contextlib.contextmanager
    def _records_locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+b") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def _commit(self, upload: Upload, expected_offset: int) -> None:
        # Only the compare and the rename need the lock; the slow part (writing and syncing
        # the new version) happens before, so commits of different uploads barely wait.
        tmp = self._write_temp(upload)
        try:
            with self._records_locked():
                current = self._read(upload.id)
                if current.offset != expected_offset:
                    raise OffsetMismatch(
                        f"the upload moved to offset {current.offset} during this request"
                    )
                os.replace(tmp, self._path(upload.id))
        except BaseException:
            _unlink(tmp)
            raise
        self._sync_dir()

    def _delete(self, upload_id: str) -> None:
        with self._records_locked(), contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(upload_id))

    def _list(self) -> list[str]:
        names = []
        for entry in os.scandir(self.directory):
            stem = entry.name.removesuffix(_SUFFIX)
            if entry.name.endswith(_SUFFIX) and is_valid_id(stem):
                names.append(stem)
        return names

    # The UploadStore protocol.

    async def create(self, upload: Upload) -> None:
        await asyncio.to_thread(self._write, upload)

    async def get(self, upload_id: str) -> Upload:
        return await asyncio.to_thread(self._read, upload_id)

    async def commit(self, upload: Upload, *, expected_offset: int) -> None:
        await asyncio.to_thread(self._commit, upload, expected_offset)

    async def delete(self, upload_id: str) -> None:
        await asyncio.to_thread(self._delete, upload_id)

    async def iter_uploads(self) -> AsyncIterator[Upload]:
        for upload_id in await asyncio.to_thread(self._list):
            try:
                yield await self.get(upload_id)
            except UploadNotFound:
                continue  # deleted while we listed
            except (ValueError, KeyError, TypeError):
                log.error("tus record %s is unreadable; skipped", upload_id)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX needs the directory itself synced)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
