"""Contract suites: every metadata store, every data storage and the locker keep the Protocols.

Add a backend by adding a param to the ``store`` (or ``storage``) fixture: every test of the
class then runs against it.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from flask_tus import Upload
from flask_tus.async_models import json_store
from flask_tus.async_models.json_store import JsonFileStore, UnreadableRecord
from flask_tus.core.errors import OffsetMismatch, TusError, UploadLocked, UploadNotFound
from flask_tus.core.ids import new_id
from flask_tus.core.lease import LeaseLocker
from flask_tus.core.protocols import (
    ConcatenatingStorage,
    DataInfo,
    DataStorage,
    InspectableStorage,
    LeaseStore,
    Locker,
    LockHandle,
    UploadStore,
)
from flask_tus.storage import local as local_storage
from flask_tus.storage.local import LocalStorage
from flask_tus.storage.locks import LOCKS_FILE, ONE_FILE_SUPPORTED, FileLocker

# Whole milliseconds: the precision every store keeps (BSON dates have milliseconds only).
CREATED = datetime(2026, 3, 1, 12, 30, 15, 123000, tzinfo=UTC)
PARIS = timezone(timedelta(hours=2))


# ====================================================================== UploadStore


@pytest.fixture(params=["json"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UploadStore]:
    """Each metadata store, empty."""
    if request.param == "json":
        yield JsonFileStore(tmp_path / "records")
    else:  # pragma: no cover - a param without a backend is a mistake in this file
        raise AssertionError(f"no store for {request.param}")


def full_record() -> Upload:
    """A record with every field set to a value other than its default."""
    return Upload(
        id=new_id(),
        length=None,
        created_at=CREATED.astimezone(PARIS),
        offset=7,
        metadata_header="filename cmVzdW1lLnBkZg==,private",
        expires_at=CREATED + timedelta(days=1, milliseconds=5),
        concat="final",
        parts=(new_id(), new_id()),
        completed_at=CREATED + timedelta(hours=1),
        md5="d41d8cd98f00b204e9800998ecf8427e",
        extra={"owner": "alice", "count": 3, "tags": ["a", "b"], "nested": {"ok": True}},
    )


def plain_record() -> Upload:
    """A fresh record as POST makes it."""
    return Upload(id=new_id(), length=100, created_at=CREATED)


class TestUploadStoreContract:
    """What every :class:`~flask_tus.core.protocols.UploadStore` must do."""

    def test_is_an_upload_store(self, store: UploadStore) -> None:
        """The store satisfies the runtime-checkable Protocol."""
        assert isinstance(store, UploadStore)

    @pytest.mark.parametrize("make", [full_record, plain_record])
    async def test_create_get_roundtrip(
        self, store: UploadStore, make: Callable[[], Upload]
    ) -> None:
        """``get`` returns every field as created: aware datetimes, tuple parts, None length."""
        upload = make()
        await store.create(upload)
        got = await store.get(upload.id)
        assert got == upload
        assert got is not upload
        assert isinstance(got.parts, tuple)
        for moment in (got.created_at, got.expires_at, got.completed_at):
            assert moment is None or moment.tzinfo is not None
        assert got.created_at == CREATED
        assert got.metadata == upload.metadata

    async def test_none_fields_roundtrip(self, store: UploadStore) -> None:
        """Unset optional fields come back unset, not as empty strings or zeros."""
        upload = Upload(id=new_id(), length=None, created_at=CREATED)
        await store.create(upload)
        got = await store.get(upload.id)
        assert got.length is None
        assert got.metadata_header is None
        assert got.expires_at is None and got.completed_at is None
        assert got.concat is None and got.md5 is None
        assert got.parts == () and got.extra == {}

    async def test_get_unknown_is_not_found(self, store: UploadStore) -> None:
        """``get`` of an id never created raises ``UploadNotFound``."""
        with pytest.raises(UploadNotFound):
            await store.get(new_id())

    async def test_commit_with_the_right_offset(self, store: UploadStore) -> None:
        """``commit`` with the stored offset replaces the record."""
        upload = plain_record()
        await store.create(upload)
        moved = upload.copy(offset=40, md5="abc", extra={"k": "v"})
        await store.commit(moved, expected_offset=0)
        assert await store.get(upload.id) == moved
        done = moved.copy(offset=100, completed_at=CREATED + timedelta(minutes=1))
        await store.commit(done, expected_offset=40)
        assert await store.get(upload.id) == done

    async def test_commit_may_keep_the_offset(self, store: UploadStore) -> None:
        """A commit that changes other fields at the same offset (md5, length) succeeds."""
        upload = plain_record().copy(length=None, offset=5)
        await store.create(upload)
        await store.commit(upload.copy(length=50), expected_offset=5)
        assert (await store.get(upload.id)).length == 50

    @pytest.mark.parametrize("wrong", [1, 39, 41, 100])
    async def test_commit_with_a_wrong_offset(self, store: UploadStore, wrong: int) -> None:
        """``commit`` with another expected offset raises ``OffsetMismatch``; nothing changes."""
        upload = plain_record().copy(offset=40)
        await store.create(upload)
        with pytest.raises(OffsetMismatch):
            await store.commit(upload.copy(offset=60, md5="x"), expected_offset=wrong)
        assert await store.get(upload.id) == upload

    async def test_commit_on_a_deleted_record(self, store: UploadStore) -> None:
        """``commit`` after ``delete`` raises ``UploadNotFound`` and does not recreate it."""
        upload = plain_record()
        await store.create(upload)
        await store.delete(upload.id)
        with pytest.raises(UploadNotFound):
            await store.commit(upload.copy(offset=10), expected_offset=0)
        with pytest.raises(UploadNotFound):
            await store.get(upload.id)

    async def test_commit_on_an_unknown_record(self, store: UploadStore) -> None:
        """``commit`` for an id never created raises ``UploadNotFound``."""
        with pytest.raises(UploadNotFound):
            await store.commit(plain_record(), expected_offset=0)

    async def test_delete_is_idempotent(self, store: UploadStore) -> None:
        """``delete`` removes the record; deleting again, or an unknown id, is no error."""
        upload = plain_record()
        other = plain_record()
        await store.create(upload)
        await store.create(other)
        await store.delete(upload.id)
        with pytest.raises(UploadNotFound):
            await store.get(upload.id)
        await store.delete(upload.id)
        await store.delete(new_id())
        assert await store.get(other.id) == other

    async def test_iter_uploads_lists_all(self, store: UploadStore) -> None:
        """``iter_uploads`` yields every record once, and no deleted one."""
        uploads = [plain_record() for _ in range(5)] + [full_record()]
        for upload in uploads:
            await store.create(upload)
        await store.delete(uploads[0].id)
        listed = [upload async for upload in store.iter_uploads()]
        assert sorted(u.id for u in listed) == sorted(u.id for u in uploads[1:])
        assert {u.id: u for u in listed} == {u.id: u for u in uploads[1:]}

    async def test_iter_uploads_of_an_empty_store(self, store: UploadStore) -> None:
        """An empty store lists nothing."""
        assert [upload async for upload in store.iter_uploads()] == []

    async def test_concurrent_commits_from_tasks(self, store: UploadStore) -> None:
        """20 tasks commit on the same expected offset: exactly one wins, 19 get 409."""
        upload = plain_record()
        await store.create(upload)
        results = await asyncio.gather(
            *(store.commit(upload.copy(offset=i + 1), expected_offset=0) for i in range(20)),
            return_exceptions=True,
        )
        winners = [i for i, result in enumerate(results) if result is None]
        assert len(winners) == 1, results
        assert all(isinstance(r, OffsetMismatch) for r in results if r is not None), results
        assert (await store.get(upload.id)).offset == winners[0] + 1

    async def test_concurrent_commits_from_threads(self, store: UploadStore) -> None:
        """20 threads, each on its own event loop, commit on the same offset: one winner."""
        upload = plain_record()
        await store.create(upload)
        barrier = threading.Barrier(20)
        results: list[BaseException | None] = [None] * 20

        def worker(i: int) -> None:
            barrier.wait()
            try:
                asyncio.run(store.commit(upload.copy(offset=i + 1), expected_offset=0))
            except BaseException as exc:
                results[i] = exc

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
        await asyncio.to_thread(_run_all, threads)
        winners = [i for i, result in enumerate(results) if result is None]
        assert len(winners) == 1, results
        assert all(isinstance(r, OffsetMismatch) for r in results if r is not None), results
        assert (await store.get(upload.id)).offset == winners[0] + 1


def _run_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


# ====================================================================== JsonFileStore on disk


def synced_inodes(monkeypatch: pytest.MonkeyPatch, os_module: Any) -> list[int]:
    """The inode numbers of what ``os_module.fsync`` syncs from now on, in order (it still
    syncs): a directory's shows that names in it were made durable."""
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os_module, "fsync", fsync)
    return synced


