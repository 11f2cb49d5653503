"""Callbacks: the seed's six hooks, as ``def`` or ``async def``, with zero or one argument."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import TusError
from .upload import Upload

log = logging.getLogger("flask_tus")

#: Pre-hooks may refuse a request by raising a :class:`~flask_tus.core.errors.TusError`
#: (usually :class:`~flask_tus.core.errors.HookRejected`).
PRE_HOOKS = ("on_create", "pre_save", "pre_delete")
#: Post-hooks run after the change is committed; a failure is logged and never undoes it.
POST_HOOKS = ("post_save", "on_complete", "post_delete")
HOOK_NAMES = PRE_HOOKS + POST_HOOKS

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RequestInfo:
    """A framework-neutral copy of the request's essentials."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    remote_addr: str | None = None


@dataclass(frozen=True)
class HookEvent:
    """What a hook receives: its name, the upload record and the request that caused it."""

    name: str
    upload: Upload
    request: RequestInfo


def _wants_event(func: Callable[..., Any]) -> bool:
    """Whether ``func`` takes the event: the seed's hooks took no argument, ours take one."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return True
    params = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return bool(params)


class Hooks:
    """The registry of hook functions, and the one place that calls them.

    Register with ``hooks.add("on_complete", func)`` or a decorator such as
    ``@hooks.on_complete``. Functions run in registration order.
    """

    def __init__(self) -> None:
        # Each function with whether it takes the event (looked up once, not per call).
        self._funcs: dict[str, list[tuple[Callable[..., Any], bool]]] = {
            name: [] for name in HOOK_NAMES
        }

    def add(self, name: str, func: F) -> F:
        """Register ``func`` for hook ``name``; ``ValueError`` for an unknown name."""
        if name not in self._funcs:
            raise ValueError(f"unknown hook {name!r}; expected one of {', '.join(HOOK_NAMES)}")
        self._funcs[name].append((func, _wants_event(func)))
        return func

    def on_create(self, func: F) -> F:
        return self.add("on_create", func)

    def pre_save(self, func: F) -> F:
        return self.add("pre_save", func)

    def post_save(self, func: F) -> F:
        return self.add("post_save", func)

    def on_complete(self, func: F) -> F:
        return self.add("on_complete", func)

    def pre_delete(self, func: F) -> F:
        return self.add("pre_delete", func)

    def post_delete(self, func: F) -> F:
        return self.add("post_delete", func)

    def __contains__(self, name: str) -> bool:
        return bool(self._funcs.get(name))

    async def run(self, name: str, event: HookEvent) -> None:
        """Call every function of hook ``name``, awaiting coroutines.

        A plain function runs in a worker thread (with the caller's context: Flask's
        contexts stay visible), so one that blocks (a database, a mail server) holds up only
        its own request, never the event loop the ASGI server shares between requests.

        For a pre-hook an exception propagates: a ``TusError`` with a 4xx status refuses the
        request with it, any other exception (or status) is an error of the server (500). For
        a post-hook it is logged and swallowed: the change it reports is already committed.
        """
        for func, wants_event in self._funcs[name]:
            call = functools.partial(func, event) if wants_event else func
            try:
                if inspect.iscoroutinefunction(func):
                    result = call()
                else:
                    result = await asyncio.to_thread(call)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                if name not in PRE_HOOKS:
                    log.exception(
                        "tus %s hook %r failed for upload %s", name, func, event.upload.id
                    )
                    continue
                if isinstance(exc, TusError) and not 400 <= exc.status <= 499:
                    # Not a refusal: a hook must not answer with a redirect, a success or a 5xx
                    # of its own choosing.
                    raise RuntimeError(f"tus {name} hook raised {exc!r} ({exc.status})") from exc
                raise
