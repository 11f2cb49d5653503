"""A request cancelled mid-step (a server shutting down, a timeout around the app): the steps
it started in worker threads end before its lock is released, and nothing it acquired leaks.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from core_helpers import create, head, make_handler, patch, write

from flask_tus.async_models import json_store
from flask_tus.core import TusHandler, Upload
from flask_tus.core.steps import run_to_end
from flask_tus.storage import locks
from flask_tus.storage.locks import FileLocker

# ---------------------------------------------------------------------- run_to_end


async def test_run_to_end_returns_the_result_or_raises_the_error() -> None:
    """Uncancelled, it is a plain ``await``."""

    async def fails() -> None:
        raise ValueError("no")

    assert await run_to_end(asyncio.sleep(0, "done")) == "done"
    with pytest.raises(ValueError, match="no"):
        await run_to_end(fails())


async def test_cancelled_caller_waits_for_the_step_then_is_cancelled() -> None:
    """The step ends (all of it) before the cancellation reaches the caller, and what it
    acquired is given back through ``undo``; cancelling again while waiting changes nothing."""
    go = asyncio.Event()
    log: list[str] = []

    async def step() -> str:
        await go.wait()
        log.append("step ended")
        return "descriptor"

    async def caller() -> None:
        await run_to_end(step(), undo=lambda value: log.append(f"undo {value}"))
        log.append("caller went on")  # pragma: no cover - must not happen

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()
    go.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["step ended", "undo descriptor"]


async def test_cancelled_caller_of_a_failing_step_is_cancelled_without_undo() -> None:
    """A step that fails after its caller was cancelled gives nothing back to undo."""
    go = asyncio.Event()
    undone: list[object] = []

    async def step() -> None:
        await go.wait()
        raise OSError("disk full")

    task = asyncio.create_task(run_to_end(step(), undo=undone.append))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.01)
    go.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert undone == []


# ---------------------------------------------------------------------- the handler


@pytest.fixture
def patient(upload_dir: Path) -> TusHandler:
    """A handler whose requests wait up to 5 s for a lock (the tests hold one on purpose)."""
    handler = make_handler(upload_dir)
    handler.locker = FileLocker(upload_dir, timeout=5)
    return handler


async def test_patch_cancelled_during_its_commit_keeps_the_lock_until_it_lands(
    patient: TusHandler, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATCH cancelled while its record commit runs in a worker thread holds the upload's
    lock until the commit has landed. A reconnecting PATCH waits for it and then reads the
    new offset, so record and data agree: no cut of acknowledged bytes, no record counting
    bytes the file does not hold."""
    upload_id = await create(patient, 200)
    entered, go = threading.Event(), threading.Event()
    real_line = json_store._line

    def slow_line(upload: Upload) -> bytes:
        if upload.offset == 100:
            entered.set()
            go.wait(10)
        return real_line(upload)

    monkeypatch.setattr(json_store, "_line", slow_line)
    first = asyncio.create_task(patch(patient, upload_id, 0, b"A" * 100))
    assert await asyncio.to_thread(entered.wait, 10)
    first.cancel()
    # The client reconnects and, having seen no answer, sends its bytes again from 0.
    again = asyncio.create_task(patch(patient, upload_id, 0, b"B" * 50))
    await asyncio.sleep(0.1)
    assert not again.done(), "the second PATCH got the lock while the first still committed"
    go.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    response = await again
    assert response.status == 409
    assert (await head(patient, upload_id)).headers["Upload-Offset"] == "100"
    assert (upload_dir / upload_id).read_bytes() == b"A" * 100
    await write(patient, upload_id, 100, b"C" * 100)
    assert (upload_dir / upload_id).read_bytes() == b"A" * 100 + b"C" * 100


async def test_patch_cancelled_while_taking_the_lock_leaves_it_free(
    patient: TusHandler, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATCH cancelled while its lock is being taken in a worker thread gives the lock back
    once the thread has it: the next PATCH is served, not refused with 423."""
    upload_id = await create(patient, 10)
    locker = patient.locker
    assert isinstance(locker, FileLocker)
    entered, go, taken = threading.Event(), threading.Event(), threading.Event()
    real = locks._open_and_lock

    def slow(*args: Any) -> Any:
        entered.set()
        go.wait(10)
        try:
            return real(*args)
        finally:
            taken.set()

    monkeypatch.setattr(locks, "_open_and_lock", slow)
    task = asyncio.create_task(patch(patient, upload_id, 0, b"x" * 10))
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    go.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The thread has taken the lock before the next request tries (else that one could win).
    assert await asyncio.to_thread(taken.wait, 10)
    monkeypatch.setattr(locks, "_open_and_lock", real)
    patient.locker = FileLocker(upload_dir, timeout=0.2)
    response = await patch(patient, upload_id, 0, b"y" * 10)
    assert response.status == 204, response.body
    assert (upload_dir / upload_id).read_bytes() == b"y" * 10
