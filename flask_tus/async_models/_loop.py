"""A private event loop in a daemon thread, for clients that are bound to one loop.

Async database clients (PyMongo's ``AsyncMongoClient``, Motor, SQLAlchemy's asyncpg and
aiosqlite engines) belong to the loop they first ran on. Under a WSGI server Flask runs each
async view on a new loop, so a shared client breaks from the second request, and one client per
loop never frees its connections. Instead one client lives on this loop, and callers on any loop
reach it through :meth:`LoopThread.run` (measured in the design notes: flat connections and
threads in every serving mode, about 1 ms per call).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class LoopThread:
    """Owns one event loop running forever in a daemon thread, started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._guard = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._guard:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                threading.Thread(target=serve, name=self._name, daemon=True).start()
                ready.wait()
                self._loop = loop
            return self._loop

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work()`` on the owned loop and await its result from the caller's loop.

        ``work`` is a callable (not a coroutine) so that the coroutine is created on the owning
        loop. Cancelling the caller cancels the work.
        """
        loop = self.loop
        if asyncio.get_running_loop() is loop:
            return await work()

        async def wrapper() -> T:
            return await work()

        future = asyncio.run_coroutine_threadsafe(wrapper(), loop)
        return await asyncio.wrap_future(future)

    def stop(self) -> None:
        """Stop the loop and its thread (for tests and orderly shutdown)."""
        with self._guard:
            loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