def record_lines(store: JsonFileStore, upload_id: str) -> list[bytes]:
    return (store.directory / f"{upload_id}.json").read_bytes().splitlines(keepends=True)


async def test_json_commits_append_one_line_each(tmp_path: Path) -> None:
    """A record file holds one JSON line per version; the last one is the record."""
    store = JsonFileStore(tmp_path)
    upload = plain_record()
    await store.create(upload)
    await store.commit(upload.copy(offset=40), expected_offset=0)
    await store.commit(upload.copy(offset=100), expected_offset=40)
    lines = record_lines(store, upload.id)
    assert [json.loads(line)["offset"] for line in lines] == [0, 40, 100]
    assert all(line.endswith(b"\n") for line in lines)
    assert not [p.name for p in tmp_path.iterdir() if p.name != f"{upload.id}.json"]


@pytest.mark.parametrize(
    "tail",
    [b'{"id":"', b"\x00" * 300, b"not json\n", b"[1, 2]\n"],
    ids=["torn-line", "zeros", "garbage-line", "not-a-record"],
)
async def test_json_torn_tail_is_ignored_and_cut(tmp_path: Path, tail: bytes) -> None:
    """What a crash mid-commit leaves after the last good line is not the record: ``get``
    returns the previous version, and the next commit cuts the tail off before appending."""
    store = JsonFileStore(tmp_path)
    upload = plain_record()
    await store.create(upload)
    moved = upload.copy(offset=40)
    await store.commit(moved, expected_offset=0)
    path = tmp_path / f"{upload.id}.json"
    good = path.read_bytes()
    path.write_bytes(good + tail)
    assert await store.get(upload.id) == moved
    with pytest.raises(OffsetMismatch):
        await store.commit(upload.copy(offset=50), expected_offset=0)
    done = upload.copy(offset=100)
    await store.commit(done, expected_offset=40)
    assert await store.get(upload.id) == done
    assert (
        path.read_bytes()
        == good + json.dumps(done.to_dict(), separators=(",", ":")).encode() + b"\n"
    )


async def test_json_record_of_the_earlier_format_is_read_and_extended(tmp_path: Path) -> None:
    """A record written as one JSON object without a newline (the earlier format) reads as
    the record, and a commit starts a new line after it."""
    store = JsonFileStore(tmp_path)
    upload = full_record().copy(length=100, concat=None, parts=(), completed_at=None)
    path = tmp_path / f"{upload.id}.json"
    path.write_text(json.dumps(upload.to_dict(), separators=(",", ":")))
    assert await store.get(upload.id) == upload
    moved = upload.copy(offset=90)
    await store.commit(moved, expected_offset=7)
    assert await store.get(upload.id) == moved
    assert [json.loads(line)["offset"] for line in record_lines(store, upload.id)] == [7, 90]


@pytest.mark.parametrize(
    "content", [b"", b'{"id": "abc', b"\x00" * 64], ids=["empty", "torn", "zeros"]
)
async def test_json_record_without_a_complete_line_is_unreadable(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A record file with no complete version (a crash during ``create``) is an error for
    ``get`` and ``commit``, and ``iter_uploads`` skips it with a log line."""
    store = JsonFileStore(tmp_path)
    upload_id = new_id()
    (tmp_path / f"{upload_id}.json").write_bytes(content)
    with pytest.raises(UnreadableRecord):
        await store.get(upload_id)
    with pytest.raises(UnreadableRecord):
        await store.commit(plain_record().copy(id=upload_id), expected_offset=0)
    assert (tmp_path / f"{upload_id}.json").read_bytes() == content
    assert [u async for u in store.iter_uploads()] == []
    assert f"tus record {upload_id} is unreadable" in caplog.text


def _killed_while_creating(store: JsonFileStore, upload: Upload, step: str) -> None:
    """Fork; the child creates ``upload`` in ``store`` and dies (``os._exit``, no cleanup) at
    ``step``: ``"write"`` (its line not written yet) or ``"sync"`` (written, not synced)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:

            def die(*args: object) -> None:
                os._exit(0)

            if step == "write":
                json_store._pwrite_all = die  # type: ignore[assignment]
            else:
                store._sync = die  # type: ignore[method-assign]
            store._create(upload)
        finally:
            os._exit(1)  # the step was never reached
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _has_unnamed_files(directory: Path) -> bool:
    """Whether ``directory``'s file system makes files without a name (``O_TMPFILE``) that
    can be linked through ``/proc``."""
    if not (json_store._O_TMPFILE and os.path.isdir("/proc/self/fd")):
        return False
    try:
        fd = os.open(directory, json_store._O_TMPFILE | os.O_WRONLY)
    except OSError:
        return False
    os.close(fd)
    return True


NO_UNNAMED = "files without a name need O_TMPFILE (Linux: ext4, xfs, btrfs, tmpfs)"


@pytest.mark.parametrize("step", ["write", "sync"])
async def test_json_create_killed_midway_leaves_no_record_file(tmp_path: Path, step: str) -> None:
    """A process killed while it creates a record leaves no record file behind (the file is
    named only once written and synced), so no unreadable record piles up; the upload can be
    created again. The record is never half there: get finds nothing."""
    if not _has_unnamed_files(tmp_path):
        pytest.skip(NO_UNNAMED)
    store = JsonFileStore(tmp_path)
    upload = plain_record()
    _killed_while_creating(store, upload, step)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UploadNotFound):
        await store.get(upload.id)
    await store.create(upload)
    assert await store.get(upload.id) == upload


