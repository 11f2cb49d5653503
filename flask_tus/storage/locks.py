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

A waiter asks the holder to finish early; the holder sees it between body pieces, commits what
it has and lets go. A waiter that must not take over (``take_over=False``) never asks: it
only waits.

- With one file, the waiter holds a shared lock on the upload's stop byte (its lock byte plus
  2^60) until it gets the lock or gives up, and the holder tests that byte (``F_OFD_GETLK``):
  a call on a descriptor, without the path lookup that a marker file's ``stat`` needs. Under
  32 concurrent uploads those ``stat`` calls waited up to a quarter of a millisecond each for
  the directory, on the event loop.
- With lock files, the waiter creates ``<id>.stop`` and the holder looks for it (at most every
  50 ms). The marker is removed by whoever takes the lock next, or by the waiter when it gives
  up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..core.errors import UploadLocked
from ..core.ids import is_valid_id
from ..core.steps import run_to_end

T = TypeVar("T")

#: Open file description locks need Linux; the ``struct flock`` packed below is 64-bit Linux's.
ONE_FILE_SUPPORTED = (
    sys.platform == "linux" and hasattr(fcntl, "F_OFD_SETLK") and struct.calcsize("P") == 8
)
#: The file whose bytes are the locks (one per upload) where ``ONE_FILE_SUPPORTED``.
LOCKS_FILE = ".tus-locks"
#: ``struct flock`` on 64-bit Linux: type, whence, start, length, pid (0 for OFD locks), padding.
_FLOCK = struct.Struct("hhqqi4x")
#: An upload's stop byte is its lock byte plus this (lock bytes are below it).
_STOP_BYTES = 1 << 60


class FileLockHandle:
    """The holder's view of its lock: is a newer request waiting for it?

    ``check`` looks once (a marker file's ``stat``, or a test of the stop byte); it runs at
    most every ``CHECK_INTERVAL`` seconds, between body pieces on the event loop, where a
    thread hop per piece would cost more than the look itself. Once seen, a request stays seen.
    """

    CHECK_INTERVAL = 0.05

    def __init__(self, check: Callable[[], bool]) -> None:
        self._check = check
        self._checked_at = 0.0
        self._requested = False

    async def confirm(self) -> None:
        """A file lock lasts as long as its descriptor: it cannot have lapsed."""

    def stop_requested(self) -> bool:
        if not self._requested:
            now = time.monotonic()
            if now - self._checked_at >= self.CHECK_INTERVAL:
                self._checked_at = now
                self._requested = self._check()
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
        """The lock file of ``upload_id`` (validated by :meth:`lock`) with ``suffix``."""
        return self.directory / f"{upload_id}{suffix}"

    @asynccontextmanager
    async def lock(
        self, upload_id: str, *, take_over: bool = True
    ) -> AsyncIterator[FileLockHandle]:
        """Hold ``upload_id``'s lock for the block; see :meth:`Locker.lock
        <flask_tus.core.protocols.Locker.lock>`. ``ValueError`` for an invalid id."""
        if not is_valid_id(upload_id):
            raise ValueError(f"invalid upload id {upload_id!r}")
        locking = self._byte_lock if self.one_file else self._file_lock
        async with locking(upload_id, take_over) as handle:
            yield handle

    @asynccontextmanager
    async def _byte_lock(self, upload_id: str, take_over: bool) -> AsyncIterator[FileLockHandle]:
        byte = _byte_of(upload_id)
        stop_byte = _STOP_BYTES + byte
        deadline = time.monotonic() + self.timeout
        # One open file description per request: locks of the same one never exclude each
        # other. Opening and the first try share a thread hop.
        fd, locked = await _in_thread(
            _open_and_lock, self.directory / LOCKS_FILE, byte, undo=_close_first
        )
        try:
            asked = False
            while not locked:
                if time.monotonic() >= deadline:
                    raise UploadLocked()  # closing the descriptor withdraws the request
                if take_over and not asked:
                    # Held until this waiter gets the lock or gives up.
                    await _in_thread(_set_lock, fd, stop_byte, fcntl.F_RDLCK)
                    asked = True
                await asyncio.sleep(self.interval)
                locked = await _in_thread(_set_lock, fd, byte, fcntl.F_WRLCK)
            if asked:
                # Withdraw the request, meant for the holder that let go. A call on the
                # descriptor that never waits: no thread hop.
                _set_lock(fd, stop_byte, fcntl.F_UNLCK)
            yield FileLockHandle(functools.partial(_byte_is_locked, fd, stop_byte))
        finally:
            # Closing the descriptor releases the lock.
            await asyncio.to_thread(os.close, fd)

    @asynccontextmanager
    async def _file_lock(self, upload_id: str, take_over: bool) -> AsyncIterator[FileLockHandle]:
        path = self._path(upload_id, ".lock")
        stop_path = self._path(upload_id, ".stop")
        deadline = time.monotonic() + self.timeout
        while True:
            fd = await _in_thread(
                _lock_file, path, stop_path, undo=functools.partial(_let_go_of, path)
            )
            if fd is not None:
                break
            if time.monotonic() >= deadline:
                if take_over:
                    await asyncio.to_thread(_clear_stop, stop_path)
                # Else the marker, if any, is another waiter's request: not ours to withdraw.
                raise UploadLocked()
            if take_over:
                # Renewed on every round: another waiter may have taken the lock and cleared it.
                await asyncio.to_thread(_request_stop, stop_path)
            await asyncio.sleep(self.interval)
        try:
            yield FileLockHandle(stop_path.exists)
        finally:
            await asyncio.to_thread(_unlink_and_close, path, fd)


