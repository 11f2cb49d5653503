"""One writer per upload on one host: ``flock`` on a lock file per upload.

``flock`` locks belong to an open file description, so they exclude other threads of this
process as well as other processes. The holder unlinks the lock file before it lets go, so lock
files do not pile up; a waiter that locked a file which was unlinked meanwhile notices (its
descriptor no longer matches the path) and tries again.

A waiter asks the holder to finish early by creating ``<id>.stop``; the holder sees it between
body pieces, commits what it has and lets go. The marker is removed by whoever takes the lock
next, or by the waiter when it gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ..core.errors import UploadLocked
from ..core.ids import is_valid_id


class FileLockHandle:
    """The holder's view of a file lock: is a newer request waiting for it?"""

    #: Seconds between two looks at the stop marker (one ``stat`` each).
    CHECK_INTERVAL = 0.05

    def __init__(self, stop_path: Path) -> None:
        self._stop_path = stop_path
        self._checked_at = 0.0
        self._requested = False

    def stop_requested(self) -> bool:
        # One stat at most every CHECK_INTERVAL: cheap enough to run on the event loop between
        # body pieces, where a thread hop per piece would cost more than the check itself.
        if not self._requested:
            now = time.monotonic()
            if now - self._checked_at >= self.CHECK_INTERVAL:
                self._checked_at = now
                self._requested = self._stop_path.exists()
        return self._requested


class FileLocker:
    """Per-upload locks as ``<directory>/<id>.lock``.

    A request waits at most ``timeout`` seconds (polling every ``interval``) before
    :class:`~flask_tus.core.errors.UploadLocked` (423): long enough for a holder that was asked
    to stop to save and let go, short enough that a competing client hears back promptly.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, timeout: float = 0.5, interval: float = 0.02
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.interval = interval

    def _path(self, upload_id: str, suffix: str) -> Path:
        if not is_valid_id(upload_id):
            raise ValueError(f"invalid upload id {upload_id!r}")
        return self.directory / f"{upload_id}{suffix}"

    @classmethod
    def _try_acquire(cls, path: Path, stop_path: Path) -> int | None:
        """The locked descriptor, or ``None``; on success a stop request meant for the
        previous holder is cleared (one thread hop for both)."""
        fd = cls._lock_file(path)
        if fd is not None:
            cls._clear_stop(stop_path)
        return fd

    @staticmethod
    def _lock_file(path: Path) -> int | None:
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
    def _request_stop(stop_path: Path) -> None:
        stop_path.touch(exist_ok=True)

    @staticmethod
    def _clear_stop(stop_path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            stop_path.unlink()

    @staticmethod
    def _release(path: Path, fd: int) -> None:
        try:
            os.unlink(path)
        finally:
            os.close(fd)

    @asynccontextmanager
    async def lock(self, upload_id: str) -> AsyncIterator[FileLockHandle]:
        path = self._path(upload_id, ".lock")
        stop_path = self._path(upload_id, ".stop")
        deadline = time.monotonic() + self.timeout
        while True:
            fd = await asyncio.to_thread(self._try_acquire, path, stop_path)
            if fd is not None:
                break
            if time.monotonic() >= deadline:
                await asyncio.to_thread(self._clear_stop, stop_path)
                raise UploadLocked()
            # Renewed on every round: another waiter may have taken the lock and cleared it.
            await asyncio.to_thread(self._request_stop, stop_path)
            await asyncio.sleep(self.interval)
        try:
            yield FileLockHandle(stop_path)
        finally:
            await asyncio.to_thread(self._release, path, fd)
