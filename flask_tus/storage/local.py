"""Upload bytes in a local directory, through aiofiles.

Each upload's data is the file ``<directory>/<id>``; ids are validated by the core before they
get here, and nothing else (metadata in particular) ever becomes part of a path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiofiles
import aiofiles.os
from aiofiles.threadpool.binary import AsyncFileIO

from ..core.errors import TusError, UploadNotFound
from ..core.ids import is_valid_id


class LocalWriter:
    """Writes one request's bytes from a start offset, coalescing small pieces.

    Pieces are gathered up to ``buffer_size`` bytes before each write, so a body arriving in
    64 KiB pieces costs one thread hop per buffer, and memory stays bounded by the buffer. The
    file is unbuffered: this buffer is the only one, and ``flush`` needs no second copy.
    """

    def __init__(self, file: AsyncFileIO, start: int, buffer_size: int, fsync: bool):
        self._file = file
        self._start = start
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._buffer_size = buffer_size
        self._fsync = fsync

    async def write(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= self._buffer_size:
            await self._drain()

    async def _drain(self) -> None:
        if not self._buffer:
            return
        view = memoryview(b"".join(self._buffer))
        self._buffer.clear()
        self._buffered = 0
        while view:
            # A raw file may take fewer bytes than offered; the rest goes in the next call.
            written = await self._file.write(view)
            view = view[written:]

    async def flush(self) -> None:
        await self._drain()
        if self._fsync:
            await asyncio.to_thread(os.fsync, self._file.fileno())

    async def discard(self) -> None:
        self._buffer.clear()
        self._buffered = 0
        await self._file.truncate(self._start)
        await self._file.seek(self._start)


class LocalStorage:
    """Upload data as files in ``directory`` (created if missing).

    ``chunk_size`` bounds the pieces read for downloads, hashing and concatenation and the
    buffer of writes. ``fsync`` makes written bytes durable before an offset is committed.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, chunk_size: int = 2**20, fsync: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.chunk_size = chunk_size
        self.fsync = fsync

    def path(self, upload_id: str) -> Path:
        """The data file of ``upload_id``; ``ValueError`` for anything but a valid id."""
        if not is_valid_id(upload_id):
            raise ValueError(f"invalid upload id {upload_id!r}")
        return self.directory / upload_id

    async def create(self, upload_id: str) -> None:
        await asyncio.to_thread(_create_empty, self.path(upload_id))

    @asynccontextmanager
    async def open_writer(self, upload_id: str, offset: int) -> AsyncIterator[LocalWriter]:
        try:
            file = await aiofiles.open(self.path(upload_id), "r+b", buffering=0)
        except FileNotFoundError as exc:
            raise UploadNotFound("upload data is missing") from exc
        try:
            # Seeking to the end tells the size and, in the usual case (size == offset), leaves
            # the file positioned where this request writes.
            size = await file.seek(0, os.SEEK_END)
            if size < offset:
                # Bytes were acknowledged and are gone: refuse rather than write at a hole.
                raise TusError("upload data is shorter than its record")
            if size > offset:
                # Bytes past the committed offset were never acknowledged: drop them
                # (decision 5 of the design).
                await file.truncate(offset)
                await file.seek(offset)
            yield LocalWriter(file, offset, self.chunk_size, self.fsync)
        finally:
            await file.close()

    async def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        remaining = end - start + 1
        async with aiofiles.open(self.path(upload_id), "rb") as file:
            await file.seek(start)
            while remaining > 0:
                piece = await file.read(min(self.chunk_size, remaining))
                if not piece:
                    break
                remaining -= len(piece)
                yield piece

    async def delete(self, upload_id: str) -> None:
        with suppress(FileNotFoundError):
            await aiofiles.os.remove(self.path(upload_id))

    async def iter_ids(self) -> AsyncIterator[str]:
        for name in await aiofiles.os.listdir(self.directory):
            if is_valid_id(name):
                yield name

    async def size(self, upload_id: str) -> int:
        """Bytes stored for ``upload_id``; raises ``UploadNotFound`` when there is no data."""
        try:
            return (await aiofiles.os.stat(self.path(upload_id))).st_size
        except FileNotFoundError as exc:
            raise UploadNotFound() from exc

    async def md5(self, upload_id: str) -> str:
        digest = hashlib.md5(usedforsecurity=False)
        size = await self.size(upload_id)
        if size:
            async for piece in self.read(upload_id, 0, size - 1):
                digest.update(piece)
        return digest.hexdigest()

    async def concatenate(self, target_id: str, source_ids: tuple[str, ...]) -> None:
        async with aiofiles.open(self.path(target_id), "wb") as target:
            for source_id in source_ids:
                size = await self.size(source_id)
                if size:
                    async for piece in self.read(source_id, 0, size - 1):
                        await target.write(piece)
            await target.flush()
            if self.fsync:
                await asyncio.to_thread(os.fsync, target.fileno())


def _create_empty(path: Path) -> None:
    """Create ``path`` empty; ``FileExistsError`` if it exists (ids are never reused)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
