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
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Every LoopThread of this process, told when the process forks.
_ALL: weakref.WeakSet[LoopThread] = weakref.WeakSet()


class LoopThread:
    """Owns one event loop running forever in a daemon thread, started on first use.

    A forked child (gunicorn ``--preload``, multiprocessing) inherits the loop but not its
    thread: there the next call starts a loop of its own, after ``on_fork`` has let the owner
    drop what belongs to the parent (its pooled connections, its client). ``on_fork`` runs in
    the child right after the fork, on the forking thread: it must not block or do I/O.
    """

    def __init__(self, name: str, on_fork: Callable[[], None] | None = None) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._guard = threading.Lock()
        self._on_fork = on_fork
        # The calls in flight (their tasks on the owned loop; touched only there). Not every
        # task of the loop: a client's own background tasks (PyMongo's monitors) never end.
        self._calls: set[asyncio.Future[Any]] = set()
        _ALL.add(self)

    def _forked(self) -> None:
        # The parent's loop thread does not exist here, and the guard may have been held by
        # another of its threads at the fork.
        self._guard = threading.Lock()
        self._loop = None
        self._calls = set()
        if self._on_fork is not None:
            self._on_fork()

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
            task = asyncio.current_task()
            assert task is not None
            self.track(task)
            return await work()

        future = asyncio.run_coroutine_threadsafe(wrapper(), loop)
        return await asyncio.wrap_future(future)

    def track(self, task: asyncio.Future[Any]) -> None:
        """On the owned loop: count ``task`` among the calls in flight until it ends (work a
        call started that outlives it, such as a transaction whose caller went away)."""
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def settle(self, grace: float) -> None:
        """On the owned loop: wait up to ``grace`` seconds for the other calls in flight (made
        through :meth:`run`) to end, then cancel those still running and wait for them to
        unwind (their transactions roll back), so that stopping the loop strands no caller."""
        current = asyncio.current_task()
        running = [task for task in self._calls if task is not current]
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    def stop(self) -> None:
        """Stop the loop and its thread (for tests and orderly shutdown; callers still waiting
        on it are stranded: :meth:`settle` first)."""
        with self._guard:
            loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)


def _after_fork_in_child() -> None:
    for owner in list(_ALL):
        owner._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
