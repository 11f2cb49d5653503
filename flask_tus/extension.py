"""The Flask extension: configuration, backends, hooks and routes for one or more apps."""

from __future__ import annotations

import asyncio
import contextvars
import io
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, current_app, has_app_context

from .asgi import Guard
from .async_models.json_store import JsonFileStore
from .blueprint import (
    TUS_BLUEPRINT,
    OtherMethod,
    answer_other_methods,
    make_blueprint,
    mark_other_methods,
)
from .core.checksum import ALGORITHMS
from .core.handler import TusHandler
from .core.hooks import HOOK_NAMES, HookEvent, Hooks
from .core.lease import LeaseLocker
from .core.messages import TusResponse, collection_path
from .core.protocols import DataStorage, LeaseStore, Locker, UploadStore
from .core.settings import TusSettings, parse_networks
from .core.upload import Upload
from .storage.local import LocalStorage
from .storage.locks import FileLocker

if TYPE_CHECKING:
    from .asgi import TusASGI

F = TypeVar("F", bound=Callable[..., Any])

#: Every setting with its default. ``TUS_UPLOAD_DIR`` defaults to ``<instance>/tus-uploads``.
DEFAULTS: dict[str, Any] = {
    "TUS_UPLOAD_URL": "/files/",
    "TUS_UPLOAD_DIR": None,
    "TUS_MAX_SIZE": 2**32,
    "TUS_EXPIRATION": timedelta(days=1),
    "TUS_EXPIRE_COMPLETED": False,
    "TUS_CHUNK_SIZE": 2**20,
    "TUS_CHECKSUM_ALGORITHMS": ALGORITHMS,
    "TUS_CORS_ORIGINS": "*",
    "TUS_TRUSTED_PROXIES": (),
    "TUS_LOCK_TIMEOUT": 0.5,
    "TUS_LEASE_TTL": 30.0,
    "TUS_FSYNC": True,
    "TUS_MAX_METADATA_SIZE": 8192,
}


@dataclass
class TusState:
    """What the extension keeps per app, in ``app.extensions["tus"]``."""

    extension: FlaskTus
    handler: TusHandler
    collection_path: str
    upload_dir: str


