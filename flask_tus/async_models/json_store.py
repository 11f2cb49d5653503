"""The embedded default metadata store: one JSON Lines file per upload, no service needed.

Records live beside the data as ``<directory>/<id>.json``. Each version of a record is one line
of JSON; the last complete line is the record. ``create`` writes the first line, each
``commit`` appends one, and every write is synced (with ``fsync`` on) before it returns.

Why append rather than write a new file and rename it over the old one: a commit then creates
and frees no inode and needs neither a rename nor a directory sync. Under 32 concurrent 1 MiB
uploads on ext4, creating the temporary files took a sixth of the server's CPU time, and one
lock for all renames made commits queue behind each other.

A record is always either its old or its new version, even after ``kill -9`` or a power cut:
a new record file gets its name only once its first line is synced (on Linux file systems with
``O_TMPFILE``; elsewhere a crash during ``create`` can leave a file without a complete line,
which reads as unreadable), a line is
written whole before it counts, a reader skips a torn last line (no newline, or not
a record), and the next commit cuts such a tail off before it appends. Once a file passes
:data:`COMPACT_SIZE` it is rewritten as one line (temporary file, sync, rename). A record
written by an earlier version of this store (one JSON object, no newline) reads as one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from ..core.errors import OffsetMismatch, UploadNotFound
from ..core.ids import is_valid_id
from ..core.upload import Upload

log = logging.getLogger("flask_tus")

_SUFFIX = ".json"
#: A record file past this many bytes (a few hundred commits) is compacted to one line.
COMPACT_SIZE = 64 * 1024
#: Most record files are one or two lines: one read takes them whole.
_READ_SIZE = 16384
_TEMP_NUMBERS = itertools.count()
#: Syncs a file's bytes and its size; the timestamps ``fsync`` would add are not needed.
_sync_data = getattr(os, "fdatasync", os.fsync)
#: Linux's flag for a new file without a name, and what a file system without them answers.
_O_TMPFILE: int = getattr(os, "O_TMPFILE", 0)
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
#: What linking such a file through /proc answers where that is not possible.
_NO_LINK = (errno.ENOENT, errno.EPERM, errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP)


class UnreadableRecord(ValueError):
    """A record file holds no complete version of its record."""


class JsonFileStore:
    """Upload records as JSON Lines files in ``directory`` (created if missing).

    Compare-and-set commits hold an exclusive ``flock`` on the record's own file for the
    read-compare-append, so they are atomic across threads and processes on this host, and
    commits of different uploads never wait for each other. Readers hold a shared one: a
    commit's line counts for them only once it is synced.
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        # Whether new records are written without a name first (see _write_new); turned off
        # by the first attempt the file system refuses.
        self._unnamed = bool(_O_TMPFILE) and os.path.isdir("/proc/self/fd")

    def _path(self, upload_id: str) -> str:
        if not is_valid_id(upload_id):
            raise UploadNotFound()
        return os.path.join(self.directory, upload_id + _SUFFIX)

    # Blocking helpers, always run in a worker thread. Raw descriptors throughout: each call
    # that releases the GIL is a chance for a thread switch, and buffered text files made
    # several per record.

    def _create(self, upload: Upload) -> None:
        path = self._path(upload.id)
        self._write_new(path, upload)
        try:
            self._sync_dir()
        except BaseException:
            _unlink(path)
            raise

    def _write_new(self, path: str, upload: Upload) -> None:
        """Create ``path`` (``FileExistsError`` if it exists) holding one line, ``upload``,
        synced when ``fsync``; on any failure nothing is left at ``path``.

        Where the system allows (Linux, on file systems with ``O_TMPFILE``: ext4, xfs, btrfs,
        tmpfs), the file is written and synced without a name and only then linked at
        ``path``, so it never exists empty: a process killed between
        creating a record and writing it left a record file that no version could be read
        from, which cleanup could only report, forever.
        """
        line = _line(upload)
        if self._write_unnamed(path, line):
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                _pwrite_all(fd, line, 0)
                self._sync(fd)
            finally:
                os.close(fd)
        except BaseException:
            _unlink(path)
            raise

    def _write_unnamed(self, path: str, line: bytes) -> bool:
        """Write ``line`` into a file without a name, sync it and link it at ``path``; ``False``
        (nothing done) where the system offers no such files or cannot link them."""
        fd = self._open_unnamed()
        if fd is None:
            return False
        try:
            _pwrite_all(fd, line, 0)
            self._sync(fd)
            try:
                # linkat(2) of the /proc link with AT_SYMLINK_FOLLOW, as open(2) documents for
                # O_TMPFILE; it refuses an existing name, like O_EXCL. Python calls linkat
                # (not link, which would link the /proc symlink itself) only when given a
                # directory descriptor: the source path is absolute, so that one is ignored.
                os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd)
            except FileExistsError:
                raise
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                # A sandbox without /proc links, say: named files from now on.
                self._unnamed = False
                return False
        finally:
            os.close(fd)
        return True

    def _open_unnamed(self) -> int | None:
        """A new file without a name in the directory, open for writing, or ``None`` where
        there are none (no ``O_TMPFILE`` or ``/proc``, or a file system without them)."""
        if not self._unnamed:
            return None
        try:
            return os.open(self.directory, _O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
            self._unnamed = False
            return None

    def _read(self, upload_id: str) -> Upload:
        try:
            fd = os.open(self._path(upload_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise UploadNotFound() from exc
        try:
            # Shared with other readers, excluded by a commit: a commit whose line fails to
            # sync cuts it off again before it lets go, and no reader may count it meanwhile.
            fcntl.flock(fd, fcntl.LOCK_SH)
            upload, _ = _last_record(_read_all(fd))
        finally:
            os.close(fd)
        return upload

    def _commit(self, upload: Upload, expected_offset: int) -> None:
        path = self._path(upload.id)
        with _locked_record(path) as fd:
            data = _read_all(fd)
            current, end = _last_record(data)
            if current.offset != expected_offset:
                raise OffsetMismatch(
                    f"the upload moved to offset {current.offset} during this request"
                )
            if end < len(data):
                # A torn line from a crashed writer: it never counted, and appending after it
                # would glue the new line to it.
                os.ftruncate(fd, end)
            line = _line(upload)
            if not data[:end].endswith(b"\n"):
                line = b"\n" + line  # a record from before this format: one object, no newline
            try:
                _pwrite_all(fd, line, end)
                self._sync(fd)
            except BaseException:
                # A line that could not be written whole or made durable (a full disk) must
                # not count: the caller hears of a failed commit. Cut it off, if we can.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise
            if end + len(line) > COMPACT_SIZE:
                try:
                    self._compact(path, upload)
                except OSError:
                    # The commit stands (its line is synced); a full disk only leaves the file
                    # long until a later commit compacts it.
                    log.warning("tus record %s could not be compacted", upload.id, exc_info=True)

    def _compact(self, path: str, upload: Upload) -> None:
        """Replace the record file with one holding only ``upload`` (caller holds its lock)."""
        while True:
            # Unique within this process by the counter, across processes by the pid; a name
            # left by a crashed process with the same pid is skipped.
            tmp = os.path.join(
                self.directory, f".{upload.id}.{os.getpid()}.{next(_TEMP_NUMBERS)}.tmp"
            )
            try:
                self._write_new(tmp, upload)
                break
            except FileExistsError:
                continue
        try:
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
        self._sync_dir()

    def _delete(self, upload_id: str) -> None:
        path = self._path(upload_id)
        with contextlib.suppress(UploadNotFound), _locked_record(path):
            os.unlink(path)
        # Even when it was gone already: a deletion that another request made may not be
        # durable yet, and this one is answered as done.
        self._sync_dir()

    def _list(self) -> list[str]:
        names = []
        for entry in os.scandir(self.directory):
            stem = entry.name.removesuffix(_SUFFIX)
            if entry.name.endswith(_SUFFIX) and is_valid_id(stem):
                names.append(stem)
        return names

    def _sync(self, fd: int) -> None:
        if self.fsync:
            _sync_data(fd)

    def _sync_dir(self) -> None:
        """Make a new, renamed or removed name in the directory durable (POSIX needs the
        directory itself synced)."""
        if self.fsync:
            fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # The UploadStore protocol.

    async def create(self, upload: Upload) -> None:
        await asyncio.to_thread(self._create, upload)

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


@contextlib.contextmanager
def _locked_record(path: str) -> Iterator[int]:
    """The record file at ``path``, open for reading and writing, under an exclusive ``flock``.

    Raises ``UploadNotFound`` when the record is gone, also when it was deleted while we
    waited. A file compacted while we waited was replaced by a new one: lock that instead.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise UploadNotFound() from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError as exc:
                raise UploadNotFound() from exc
            if current:
                yield fd
                return
        finally:
            # Closing the descriptor releases the lock.
            os.close(fd)


def _line(upload: Upload) -> bytes:
    return json.dumps(upload.to_dict(), separators=(",", ":")).encode() + b"\n"


def _last_record(data: bytes) -> tuple[Upload, int]:
    """The last complete record in a record file's bytes, and where its line ends.

    Raises ``UnreadableRecord`` when there is none.
    """
    # Whatever follows the last newline is a torn write, except in a file without any: one
    # object from before this format (a torn first line would not parse). A line that does
    # not parse is damaged, and the one before it is the record.
    end = data.rfind(b"\n") + 1 or len(data)
    while end > 0:
        start = data.rfind(b"\n", 0, end - 1) + 1
        try:
            return Upload.from_dict(json.loads(data[start:end])), end
        except (ValueError, KeyError, TypeError):
            end = start
    raise UnreadableRecord("the record file holds no complete record")


def _read_all(fd: int) -> bytes:
    pieces = []
    while piece := os.read(fd, _READ_SIZE):
        pieces.append(piece)
    return b"".join(pieces)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
