"""Reading a request body that a newer request may interrupt.

A writer holds its upload's lock while it waits for the next body piece. When a newer request
asks it to let go (see :class:`~flask_tus.core.protocols.LockHandle`) the wait must end even if
the client has gone quiet, or a client that reconnected after a network failure would be locked
out by its own dead request. A watcher task polls the request to stop and cancels the reader,
but only while it waits for a piece: a write that has started always finishes, so what was
written and what is counted never differ.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from types import TracebackType


class BodyPump:
    """``async with BodyPump(body, should_stop) as pump: while (piece := await pump.next())``.

    :meth:`next` returns ``None`` at the end of the body, once ``should_stop()`` turned true
    (``stopped``), or when the surrounding task was cancelled while waiting (``cancelled``: the
    caller saves what it has and then re-raises ``CancelledError``).
    """

    def __init__(
        self, body: AsyncIterator[bytes], should_stop: Callable[[], bool], poll: float = 0.05
    ) -> None:
        self._body = body
        self._should_stop = should_stop
        self._poll = poll
        self._waiting = False
        self._interrupting = False
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.stopped = False
        self.cancelled = False

    async def __aenter__(self) -> BodyPump:
        self._task = asyncio.current_task()
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            if self._should_stop():
                self.stopped = True
                if self._waiting and self._task is not None:
                    self._interrupting = True
                    self._task.cancel()
                return

    async def next(self) -> bytes | None:
        """The next non-empty piece, or ``None`` (see the class docstring)."""
        if self.stopped or self._should_stop():
            self.stopped = True
            return None
        self._waiting = True
        try:
            while not (piece := await anext(self._body)):
                pass
            return piece
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                # Take the cancellation back so the caller can still save what it has.
                task.uncancel()
            if self._interrupting:
                self._interrupting = False
                return None
            self.cancelled = True
            return None
        finally:
            self._waiting = False