@pytest.mark.parametrize("refusal", ["no-flag", "file-system", "no-link"])
async def test_json_store_without_files_without_a_name_still_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    """Where there is no ``O_TMPFILE``, the file system refuses it, or linking such a file
    through ``/proc`` is refused (a sandbox), records are created under their name at once,
    with the same contract: one line, and an existing name refused."""
    if refusal == "no-flag":
        monkeypatch.setattr(json_store, "_O_TMPFILE", 0)
    elif refusal == "no-link":
        if not _has_unnamed_files(tmp_path):
            pytest.skip(NO_UNNAMED)
        real_link = os.link

        def no_proc_link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if str(src).startswith("/proc/"):
                raise OSError(errno.ENOENT, "no /proc links here")
            real_link(src, dst, *args, **kwargs)

        monkeypatch.setattr(json_store.os, "link", no_proc_link)
    else:
        real_open = os.open

        def no_tmpfile(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if json_store._O_TMPFILE and flags & json_store._O_TMPFILE == json_store._O_TMPFILE:
                raise OSError(errno.EOPNOTSUPP, "not here")
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(json_store.os, "open", no_tmpfile)
    store = JsonFileStore(tmp_path)
    upload = plain_record()
    await store.create(upload)
    assert await store.get(upload.id) == upload
    assert len(record_lines(store, upload.id)) == 1
    with pytest.raises(FileExistsError):
        await store.create(upload)
    assert await store.get(upload.id) == upload


async def test_json_record_is_compacted_past_its_size_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``COMPACT_SIZE`` bytes a record file is rewritten as its one current line,
    through a temporary file that does not stay behind."""
    monkeypatch.setattr(json_store, "COMPACT_SIZE", 1000)
    store = JsonFileStore(tmp_path)
    upload = plain_record().copy(length=None)
    await store.create(upload)
    sizes = []
    for offset in range(1, 13):
        await store.commit(upload.copy(offset=offset), expected_offset=offset - 1)
        sizes.append(len(record_lines(store, upload.id)))
    # About 150 bytes a line: the file is compacted each time it would pass 1000 bytes.
    assert 1 in sizes and max(sizes) < 8
    assert await store.get(upload.id) == upload.copy(offset=12)
    assert [p.name for p in tmp_path.iterdir()] == [f"{upload.id}.json"]


async def test_json_commit_stands_when_compaction_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit whose line is synced succeeds even if compacting the file then fails (disk
    full): the record is the new version, the file stays long, no temporary file is left."""
    monkeypatch.setattr(json_store, "COMPACT_SIZE", 200)
    store = JsonFileStore(tmp_path)
    upload = plain_record()
    await store.create(upload)

    def disk_full(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json_store.os, "replace", disk_full)
    moved = upload.copy(offset=40)
    await store.commit(moved, expected_offset=0)
    assert await store.get(upload.id) == moved
    assert len(record_lines(store, upload.id)) == 2
    assert [p.name for p in tmp_path.iterdir()] == [f"{upload.id}.json"]
    assert f"tus record {upload.id} could not be compacted" in caplog.text


def _commit_behind_a_held_lock(
    store: JsonFileStore, upload: Upload, meanwhile: Callable[[Path], None]
) -> BaseException | None:
    """Hold the record's lock while a commit waits for it, run ``meanwhile`` on the record's
    path, then let go; what the commit raised (``None`` if it succeeded)."""
    path = store.directory / f"{upload.id}.json"
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    outcome: list[BaseException | None] = []

    def commit() -> None:
        try:
            asyncio.run(store.commit(upload.copy(offset=5), expected_offset=0))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=commit)
    thread.start()
    time.sleep(0.2)  # the commit is blocked on the lock by now (else it would have finished)
    assert not outcome
    meanwhile(path)
    os.close(fd)
    thread.join(30)
    return outcome[0]


