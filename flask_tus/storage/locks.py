"""One writer per upload on one host: ``flock`` on a lock file per upload.

``flock`` locks belong to an open file description, so they exclude other threads of this
process as well as other processes. The holder unlinks the lock file before it lets go, so lock
files do not pile up; a waiter that locked a file which was unlinked meanwhile notices (its
descriptor no longer matches the path) and tries again.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ..core.errors import UploadLocked
from ..core.ids import is_valid_id


class FileLocker:
    """Per-upload locks as ``<directory>/<id>.lock``.

    A request waits at most ``timeout`` seconds (polling every ``interval``) before
    :class:`~flask_tus.core.errors.UploadLocked` (423): long enough to ride out a request that
    is just finishing, short enough that a competing client hears back promptly.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, timeout: float = 0.5, interval: float = 0.02
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.interval = interval

    def _path(self, upload_id: str) -> Path:
        if not is_valid_id(upload_id):
            raise ValueError(f"invalid upload id {upload_id!r}")
        return self.directory / f"{upload_id}.lock"

    @staticmethod
    def _try_acquire(path: Path) -> int | None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def _release(path: Path, fd: int) -> None:
        try:
            os.unlink(path)
        finally:
            os.close(fd)

    @asynccontextmanager
    async def lock(self, upload_id: str) -> AsyncIterator[None]:
        path = self._path(upload_id)
        deadline = time.monotonic() + self.timeout
        while True:
            fd = await asyncio.to_thread(self._try_acquire, path)
            if fd is not None:
                break
            if time.monotonic() >= deadline:
                raise UploadLocked()
            await asyncio.sleep(self.interval)
        try:
            yield
        finally:
            await asyncio.to_thread(self._release, path, fd)