def _in_thread(
    function: Callable[..., T], *args: Any, undo: Callable[[T], object] | None = None
) -> Awaitable[T]:
    """``function(*args)`` in a worker thread, awaited to its end even when the request is
    cancelled meanwhile (then ``undo`` gives back what it took): a lock taken, or a call on a
    descriptor, must not outlive the code that closes the descriptor."""
    future = asyncio.get_running_loop().run_in_executor(None, function, *args)
    return run_to_end(future, undo)


def _close_first(opened: tuple[int, bool]) -> None:
    """Undo :func:`_open_and_lock`: closing the descriptor drops the lock it may hold."""
    os.close(opened[0])


def _let_go_of(path: Path, fd: int | None) -> None:
    """Undo :func:`_lock_file`: release a lock file taken for a request that was cancelled."""
    if fd is not None:
        _unlink_and_close(path, fd)


def _byte_of(upload_id: str) -> int:
    """The byte of the locks file that stands for ``upload_id``: its first 60 bits.

    Ids are random, so two uploads share a byte with a chance of about one in 10^18; they
    would then only wait for each other.
    """
    return int(upload_id[:15], 16)


def _open_and_lock(path: Path, offset: int) -> tuple[int, bool]:
    """A new descriptor of ``path`` (created if missing) and whether it took an exclusive
    lock on byte ``offset``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        return fd, _set_lock(fd, offset, fcntl.F_WRLCK)
    except BaseException:
        os.close(fd)
        raise


def _set_lock(fd: int, offset: int, kind: int) -> bool:
    """Lock (``F_WRLCK``, ``F_RDLCK``) or unlock (``F_UNLCK``) byte ``offset`` for this open
    file description without waiting; ``False`` when another one holds a conflicting lock."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, offset, 1, 0))
    except (BlockingIOError, PermissionError):
        # EAGAIN or EACCES: another open file description holds the byte.
        return False
    return True


def _byte_is_locked(fd: int, offset: int) -> bool:
    """Whether another open file description holds any lock on byte ``offset``."""
    request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    kind: int = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, request))[0]
    return kind != fcntl.F_UNLCK


def _lock_file(path: Path, stop_path: Path) -> int | None:
    """A descriptor of the lock file ``path`` holding its ``flock``, or ``None``; on success a
    stop request meant for the previous holder is cleared (one thread hop for both)."""
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
    _clear_stop(stop_path)
    return fd


def _unlink_and_close(path: Path, fd: int) -> None:
    try:
        os.unlink(path)
    finally:
        # Closing the descriptor releases the lock.
        os.close(fd)


def _request_stop(stop_path: Path) -> None:
    stop_path.touch(exist_ok=True)


def _clear_stop(stop_path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        stop_path.unlink()