@pytest.mark.parametrize("step", ["write", "sync"])
async def test_json_commit_whose_line_cannot_be_saved_leaves_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """A commit whose line cannot be written or synced (a full disk) raises, and the record
    stays the previous version: the line already written is cut off, so no reader counts an
    offset whose commit failed."""
    store = JsonFileStore(tmp_path, fsync=True)
    upload = plain_record()
    await store.create(upload)
    await store.commit(upload.copy(offset=40), expected_offset=0)

    def no_room(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    if step == "write":
        real_pwrite = os.pwrite

        def half(fd: int, data: Any, offset: int) -> int:
            real_pwrite(fd, bytes(data[:10]), offset)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(json_store.os, "pwrite", half)
    else:
        monkeypatch.setattr(json_store, "_sync_data", no_room)
    with pytest.raises(OSError, match="No space"):
        await store.commit(upload.copy(offset=100), expected_offset=40)
    monkeypatch.undo()
    assert (await store.get(upload.id)).offset == 40
    assert len(record_lines(store, upload.id)) == 2
    await store.commit(upload.copy(offset=100), expected_offset=40)
    assert (await store.get(upload.id)).offset == 100


def test_json_reader_waits_for_a_commit_that_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that comes while a commit syncs its line waits for the commit: when the sync
    fails and the line is cut off again, the reader never saw the offset that did not count."""
    store = JsonFileStore(tmp_path, fsync=True)
    upload = plain_record()
    asyncio.run(store.create(upload))
    syncing, fail = threading.Event(), threading.Event()

    def failing_sync(fd: int) -> None:
        syncing.set()
        fail.wait(10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json_store, "_sync_data", failing_sync)
    outcome: list[object] = []
    committer = threading.Thread(
        target=lambda: outcome.append(
            _catch(lambda: store._commit(upload.copy(offset=40), expected_offset=0))
        )
    )
    committer.start()
    assert syncing.wait(10)
    read: list[int] = []
    reader = threading.Thread(target=lambda: read.append(store._read(upload.id).offset))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive(), "the reader did not wait for the commit"
    fail.set()
    committer.join(10)
    reader.join(10)
    assert isinstance(outcome[0], OSError)
    assert read == [0]


def _catch(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:
        return exc


async def test_json_delete_syncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fsync on, a deleted record's removal is made durable (the directory synced) before
    ``delete`` returns, also when the record was gone already (another request's removal may
    not be durable yet); with fsync off, nothing is synced."""
    synced = synced_inodes(monkeypatch, json_store.os)
    directory = tmp_path.stat().st_ino
    for fsync_on in (True, False):
        store = JsonFileStore(tmp_path, fsync=fsync_on)
        upload = plain_record()
        await store.create(upload)
        synced.clear()
        await store.delete(upload.id)
        assert not (tmp_path / f"{upload.id}.json").exists()
        await store.delete(upload.id)
        assert synced == ([directory, directory] if fsync_on else [])


async def test_json_commit_waiting_on_a_deleted_record_is_not_found(tmp_path: Path) -> None:
    """A commit that waited for the lock of a record deleted meanwhile raises
    ``UploadNotFound`` and writes nothing anywhere."""
    store = JsonFileStore(tmp_path)
    upload = plain_record()
    await store.create(upload)
    result = await asyncio.to_thread(_commit_behind_a_held_lock, store, upload, os.unlink)
    assert isinstance(result, UploadNotFound)
    assert list(tmp_path.iterdir()) == []


async def test_json_commit_waiting_on_a_compacted_record_uses_the_new_file(
    tmp_path: Path,
) -> None:
    """A commit that waited for the lock of a file replaced meanwhile (compaction) commits
    to the new file."""
    store = JsonFileStore(tmp_path)
    upload = plain_record()
    await store.create(upload)

    def replace(path: Path) -> None:
        path.with_suffix(".new").write_bytes(path.read_bytes())
        os.replace(path.with_suffix(".new"), path)

    assert await asyncio.to_thread(_commit_behind_a_held_lock, store, upload, replace) is None
    assert await store.get(upload.id) == upload.copy(offset=5)


# ====================================================================== DataStorage


@pytest.fixture(params=["local"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DataStorage]:
    """Each data storage, empty, reading in 4-byte pieces (so small data spans many)."""
    if request.param == "local":
        yield LocalStorage(tmp_path / "data", chunk_size=4, fsync=False)
    else:  # pragma: no cover - a param without a backend is a mistake in this file
        raise AssertionError(f"no storage for {request.param}")


async def write(storage: DataStorage, upload_id: str, offset: int, *pieces: bytes) -> None:
    async with storage.open_writer(upload_id, offset) as writer:
        for piece in pieces:
            await writer.write(piece)
        await writer.flush()


async def read_all(storage: DataStorage, upload_id: str, start: int, end: int) -> bytes:
    return b"".join([piece async for piece in storage.read(upload_id, start, end)])


async def stored(storage: DataStorage, upload_id: str, expected: bytes) -> None:
    """Assert the upload holds exactly ``expected`` (same bytes, nothing after them)."""
    assert await storage.md5(upload_id) == hashlib.md5(expected).hexdigest()
    if expected:
        assert await read_all(storage, upload_id, 0, len(expected) - 1) == expected


async def ids(storage: DataStorage) -> set[str]:
    return {upload_id async for upload_id in storage.iter_ids()}


class TestDataStorageContract:
    """What every :class:`~flask_tus.core.protocols.DataStorage` must do."""

    def test_is_a_data_storage(self, storage: DataStorage) -> None:
        """The storage satisfies the runtime-checkable Protocol."""
        assert isinstance(storage, DataStorage)

    async def test_create_makes_empty_data(self, storage: DataStorage) -> None:
        """``create`` makes empty data that ``iter_ids`` lists."""
        upload_id = new_id()
        await storage.create(upload_id)
        await stored(storage, upload_id, b"")
        assert await ids(storage) == {upload_id}

    async def test_writer_appends_at_the_offset(self, storage: DataStorage) -> None:
        """Writers store consecutive pieces from their start offset."""
        upload_id = new_id()
        await storage.create(upload_id)
        await write(storage, upload_id, 0, b"hel", b"lo", b"", b" wo")
        await write(storage, upload_id, 8, b"rld")
        await stored(storage, upload_id, b"hello world")

    async def test_writer_cuts_bytes_past_its_offset(self, storage: DataStorage) -> None:
        """Bytes stored past the writer's offset (never committed) are cut off first."""
        upload_id = new_id()
        await storage.create(upload_id)
        await write(storage, upload_id, 0, b"hello world")
        await write(storage, upload_id, 5, b"XYZ")
        await stored(storage, upload_id, b"helloXYZ")

    async def test_writer_at_a_lower_offset_without_writing(self, storage: DataStorage) -> None:
        """Opening a writer at the committed offset drops a longer tail even with no new bytes."""
        upload_id = new_id()
        await storage.create(upload_id)
        await write(storage, upload_id, 0, b"0123456789")
        await write(storage, upload_id, 4)
        await stored(storage, upload_id, b"0123")

    async def test_writer_for_missing_data_is_not_found(self, storage: DataStorage) -> None:
        """``open_writer`` for data that does not exist raises ``UploadNotFound``."""
        with pytest.raises(UploadNotFound):
            await write(storage, new_id(), 0, b"x")

    @pytest.mark.parametrize(
        "pieces", [[b"ab"], [b"abcdefgh", b"ijkl"], [b"a", b"b", b"c", b"d", b"e"]]
    )
    async def test_discard_rolls_back(self, storage: DataStorage, pieces: list[bytes]) -> None:
        """``discard`` drops every byte this writer stored, buffered or already written."""
        upload_id = new_id()
        await storage.create(upload_id)
        await write(storage, upload_id, 0, b"hello")
        async with storage.open_writer(upload_id, 5) as writer:
            for piece in pieces:
                await writer.write(piece)
            await writer.discard()
        await stored(storage, upload_id, b"hello")

    async def test_writes_after_discard_start_at_the_offset(self, storage: DataStorage) -> None:
        """After ``discard`` the same writer writes from its start offset again."""
        upload_id = new_id()
        await storage.create(upload_id)
        await write(storage, upload_id, 0, b"hello")
        async with storage.open_writer(upload_id, 5) as writer:
            await writer.write(b"garbage!!")
            await writer.discard()
            await writer.write(b" you")
            await writer.flush()
        await stored(storage, upload_id, b"hello you")

    async def test_read_ranges(self, storage: DataStorage) -> None:
        """``read(start, end)`` gives bytes start..end inclusive, in bounded pieces."""
        upload_id = new_id()
        await storage.create(upload_id)
        data = bytes(range(256)) * 4
        await write(storage, upload_id, 0, data)
        assert await read_all(storage, upload_id, 0, len(data) - 1) == data
        assert await read_all(storage, upload_id, 2, 5) == data[2:6]
        assert await read_all(storage, upload_id, 1023, 1023) == data[1023:]
        assert await read_all(storage, upload_id, 100, 900) == data[100:901]
        pieces = [piece async for piece in storage.read(upload_id, 0, len(data) - 1)]
        assert len(pieces) > 1
        assert max(len(piece) for piece in pieces) <= 64 * 1024

    async def test_delete_is_idempotent(self, storage: DataStorage) -> None:
        """``delete`` removes the data; again, or for unknown data, is no error."""
        upload_id, other = new_id(), new_id()
        await storage.create(upload_id)
        await storage.create(other)
        await storage.delete(upload_id)
        await storage.delete(upload_id)
        await storage.delete(new_id())
        assert await ids(storage) == {other}
        with pytest.raises(UploadNotFound):
            await write(storage, upload_id, 0, b"x")

    async def test_md5(self, storage: DataStorage) -> None:
        """``md5`` is the hex MD5 of every stored byte, across many read pieces."""
        upload_id = new_id()
        await storage.create(upload_id)
        assert await storage.md5(upload_id) == hashlib.md5(b"").hexdigest()
        data = b"The quick brown fox jumps over the lazy dog" * 3
        await write(storage, upload_id, 0, data)
        assert await storage.md5(upload_id) == hashlib.md5(data).hexdigest()

    async def test_md5_of_missing_data_is_not_found(self, storage: DataStorage) -> None:
        """``md5`` of data that does not exist raises ``UploadNotFound``."""
        with pytest.raises(UploadNotFound):
            await storage.md5(new_id())

    async def test_concatenate(self, storage: DataStorage) -> None:
        """``concatenate`` replaces the target's data with the sources' data, in order."""
        assert isinstance(storage, ConcatenatingStorage)
        first, empty, last, target = new_id(), new_id(), new_id(), new_id()
        for upload_id in (first, empty, last, target):
            await storage.create(upload_id)
        await write(storage, first, 0, b"abc")
        await write(storage, last, 0, b"defghij")
        await write(storage, target, 0, b"left over from before")
        await storage.concatenate(target, (first, empty, last))
        await stored(storage, target, b"abcdefghij")
        await stored(storage, first, b"abc")
        await storage.concatenate(target, (last, first))
        await stored(storage, target, b"defghijabc")


async def test_local_iter_ids_ignores_records_and_lock_files(tmp_path: Path) -> None:
    """Sharing a directory with JSON records and lock files, ``iter_ids`` lists data only."""
    directory = tmp_path / "shared"
    storage = LocalStorage(directory, fsync=False)
    records = JsonFileStore(directory)
    locker = FileLocker(directory)
    upload_id, locked_id = new_id(), new_id()
    await storage.create(upload_id)
    await records.create(Upload(id=upload_id, length=3, created_at=CREATED))
    await records.create(Upload(id=new_id(), length=3, created_at=CREATED))
    await records.commit(Upload(id=upload_id, length=3, created_at=CREATED), expected_offset=0)
    (directory / f"{new_id()}.lock").write_bytes(b"")
    (directory / f".{new_id()}.x.tmp").write_bytes(b"")
    (directory / "README").write_text("not an upload")
    (directory / new_id().upper()).write_bytes(b"not an id either")
    async with locker.lock(locked_id):
        assert await ids(storage) == {upload_id}
    assert await ids(storage) == {upload_id}


async def test_local_read_pieces_follow_chunk_size(tmp_path: Path) -> None:
    """LocalStorage reads in pieces of at most ``chunk_size`` bytes."""
    storage = LocalStorage(tmp_path, chunk_size=3, fsync=False)
    upload_id = new_id()
    await storage.create(upload_id)
    await write(storage, upload_id, 0, b"0123456789")
    pieces = [piece async for piece in storage.read(upload_id, 0, 9)]
    assert pieces == [b"012", b"345", b"678", b"9"]


async def test_local_storage_tells_size_and_age(tmp_path: Path) -> None:
    """``info`` gives the data file's size and modification time (aware UTC), and raises
    ``UploadNotFound`` without data: cleanup judges interrupted creations by them."""
    storage = LocalStorage(tmp_path, fsync=False)
    assert isinstance(storage, InspectableStorage)
    upload_id = new_id()
    await storage.create(upload_id)
    await write(storage, upload_id, 0, b"12345")
    then = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    os.utime(storage.path(upload_id), (then.timestamp(), then.timestamp()))
    assert await storage.info(upload_id) == DataInfo(5, then)
    with pytest.raises(UploadNotFound):
        await storage.info(new_id())


async def test_local_data_is_a_file_named_by_id(tmp_path: Path) -> None:
    """LocalStorage keeps the bytes of ``<id>`` in ``<directory>/<id>``; invalid ids are refused."""
    storage = LocalStorage(tmp_path, fsync=True)
    upload_id = new_id()
    await storage.create(upload_id)
    await write(storage, upload_id, 0, b"bytes")
    assert (tmp_path / upload_id).read_bytes() == b"bytes"
    with pytest.raises(ValueError):
        await storage.create("../escape")


# ====================================================================== FileLocker


#: Both ways of locking where this platform has both (bytes of one file needs 64-bit Linux).
LOCK_MODES = [
    pytest.param(
        True,
        id="one-file",
        marks=pytest.mark.skipif(not ONE_FILE_SUPPORTED, reason="needs 64-bit Linux"),
    ),
    pytest.param(False, id="file-per-upload"),
]


@pytest.fixture(params=LOCK_MODES)
def one_file(request: pytest.FixtureRequest) -> bool:
    mode: bool = request.param
    return mode


@pytest.fixture
def locker(tmp_path: Path, one_file: bool) -> FileLocker:
    return FileLocker(tmp_path / "locks", timeout=0.1, interval=0.01, one_file=one_file)


def lock_files(locker: FileLocker) -> list[str]:
    """Every file in the locker's directory (lock files and any marker beside them), except
    the one file whose bytes are the locks, which stays."""
    return sorted(p.name for p in locker.directory.iterdir() if p.name != LOCKS_FILE)


def test_one_file_locks_are_the_default_where_supported(tmp_path: Path) -> None:
    """64-bit Linux (where CI runs) locks bytes of one file; elsewhere it asks for an error."""
    assert FileLocker(tmp_path).one_file is ONE_FILE_SUPPORTED
    if sys.platform == "linux" and sys.maxsize > 2**32:
        assert ONE_FILE_SUPPORTED
    else:
        with pytest.raises(ValueError):
            FileLocker(tmp_path, one_file=True)


async def test_locker_is_a_locker(locker: FileLocker) -> None:
    """FileLocker satisfies the runtime-checkable Protocol."""
    assert isinstance(locker, Locker)


async def test_second_lock_on_the_same_id_is_refused(locker: FileLocker) -> None:
    """While one holder keeps an id, another ``lock`` raises ``UploadLocked`` (423)."""
    upload_id = new_id()
    async with locker.lock(upload_id):
        with pytest.raises(UploadLocked) as caught:
            async with locker.lock(upload_id):
                raise AssertionError("the lock was given twice")
        assert caught.value.status == 423
    async with locker.lock(upload_id):
        pass


async def test_waiter_gets_a_lock_released_within_its_timeout(
    tmp_path: Path, one_file: bool
) -> None:
    """A waiter is not refused at once: it gets a lock released before its wait ends."""
    patient = FileLocker(tmp_path, timeout=30, interval=0.01, one_file=one_file)
    upload_id = new_id()
    order: list[str] = []
    holding = asyncio.Event()

    async def holder() -> None:
        async with patient.lock(upload_id):
            holding.set()
            await asyncio.sleep(0.05)
            order.append("released")

    async def waiter() -> None:
        await holding.wait()
        async with patient.lock(upload_id):
            order.append("acquired")

    await asyncio.gather(holder(), waiter())
    assert order == ["released", "acquired"]


async def test_different_ids_do_not_conflict(locker: FileLocker) -> None:
    """Locks on different ids are independent; one file's locks create no file per lock."""
    first, second = new_id(), new_id()
    async with locker.lock(first), locker.lock(second):
        expected = [] if locker.one_file else sorted([f"{first}.lock", f"{second}.lock"])
        assert lock_files(locker) == expected


async def test_lock_files_are_removed_after_release(locker: FileLocker) -> None:
    """No lock file (or other marker) is left once every holder let go, after success,
    refusal or an error."""
    upload_id = new_id()
    async with locker.lock(upload_id):
        assert lock_files(locker) == ([] if locker.one_file else [f"{upload_id}.lock"])
        with pytest.raises(UploadLocked):
            async with locker.lock(upload_id):
                pass
    assert lock_files(locker) == []
    with pytest.raises(KeyError):
        async with locker.lock(upload_id):
            raise KeyError("boom")
    assert lock_files(locker) == []
    async with locker.lock(upload_id):
        pass
    assert lock_files(locker) == []


async def test_waiter_asks_the_holder_to_stop(tmp_path: Path, one_file: bool) -> None:
    """A holder sees no stop request until another request waits for its lock, sees it while
    that request waits, and whoever holds the lock after the waiter gave up sees none."""
    locker = FileLocker(tmp_path, timeout=0.3, interval=0.01, one_file=one_file)
    upload_id = new_id()
    async with locker.lock(upload_id) as holder:
        assert not holder.stop_requested()
        waiting = asyncio.ensure_future(locker.lock(upload_id).__aenter__())
        await asyncio.sleep(0.15)  # the waiter asked; the holder looks at most every 50 ms
        assert holder.stop_requested()
        with pytest.raises(UploadLocked):
            await waiting
    async with locker.lock(upload_id) as next_holder:
        await asyncio.sleep(0.06)
        assert not next_holder.stop_requested()
    assert lock_files(locker) == []


async def test_waiter_that_gets_the_lock_does_not_ask_itself_to_stop(
    tmp_path: Path, one_file: bool
) -> None:
    """A waiter asked the holder to stop; once the holder let go and the waiter holds the
    lock, that request is not seen by the waiter itself."""
    locker = FileLocker(tmp_path, timeout=5, interval=0.01, one_file=one_file)
    upload_id = new_id()
    holding = asyncio.Event()
    seen: list[bool] = []

    async def holder() -> None:
        async with locker.lock(upload_id) as handle:
            holding.set()
            for _ in range(500):  # stop_requested is polled, as a writer does between pieces
                if handle.stop_requested():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("the holder never saw the request to stop")

    async def waiter() -> None:
        await holding.wait()
        async with locker.lock(upload_id) as handle:
            await asyncio.sleep(0.06)
            seen.append(handle.stop_requested())

    await asyncio.wait_for(asyncio.gather(holder(), waiter()), 10)
    assert seen == [False]


async def stop_requests_seen(holder: LockHandle, waiting: asyncio.Future[Any]) -> list[bool]:
    """What ``holder`` answers to ``stop_requested`` while ``waiting`` is not done, polled as a
    writer polls between body pieces."""
    seen: list[bool] = []
    while not waiting.done():
        seen.append(holder.stop_requested())
        await asyncio.sleep(0.01)
    return seen


async def unasked_wait_is_refused(holder: LockHandle, waiter: Locker, upload_id: str) -> None:
    """While ``holder`` holds ``upload_id``, ``waiter`` waits with ``take_over=False``: it raises
    ``UploadLocked`` after its wait time, and the holder never sees a request to stop."""
    waiting = asyncio.ensure_future(waiter.lock(upload_id, take_over=False).__aenter__())
    seen = await stop_requests_seen(holder, waiting)
    with pytest.raises(UploadLocked):
        await waiting
    assert seen
    assert not any(seen)


async def test_waiter_that_does_not_take_over_never_asks(tmp_path: Path, one_file: bool) -> None:
    """With ``take_over=False`` a waiter only waits: the holder sees no request to stop during
    the whole wait, the waiter raises ``UploadLocked`` after its wait time and leaves no
    marker, and the next holder sees no request either."""
    locker = FileLocker(tmp_path, timeout=0.3, interval=0.01, one_file=one_file)
    upload_id = new_id()
    async with locker.lock(upload_id) as holder:
        await unasked_wait_is_refused(holder, locker, upload_id)
        assert lock_files(locker) == ([] if one_file else [f"{upload_id}.lock"])
    async with locker.lock(upload_id) as next_holder:
        await asyncio.sleep(0.06)
        assert not next_holder.stop_requested()
    assert lock_files(locker) == []


async def holder_then_unasked_waiter(
    holding_locker: Locker, waiting_locker: Locker, upload_id: str, *, looks: int
) -> list[bool]:
    """A holder (through ``holding_locker``) looks ``looks`` times at ``stop_requested`` every
    10 ms, then lets go of its own accord; meanwhile a waiter (through ``waiting_locker``, with
    ``take_over=False``) waits. Checks that the waiter got the lock only after the holder let
    go; returns the looks that saw a stop request (none expected)."""
    holding = asyncio.Event()
    seen: list[bool] = []
    order: list[str] = []

    async def holder() -> None:
        async with holding_locker.lock(upload_id) as handle:
            holding.set()
            for _ in range(looks):
                seen.append(handle.stop_requested())
                await asyncio.sleep(0.01)
            order.append("released")

    async def waiter() -> None:
        await holding.wait()
        async with waiting_locker.lock(upload_id, take_over=False):
            order.append("acquired")

    await asyncio.wait_for(asyncio.gather(holder(), waiter()), 10)
    assert order == ["released", "acquired"]
    assert len(seen) == looks
    return [look for look in seen if look]


async def test_waiter_that_does_not_take_over_gets_a_released_lock(
    tmp_path: Path, one_file: bool
) -> None:
    """A waiter with ``take_over=False`` is not refused at once: it gets the lock once the
    holder lets go of its own accord, unasked, before the wait ends."""
    locker = FileLocker(tmp_path, timeout=30, interval=0.01, one_file=one_file)
    # Three looks at the stop request (one every 50 ms at most).
    assert await holder_then_unasked_waiter(locker, locker, new_id(), looks=15) == []
    assert lock_files(locker) == []


class RecordingLeases:
    """A :class:`LeaseStore` in memory that records release requests (leases never expire)."""

    def __init__(self) -> None:
        self.holders: dict[str, str] = {}
        self.requested: set[str] = set()
        self.requests = 0

    async def acquire_lease(self, upload_id: str, owner: str, ttl: float) -> bool:
        holder = self.holders.get(upload_id)
        if holder is not None and holder != owner:
            return False
        if holder is None:
            self.requested.discard(upload_id)
        self.holders[upload_id] = owner
        return True

    async def release_lease(self, upload_id: str, owner: str) -> None:
        if self.holders.get(upload_id) == owner:
            del self.holders[upload_id]

    async def request_release(self, upload_id: str) -> None:
        self.requests += 1
        self.requested.add(upload_id)

    async def release_requested(self, upload_id: str, owner: str) -> bool:
        return self.holders.get(upload_id) == owner and upload_id in self.requested


async def test_lease_waiter_that_does_not_take_over_never_asks() -> None:
    """Across hosts (no shared local lock): a ``take_over=False`` waiter never requests a
    release, the holder sees no request, and the waiter raises ``UploadLocked`` after its wait
    time; by default the waiter requests it and the holder sees it."""
    leases = RecordingLeases()
    assert isinstance(leases, LeaseStore)
    upload_id = new_id()
    host_a = LeaseLocker(leases, ttl=30, poll=0.01)
    host_b = LeaseLocker(leases, ttl=30, timeout=0.2, interval=0.01)
    async with host_a.lock(upload_id) as holder:
        await unasked_wait_is_refused(holder, host_b, upload_id)
        assert leases.requests == 0

        waiting = asyncio.ensure_future(host_b.lock(upload_id).__aenter__())
        seen = await stop_requests_seen(holder, waiting)
        with pytest.raises(UploadLocked):
            await waiting
        assert leases.requests > 0
        assert any(seen)


async def test_lease_waiter_that_does_not_take_over_gets_a_released_lease() -> None:
    """A ``take_over=False`` lease waiter is not refused at once: it gets the lease once the
    holder lets go of its own accord, unasked, before the wait ends."""
    leases = RecordingLeases()
    upload_id = new_id()
    host_a = LeaseLocker(leases, ttl=30, poll=0.01)
    host_b = LeaseLocker(leases, ttl=30, timeout=30, interval=0.01)
    # The holder looks for release requests every 10 ms.
    assert await holder_then_unasked_waiter(host_a, host_b, upload_id, looks=10) == []
    assert leases.requests == 0
    assert leases.holders == {}


async def test_lease_locker_passes_take_over_to_its_local_lock(
    tmp_path: Path, one_file: bool
) -> None:
    """On one host the local lock decides: ``take_over=False`` reaches it, so the holder sees
    no request while the waiter waits; by default it does (the local lock asked)."""
    leases = RecordingLeases()
    upload_id = new_id()
    local = FileLocker(tmp_path, timeout=0.3, interval=0.01, one_file=one_file)
    locker = LeaseLocker(leases, local=local, ttl=30, timeout=0.3, poll=0.01)
    async with locker.lock(upload_id) as holder:
        await unasked_wait_is_refused(holder, locker, upload_id)

        waiting = asyncio.ensure_future(locker.lock(upload_id).__aenter__())
        seen = await stop_requests_seen(holder, waiting)
        with pytest.raises(UploadLocked):
            await waiting
        assert any(seen)
    assert leases.requests == 0  # the local lock refused the waiters before the lease loop
    assert lock_files(local) == []


async def test_lock_is_exclusive_across_threads(locker: FileLocker) -> None:
    """A lock held on one thread's event loop refuses a request on another thread's loop."""
    upload_id = new_id()

    def try_lock() -> str:
        async def attempt() -> str:
            try:
                async with locker.lock(upload_id):
                    return "acquired"
            except UploadLocked:
                return "locked"

        return asyncio.run(attempt())

    async with locker.lock(upload_id):
        assert await asyncio.to_thread(try_lock) == "locked"
    assert await asyncio.to_thread(try_lock) == "acquired"


async def test_invalid_id_never_becomes_a_path(locker: FileLocker) -> None:
    """An id that is not 32 hex digits is refused before it reaches the file system."""
    with pytest.raises(ValueError):
        async with locker.lock("../../etc/passwd"):
            pass


def _hold_in_child(
    directory: str, upload_id: str, one_file: bool, locked: object, release: object
) -> None:
    """Child process: hold the lock until told to let go."""
    locked_event: threading.Event = locked  # type: ignore[assignment]
    release_event: threading.Event = release  # type: ignore[assignment]

    async def hold() -> None:
        async with FileLocker(directory, timeout=5, one_file=one_file).lock(upload_id):
            locked_event.set()
            await asyncio.to_thread(release_event.wait, 30)

    asyncio.run(hold())


def test_lock_is_exclusive_across_processes(tmp_path: Path, one_file: bool) -> None:
    """A lock held by another process refuses this one; it is free once that process lets go."""
    context = multiprocessing.get_context("spawn")
    locked, release = context.Event(), context.Event()
    directory = tmp_path / "locks"
    upload_id = new_id()
    child = context.Process(
        target=_hold_in_child, args=(str(directory), upload_id, one_file, locked, release)
    )
    child.start()
    try:
        assert locked.wait(60), "the child never took the lock"
        locker = FileLocker(directory, timeout=0.1, interval=0.01, one_file=one_file)

        async def attempt() -> str:
            try:
                async with locker.lock(upload_id):
                    return "acquired"
            except UploadLocked:
                return "locked"

        assert asyncio.run(attempt()) == "locked"
        release.set()
        child.join(60)
        assert child.exitcode == 0
        assert asyncio.run(attempt()) == "acquired"
        assert lock_files(locker) == []
    finally:
        release.set()
        child.join(60)
        if child.is_alive():  # pragma: no cover - only when the child hangs
            child.kill()


async def test_local_writer_survives_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the kernel takes fewer bytes than offered, the rest is written next, in order."""
    real_write = os.write
    calls: list[int] = []

    def short_write(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data)[:3])

    monkeypatch.setattr(local_storage.os, "write", short_write)
    storage = LocalStorage(tmp_path, chunk_size=64, fsync=True)
    upload_id = new_id()
    await storage.create(upload_id)
    pieces = [b"ab", b"", b"cdefg", b"h", b"ijklmnop"]
    await write(storage, upload_id, 0, *pieces)
    assert (tmp_path / upload_id).read_bytes() == b"abcdefghijklmnop"
    assert calls == [16, 13, 10, 7, 4, 1]  # 3 bytes at a time, the rest offered again


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is Linux-only")
def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
@pytest.mark.parametrize("pieces", [[b"abc"], [b"abcdef", b"gh"]], ids=["flush", "buffer-full"])
async def test_local_writer_closes_its_file_when_a_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pieces: list[bytes]
) -> None:
    """A failing write (disk full) reaches the caller, and the data file is closed all the
    same, whether the failure came in the final flush or in a full buffer's write."""

    def disk_full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    storage = LocalStorage(tmp_path, chunk_size=4, fsync=True)
    upload_id = new_id()
    await storage.create(upload_id)
    before = open_descriptors()
    monkeypatch.setattr(local_storage.os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        await write(storage, upload_id, 0, *pieces)
    assert open_descriptors() == before
    assert (tmp_path / upload_id).read_bytes() == b""


async def test_local_writer_refuses_missing_or_short_data(tmp_path: Path) -> None:
    """A writer at an offset past the data's end is refused (bytes once acknowledged are gone),
    as is one for data that is missing; neither file is touched."""
    storage = LocalStorage(tmp_path, fsync=False)
    upload_id = new_id()
    await storage.create(upload_id)
    await write(storage, upload_id, 0, b"abc")
    with pytest.raises(TusError) as caught:
        await write(storage, upload_id, 5, b"xyz")
    assert caught.value.status == 500
    with pytest.raises(UploadNotFound):
        await write(storage, new_id(), 0, b"xyz")
    assert [p.name for p in tmp_path.iterdir()] == [upload_id]
    assert (tmp_path / upload_id).read_bytes() == b"abc"


async def test_local_writer_writes_a_full_last_buffer_with_the_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A buffer is written when the next piece would overflow it, so a body that ends on a
    full buffer is written, synced and closed in one thread hop, and no write carries more than
    the buffer."""
    calls: list[tuple[list[bytes], bool]] = []
    real_write_pieces = local_storage._write_pieces

    async def spy(fd: int, pieces: list[bytes], **options: Any) -> None:
        calls.append((list(pieces), options.get("sync", False)))
        await real_write_pieces(fd, pieces, **options)

    monkeypatch.setattr(local_storage, "_write_pieces", spy)
    storage = LocalStorage(tmp_path, chunk_size=4, fsync=True)
    upload_id = new_id()
    await storage.create(upload_id)
    await write(storage, upload_id, 0, b"ab", b"cd")
    assert calls == [([b"ab", b"cd"], True)]
    calls.clear()
    await write(storage, upload_id, 4, b"ef", b"g", b"h", b"ijklm", b"n")
    assert calls == [([b"ef", b"g", b"h"], False), ([b"ijklm"], False), ([b"n"], True)]
    assert storage.path(upload_id).read_bytes() == b"abcdefghijklmn"


async def test_local_writer_starts_writeback_as_bytes_arrive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fsync on, writeback starts every ``WRITEBACK_INTERVAL`` bytes, each time from
    where it last started (one interval back: those pages are dropped once on disk), and the
    final flush fsyncs; with fsync off, neither happens."""
    advised: list[tuple[int, int, int]] = []
    synced: list[int] = []
    real_fadvise, real_fsync = os.posix_fadvise, os.fsync

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, length, advice))
        real_fadvise(fd, offset, length, advice)

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(local_storage.os, "posix_fadvise", fadvise)
    monkeypatch.setattr(local_storage.os, "fsync", fsync)
    monkeypatch.setattr(local_storage, "WRITEBACK_INTERVAL", 10)
    piece = bytes(range(4))
    for fsync_on, expected in ((True, [4, 4]), (False, [])):
        advised.clear()
        synced.clear()
        storage = LocalStorage(tmp_path / str(fsync_on), chunk_size=4, fsync=fsync_on)
        upload_id = new_id()
        await storage.create(upload_id)
        await write(storage, upload_id, 0, piece)
        await write(storage, upload_id, 4, *[piece] * 9)  # 36 bytes in 4-byte buffers
        assert storage.path(upload_id).read_bytes() == piece * 10
        # The first writer wrote too little. The second nudges when its writes reach offsets
        # 16 and 28; its last piece goes to disk with the final flush, which syncs instead.
        assert advised == [(start, 0, os.POSIX_FADV_DONTNEED) for start in expected]
        # Each writer's flush syncs the file, and the creation synced the directory.
        assert len(synced) == (3 if fsync_on else 0)


@pytest.mark.parametrize("sync_created", [True, False])
async def test_local_storage_syncs_its_directory_after_names_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_created: bool
) -> None:
    """With fsync on, creating a data file (unless ``sync_created=False``) and removing one
    sync the directory before they return: a new or removed name survives a power cut only
    then. With fsync off, nothing is synced."""
    synced = synced_inodes(monkeypatch, local_storage.os)
    directory = tmp_path.stat().st_ino
    storage = LocalStorage(tmp_path, fsync=True, sync_created=sync_created)
    upload_id = new_id()
    await storage.create(upload_id)
    assert synced == ([directory] if sync_created else [])
    synced.clear()
    await storage.delete(upload_id)
    assert not storage.path(upload_id).exists()
    assert synced == [directory]

    synced.clear()
    unsynced = LocalStorage(tmp_path / "off", fsync=False)
    await unsynced.create(upload_id)
    await unsynced.delete(upload_id)
    assert synced == []


def works_in_a_forked_child(store: UploadStore, upload: Upload) -> None:
    """Fork; in the child, read ``upload`` (already created) through ``store`` and commit offset
    1, within 10 s. Fails unless the child could; then the parent reads the child's commit.

    For stores that keep a client on a loop thread: the child inherits the objects, not the
    thread (gunicorn ``--preload`` with an app that used its store at start).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:

            async def child() -> None:
                async with asyncio.timeout(10):
                    assert (await store.get(upload.id)).id == upload.id
                    await store.commit(upload.copy(offset=1), expected_offset=0)

            asyncio.run(child())
            code = 0
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    try:
        answer = os.read(read, 1)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert answer == b"\x00", "the child could not use the store"
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, store.get(upload.id)).result().offset == 1
