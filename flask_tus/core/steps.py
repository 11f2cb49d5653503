"""Steps that, once started, end before the request that started them moves on.

A request's task can be cancelled at any ``await`` (a server shutting down, a timeout around
the app). A step running in a worker thread cannot be called off: cancelling the ``await``
only makes the caller stop waiting while the thread goes on. Had the caller then released the
upload's lock, the next writer would find the file or record still changing under it: a write
landing after it cut the file, or an old commit landing after it read the offset (the record
then counts bytes the file no longer holds). So the writes, syncs and commits of a request are
awaited to their end, and only then is the cancellation raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def run_to_end(step: Awaitable[T], undo: Callable[[T], object] | None = None) -> T:
    """Await ``step`` to its end and return its result or raise its error; if the awaiting
    task is cancelled meanwhile, still wait for the step, then raise ``CancelledError``.

    ``undo`` is called with the step's result when the caller was cancelled after the step
    acquired something nobody will use now (a descriptor, a lock): it gives it back.
    """
    future = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if future.cancelled():
            raise  # the step itself was cancelled, not its caller
    # The caller was cancelled: wait for the step, however often it is cancelled again.
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait((future,))
    # The step's own outcome is not the caller's concern any more; the cancellation is.
    if not future.cancelled() and future.exception() is None and undo is not None:
        undo(future.result())
    raise asyncio.CancelledError()