class FlaskTus:
    """A tus 1.0.0 endpoint for a Flask app, in the Pallets extension pattern.

    ``FlaskTus(app)`` or ``FlaskTus()`` then ``init_app(app)`` (application factories).
    ``model`` picks the metadata store: ``None`` for the embedded JSON store, an object that
    implements :class:`~flask_tus.core.protocols.UploadStore`, or a class with a
    ``from_flask(app, db)`` classmethod (the seed's ``FlaskTus(app, model=..., db=...)``).
    ``storage`` replaces the local-directory byte storage. ``locker`` replaces the whole
    per-upload lock, used as given: the host-local file locks and, with a store that keeps
    leases, the lease around them (``TUS_LOCK_TIMEOUT`` and ``TUS_LEASE_TTL`` then do not apply).

    Callbacks: override ``on_create``, ``pre_save``, ``post_save``, ``on_complete``,
    ``pre_delete`` or ``post_delete`` in a subclass, or register functions with
    ``@tus.hooks.on_complete`` (or ``tus.hook("on_complete")``). Each may be ``def`` or
    ``async def`` and takes no argument or one :class:`~flask_tus.core.hooks.HookEvent`.
    """

    def __init__(
        self,
        app: Flask | None = None,
        model: Any = None,
        db: Any = None,
        *,
        storage: DataStorage | None = None,
        locker: Locker | None = None,
    ) -> None:
        self.model = model
        self.db = db
        self.storage = storage
        self.locker = locker
        self.hooks = Hooks()
        self.app: Flask | None = None
        # Subclass overrides run first, before functions registered by decorator.
        for name in HOOK_NAMES:
            if getattr(type(self), name) is not getattr(FlaskTus, name):
                self.hooks.add(name, getattr(self, name))
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, model: Any = None, db: Any = None) -> None:
        """Configure ``app``: read ``TUS_*`` once, build the backends, add the routes and CLI.

        Raises ``RuntimeError`` when the app already has a tus extension.
        """
        if "tus" in app.extensions:
            raise RuntimeError("flask-tus is already registered on this app")
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        config = app.config
        upload_dir = config["TUS_UPLOAD_DIR"] or os.path.join(app.instance_path, "tus-uploads")
        upload_dir = os.path.abspath(os.fspath(upload_dir))
        chunk_size = int(config["TUS_CHUNK_SIZE"])
        settings = TusSettings(
            max_size=config["TUS_MAX_SIZE"],
            expiration=config["TUS_EXPIRATION"],
            expire_completed=bool(config["TUS_EXPIRE_COMPLETED"]),
            chunk_size=chunk_size,
            checksum_algorithms=_names(config["TUS_CHECKSUM_ALGORITHMS"]),
            cors_origins=_names(config["TUS_CORS_ORIGINS"]),
            trusted_proxies=parse_networks(config["TUS_TRUSTED_PROXIES"]),
            fsync=bool(config["TUS_FSYNC"]),
            max_metadata_size=config["TUS_MAX_METADATA_SIZE"],
        )
        if settings.expiration is not None and not isinstance(settings.expiration, timedelta):
            raise TypeError("TUS_EXPIRATION must be a datetime.timedelta or None")
        # ``is None``, not ``or``: PyMongo and Motor databases refuse truth-value testing.
        store = self._make_store(
            app,
            model if model is not None else self.model,
            db if db is not None else self.db,
            upload_dir,
        )
        timeout = float(config["TUS_LOCK_TIMEOUT"])
        locker = self.locker or FileLocker(upload_dir, timeout=timeout)
        if self.locker is None and isinstance(store, LeaseStore):
            # A shared database may serve several hosts: the store's lease makes the lock
            # hold across them, the file lock keeps same-host contention off the database.
            locker = LeaseLocker(
                store, local=locker, ttl=float(config["TUS_LEASE_TTL"]), timeout=timeout
            )
        # The JSON store syncs the directory after each new record, which the data file
        # beside it was created in just before: the storage need not sync it too.
        records_beside = (
            isinstance(store, JsonFileStore)
            and store.fsync
            and store.directory.resolve() == Path(upload_dir).resolve()
        )
        handler = TusHandler(
            store=store,
            storage=self.storage
            or LocalStorage(
                upload_dir,
                chunk_size=chunk_size,
                fsync=settings.fsync,
                sync_created=not records_beside,
            ),
            locker=locker,
            hooks=self.hooks,
            settings=settings,
        )
        collection = collection_path(str(config["TUS_UPLOAD_URL"]))
        app.extensions["tus"] = TusState(self, handler, collection, upload_dir)
        if self.app is None:
            self.app = app

        from .cli import tus_cli

        app.register_blueprint(make_blueprint(collection))
        app.url_value_preprocessor(mark_other_methods)
        app.register_error_handler(OtherMethod, answer_other_methods)
        if "tus" not in app.cli.commands:
            app.cli.add_command(tus_cli)

    @staticmethod
    def _make_store(app: Flask, model: Any, db: Any, upload_dir: str) -> UploadStore:
        if model is None:
            return JsonFileStore(upload_dir, fsync=bool(app.config["TUS_FSYNC"]))
        # A class with the protocol's methods passes the runtime check too: only instances
        # are stores, a class goes through its from_flask.
        if isinstance(model, UploadStore) and not isinstance(model, type):
            return model
        factory = getattr(model, "from_flask", None)
        if callable(factory):
            store = factory(app, db)
            if isinstance(store, UploadStore):
                return store
        raise TypeError(f"model {model!r} is neither an UploadStore nor has from_flask(app, db)")

    # ------------------------------------------------------------------ access

    def state(self, app: Flask | None = None) -> TusState:
        """This extension's state on ``app``, the current app, or the app it was made with."""
        if app is None:
            app = current_app._get_current_object() if has_app_context() else self.app  # type: ignore[attr-defined]
        if app is None or "tus" not in app.extensions:
            raise RuntimeError("flask-tus is not initialised on this app")
        state: TusState = app.extensions["tus"]
        return state

    def asgi_app(self, app: Flask | None = None) -> TusASGI:
        """An ASGI application for ``app``: tus requests served natively (bodies written as
        they arrive, kept when the client drops), every other request passed to the Flask app
        through asgiref's ``WsgiToAsgi``, each in its own thread context so Flask requests run
        concurrently. Serve it with hypercorn (``hypercorn module:asgi_app``) or uvicorn.
        """
        from asgiref.sync import ThreadSensitiveContext
        from asgiref.wsgi import WsgiToAsgi

        from .asgi import Receive, Scope, Send, TusASGI

        flask_app = app or self.app
        if flask_app is None:
            raise RuntimeError("flask-tus is not initialised on an app")
        state = self.state(flask_app)
        wsgi = WsgiToAsgi(flask_app)  # type: ignore[no-untyped-call]

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            # Without a context of its own each request would share one thread with all
            # others: asgiref serialises sync code per context.
            async with ThreadSensitiveContext():
                await wsgi(scope, receive, send)

        async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
            # In a fresh contextvars context: uvicorn runs a kept-alive connection's requests
            # in copies of one context, and asgiref's executor state left in it by the
            # previous request broke the next one ("CurrentThreadExecutor already quit or is
            # broken": 17 of 150 async views answered 500 on one connection).
            task = asyncio.get_running_loop().create_task(
                serve(scope, receive, send), context=contextvars.Context()
            )
            await task

        return TusASGI(
            state.handler, state.collection_path, fallback, guard=_before_request_guard(flask_app)
        )

    def hook(self, name: str) -> Callable[[F], F]:
        """Decorator registering a function for hook ``name``."""
        return lambda func: self.hooks.add(name, func)

    async def get_upload(self, upload_id: str) -> Upload:
        """The record of ``upload_id``; raises ``UploadNotFound``."""
        return await self.state().handler.store.get(upload_id)

    async def md5(self, upload: Upload | str) -> str:
        """Hex MD5 of a finished upload (the seed's ``MD5``), saved on its record.

        The file is read in ``TUS_CHUNK_SIZE`` pieces through aiofiles, so the event loop is
        never blocked. The digest of an unfinished upload covers the bytes so far and is not
        saved (later chunks would make it stale). Raises ``UploadNotFound`` for an unknown id.
        """
        handler = self.state().handler
        record = await handler.store.get(upload if isinstance(upload, str) else upload.id)
        if record.md5 is not None and record.is_complete:
            return record.md5
        digest = await handler.storage.md5(record.id)
        if record.is_complete:
            await handler.store.commit(record.copy(md5=digest), expected_offset=record.offset)
        return digest

    # ------------------------------------------------------------------ overridable callbacks
    # The event is optional: the seed's callbacks took none, so its overrides call
    # ``super().on_complete()`` without one.

    def on_create(self, event: HookEvent | None = None) -> Any:
        """Called before an upload is created; raise ``HookRejected`` to refuse it."""

    def pre_save(self, event: HookEvent | None = None) -> Any:
        """Called before a chunk is written; raise ``HookRejected`` to refuse it."""

    def post_save(self, event: HookEvent | None = None) -> Any:
        """Called after a chunk's offset is committed."""

    def on_complete(self, event: HookEvent | None = None) -> Any:
        """Called once, when an upload has all its bytes."""

    def pre_delete(self, event: HookEvent | None = None) -> Any:
        """Called before an upload is terminated; raise ``HookRejected`` to refuse it."""

    def post_delete(self, event: HookEvent | None = None) -> Any:
        """Called after an upload's data and record are removed."""


