"""One writer per upload on one host: file locks that belong to an open file description.

Such locks exclude other threads of this process as well as other processes, and the kernel
drops them when their holder's descriptor closes, also when the process dies.

- On 64-bit Linux every upload is one byte of a single file, ``<directory>/.tus-locks``, locked
  with an open file description lock (``F_OFD_SETLK``) at an offset taken from the upload's id.
  Taking and releasing a lock creates and removes no file: with a lock file per request, the
  file system's inode allocation took a sixth of the server's CPU under 32 concurrent uploads.
- Elsewhere (macOS, BSD) each upload has a lock file, ``<id>.lock``, held with ``flock``. The
  holder unlinks it before it lets go, so lock files do not pile up; a waiter that locked a
  file which was unlinked meanwhile notices (its descriptor no longer matches the path) and
  tries again.

A waiter asks the holder to finish early by creating ``<id>.stop``; the holder sees it between
body pieces, commits what it has and lets go. The marker is removed by whoever takes the lock
next, or by the waiter when it gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ..core.errors import UploadLocked
from ..core.ids import is_valid_id

#: Open file description locks need Linux; the ``struct flock`` packed below is 64-bit Linux's.
ONE_FILE_SUPPORTED = (
    sys.platform == "linux" and hasattr(fcntl, "F_OFD_SETLK") and struct.calcsize("P") == 8
)
#: The file whose bytes are the locks (one per upload) where ``ONE_FILE_SUPPORTED``.
LOCKS_FILE = ".tus-locks"
#: ``struct flock`` on 64-bit Linux: type, whence, start, length, pid (0 for OFD locks), padding.
_FLOCK = struct.Struct("hhqqi4x")


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
    """Per-upload locks in ``directory``: bytes of ``.tus-locks``, or ``<id>.lock`` files.

    A request waits at most ``timeout`` seconds (polling every ``interval``) before
    :class:`~flask_tus.core.errors.UploadLocked` (423): long enough for a holder that was asked
    to stop to save and let go, short enough that a competing client hears back promptly.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        timeout: float = 0.5,
        interval: float = 0.02,
        one_file: bool | None = None,
    ) -> None:
        """``one_file``: lock bytes of one file (``None``: wherever that is supported) or, when
        false, a lock file per upload. ``ValueError`` if it is asked for where unsupported."""
        if one_file is None:
            one_file = ONE_FILE_SUPPORTED
        elif one_file and not ONE_FILE_SUPPORTED:
            raise ValueError("one-file locks need open file description locks (64-bit Linux)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.interval = interval
        self.one_file = one_file
        if one_file:
            # Made now rather than by the first request, so that it is there from the start
            # like the directory (and requests only ever open it).
            os.close(
                os.open(self.directory / LOCKS_FILE, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            )

    def _path(self, upload_id: str, suffix: str) -> Path:
        if not is_valid_id(upload_id):
            raise ValueError(f"invalid upload id {upload_id!r}")
        return self.directory / f"{upload_id}{suffix}"

    def _try_acquire(self, upload_id: str, stop_path: Path) -> int | None:
        """The descriptor that holds the lock, or ``None``; on success a stop request meant
        for the previous holder is cleared (one thread hop for both)."""
        if self.one_file:
            fd = _lock_byte(self.directory / LOCKS_FILE, _byte_of(upload_id))
        else:
            fd = _lock_file(self._path(upload_id, ".lock"))
        if fd is not None:
            _clear_stop(stop_path)
        return fd

    def _release(self, upload_id: str, fd: int) -> None:
        try:
            if not self.one_file:
                os.unlink(self._path(upload_id, ".lock"))
        finally:
            # Closing the descriptor releases the lock.
            os.close(fd)

    @asynccontextmanager
    async def lock(self, upload_id: str) -> AsyncIterator[FileLockHandle]:
        stop_path = self._path(upload_id, ".stop")
        deadline = time.monotonic() + self.timeout
        while True:
            fd = await asyncio.to_thread(self._try_acquire, upload_id, stop_path)
            if fd is not None:
                break
            if time.monotonic() >= deadline:
                await asyncio.to_thread(_clear_stop, stop_path)
                raise UploadLocked()
            # Renewed on every round: another waiter may have taken the lock and cleared it.
            await asyncio.to_thread(_request_stop, stop_path)
            await asyncio.sleep(self.interval)
        try:
            yield FileLockHandle(stop_path)
        finally:
            await asyncio.to_thread(self._release, upload_id, fd)


def _byte_of(upload_id: str) -> int:
    """The byte of the locks file that stands for ``upload_id``: its first 60 bits.

    Ids are random, so two uploads share a byte with a chance of about one in 10^18; they
    would then only wait for each other.
    """
    return int(upload_id[:15], 16)


def _lock_byte(path: Path, offset: int) -> int | None:
    """A new descriptor of ``path`` (created if missing) holding an exclusive open file
    description lock on byte ``offset``, or ``None`` when another holder has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except (BlockingIOError, PermissionError):
        # EAGAIN or EACCES: the byte is locked by another open file description.
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


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


def _request_stop(stop_path: Path) -> None:
    stop_path.touch(exist_ok=True)


def _clear_stop(stop_path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        stop_path.unlink()