def _names(value: Any) -> tuple[str, ...]:
    """``TUS_CORS_ORIGINS`` or ``TUS_CHECKSUM_ALGORITHMS``: a comma-separated string (``"*"``,
    ``"sha1, md5"``), a list or tuple, or ``None``/empty for none."""
    if not value:
        return ()
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return tuple(value)


def _before_request_guard(app: Flask) -> Guard:
    """The ASGI adapter's guard for ``app``: Flask's ``before_request`` functions (the app's and
    the tus blueprint's) run for tus requests as they do under a WSGI server, so the same
    authentication refuses them (its response is sent as Flask makes it) or sets ``g`` for the
    hooks, which then run in that request context.

    They run in a worker thread (they may block, or be ``async def``, which Flask runs with
    asgiref) before the body is read: the body is the upload's, not theirs to read. The hooks
    see the request context as under a WSGI server (``request``, ``g``, ``url_for``), but
    ``after_request`` functions do not run for tus requests served by the ASGI adapter, so a
    change to the ``session`` there is not saved.
    """

    @asynccontextmanager
    async def guard(scope: Mapping[str, Any]) -> AsyncIterator[TusResponse | None]:
        context = app.request_context(_environ_of(scope))
        context.push()
        try:
            funcs = app.before_request_funcs
            if funcs.get(None) or funcs.get(TUS_BLUEPRINT):
                # to_thread copies the context: the functions see this request (and set its g).
                yield await asyncio.to_thread(_preprocess, app)
            else:
                yield None
        finally:
            context.pop()

    return guard


def _preprocess(app: Flask) -> TusResponse | None:
    """Run the request's ``before_request`` functions; the response one of them made (or an
    error became), finalised as Flask does, or ``None`` to go on."""
    try:
        try:
            refusal = app.preprocess_request()
        except Exception as exc:  # abort(401) and the like, through the app's error handlers
            refusal = app.handle_user_exception(exc)
        if refusal is None:
            return None
        response = app.finalize_request(refusal)
    except Exception as exc:
        response = app.handle_exception(exc)
    return TusResponse(response.status_code, dict(response.headers), response.get_data())


def _environ_of(scope: Mapping[str, Any]) -> dict[str, Any]:
    """A WSGI environ for an ASGI HTTP scope, without its body (PEP 3333 names)."""
    root = scope.get("root_path", "")
    path: str = scope["path"]
    if root and path.startswith(root):
        path = path[len(root) :]
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root.encode().decode("latin-1"),
        "PATH_INFO": path.encode().decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1] or 80),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if client:
        environ["REMOTE_ADDR"] = client[0]
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name not in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            name = "HTTP_" + name
        value = raw_value.decode("latin-1")
        environ[name] = f"{environ[name]},{value}" if name in environ else value
    return environ
