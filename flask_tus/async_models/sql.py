"""The SQL metadata store: upload records in one table, through async SQLAlchemy.

Runs on SQLite (aiosqlite) and PostgreSQL (asyncpg). The engine lives on a private event loop
(:class:`~flask_tus.async_models._loop.LoopThread`), so the store works from any caller loop:
the new loop of every request under a WSGI server, an ASGI server's loop, the CLI's
``asyncio.run``. Offsets are committed with a compare-and-set (an ``UPDATE`` that names the
previous offset) and the per-upload lease is one conditional ``UPDATE``.

Lease times come from one clock per database: PostgreSQL's own (``clock_timestamp()``), so the
hosts sharing it need not agree on the time; for SQLite, which only processes of one host can
share, and any other database, the host's UTC clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..core.errors import OffsetMismatch, TusError, UploadNotFound
from ..core.ids import is_valid_id
from ..core.upload import Upload
from ._loop import LoopThread

T = TypeVar("T")

log = logging.getLogger("flask_tus")

DEFAULT_TABLE = "tus_uploads"

#: Records read per query by :meth:`SQLAlchemyModel.iter_uploads`.
PAGE_SIZE = 500

#: The columns that hold an :class:`Upload`, one per field (the others hold its lease).
_RECORD_COLUMNS = tuple(field.name for field in dataclasses.fields(Upload))

#: Synchronous drivers (``""``: the dialect's default) and the async driver that replaces them.
_ASYNC_DRIVERS: dict[str, tuple[frozenset[str], str]] = {
    "sqlite": (frozenset({"", "pysqlite"}), "aiosqlite"),
    "postgresql": (frozenset({"", "psycopg2", "psycopg2cffi", "pg8000"}), "asyncpg"),
    "postgres": (frozenset({""}), "asyncpg"),
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware timestamp, stored in UTC and always read back as aware UTC.

    PostgreSQL keeps it as ``timestamptz``. SQLite and databases without zoned timestamps keep
    the naive UTC time (in SQLite a fixed-width string, so comparisons stay chronological).
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("flask-tus stores timezone-aware datetimes only")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def uploads_table(metadata: sa.MetaData, name: str = DEFAULT_TABLE) -> sa.Table:
    """The uploads table in ``metadata`` (defined there once; an existing one is reused)."""
    existing = metadata.tables.get(name if metadata.schema is None else f"{metadata.schema}.{name}")
    if existing is not None:
        return existing
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("length", sa.BigInteger, nullable=True),
        sa.Column("offset", sa.BigInteger, nullable=False, default=0),
        sa.Column("metadata_header", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("completed_at", UTCDateTime, nullable=True),
        sa.Column("concat", sa.String(16), nullable=True),
        sa.Column("parts", sa.JSON, nullable=False),
        sa.Column("md5", sa.String(128), nullable=True),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires", UTCDateTime, nullable=True),
        sa.Column("release_requested", sa.Boolean, nullable=False, default=False),
        sa.Index(f"ix_{name}_expires_at", "expires_at"),
    )


def async_url(url: str | URL) -> URL:
    """``url`` with a synchronous SQLite or PostgreSQL driver replaced by its async one
    (``sqlite://`` -> ``sqlite+aiosqlite://``, ``postgresql://`` -> ``postgresql+asyncpg://``);
    any other URL unchanged."""
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    sync_drivers, async_driver = _ASYNC_DRIVERS.get(backend, (frozenset(), ""))
    if driver in sync_drivers:
        backend = "postgresql" if backend == "postgres" else backend
        return parsed.set(drivername=f"{backend}+{async_driver}")
    return parsed


#: Seconds the PostgreSQL (asyncpg) engine a URL makes waits at most: to connect, for one
#: statement, for a row lock, and how long the server keeps a session idle in a transaction.
#: ``engine_options={"connect_args": ...}`` replaces them.
ASYNCPG_TIMEOUTS = {"connect": 10.0, "command": 60.0, "lock": 30.0, "idle": 60.0}


def _engine_defaults(url: URL) -> dict[str, Any]:
    backend = url.get_backend_name()
    if backend == "sqlite":
        memory = url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
        # SQLite has one writer at a time: one pooled connection per process queues this
        # process's statements instead of making them wait on the database lock. (An
        # in-memory database keeps SQLAlchemy's single static connection.)
        return {} if memory else {"pool_size": 1, "max_overflow": 0}
    # A server restart must not leave dead connections in the pool.
    defaults: dict[str, Any] = {"pool_pre_ping": True}
    if url.get_driver_name() == "asyncpg":
        # Nothing waits on the database without end. A server that accepts connections but
        # never answers fails a request within ASYNCPG_TIMEOUTS["connect"] seconds (asyncpg's
        # own default is 60), a statement within "command". A row lock held by a stuck
        # transaction fails a request within "lock_timeout" instead of queueing every request
        # for that upload (and the pool's connections) behind it, and a session of ours left
        # idle in a transaction (its host cut off mid-request) is ended by the server, its row
        # locks with it, after "idle_in_transaction_session_timeout".
        timeouts = ASYNCPG_TIMEOUTS
        defaults["connect_args"] = {
            "timeout": timeouts["connect"],
            "command_timeout": timeouts["command"],
            "server_settings": {
                "lock_timeout": str(int(timeouts["lock"] * 1000)),
                "idle_in_transaction_session_timeout": str(int(timeouts["idle"] * 1000)),
            },
        }
    return defaults


class SQLAlchemyModel:
    """Upload records (and their leases) in table ``table_name`` of a SQL database.

    ``bind`` is a database URL (a synchronous SQLite or PostgreSQL URL is switched to the async
    driver) or an :class:`~sqlalchemy.ext.asyncio.AsyncEngine`. A given engine is used on the
    store's private event loop: do not share it with code running on other loops (pass a URL
    instead). ``metadata`` is where the table is defined (your own, so that ``create_all`` and
    migrations see it); the table is created on first use when missing. ``engine_options`` go
    to :func:`~sqlalchemy.ext.asyncio.create_async_engine`.
    """

    def __init__(
        self,
        bind: str | URL | AsyncEngine,
        *,
        table_name: str = DEFAULT_TABLE,
        metadata: sa.MetaData | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(bind, AsyncEngine):
            self.engine = bind
        else:
            url = async_url(bind)
            options = {**_engine_defaults(url), **(engine_options or {})}
            self.engine = create_async_engine(url, **options)
        self.table = uploads_table(metadata if metadata is not None else sa.MetaData(), table_name)
        self._database_clock = self.engine.dialect.name == "postgresql"
        self._loop = LoopThread(f"flask-tus-sql-{table_name}", on_fork=self._forget_connections)
        self._table_ready = False
        self._table_lock: asyncio.Lock | None = None
        # Work finishing for callers that went away (only touched on the store's loop).
        self._background: set[asyncio.Future[None]] = set()

    @classmethod
    def from_flask(cls, app: Any, db: Any) -> SQLAlchemyModel:
        """The store for ``FlaskTus(app, model=SQLAlchemyModel, db=db)``.

        ``db`` is a Flask-SQLAlchemy ``SQLAlchemy`` already initialised on ``app`` (the table
        joins ``db.metadata`` and the async URL is derived from the app's engine), an
        ``AsyncEngine``, a synchronous ``Engine`` (its URL is used), a URL, or ``None`` for
        ``TUS_DATABASE_URL``. ``TUS_DATABASE_TABLE`` names the table,
        ``TUS_DATABASE_ENGINE_OPTIONS`` adds engine options.
        """
        config = app.config
        table_name = str(config.get("TUS_DATABASE_TABLE") or DEFAULT_TABLE)
        options = dict(config.get("TUS_DATABASE_ENGINE_OPTIONS") or {})
        if db is None:
            url = config.get("TUS_DATABASE_URL")
            if not url:
                raise ValueError(
                    "SQLAlchemyModel needs db= (Flask-SQLAlchemy, an engine or a URL) "
                    "or TUS_DATABASE_URL"
                )
            return cls(url, table_name=table_name, engine_options=options)
        if isinstance(db, str | URL | AsyncEngine):
            return cls(db, table_name=table_name, engine_options=options)
        if isinstance(db, Engine):
            return cls(db.url, table_name=table_name, engine_options=options)
        metadata = getattr(db, "metadata", None)
        if isinstance(metadata, sa.MetaData):
            return cls(
                _flask_sqlalchemy_url(app, db),
                table_name=table_name,
                metadata=metadata,
                engine_options=options,
            )
        raise TypeError(
            f"db must be Flask-SQLAlchemy, an AsyncEngine, an Engine or a URL, not {db!r}"
        )

    # ------------------------------------------------------------------ plumbing

    async def _run(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        undo: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """Run ``work`` in one transaction on the store's loop, from any caller loop.

        A caller that is cancelled stops waiting, but the transaction runs to its end: cutting
        a driver call short leaves the connection in an unknown state (with aiosqlite, a write
        lock held while the pool opens another connection). ``undo(result)`` then runs when
        the abandoned work succeeded: a lease taken (or renewed) for a caller that went away
        is given back, even when it landed after that caller's release.
        """

        async def transaction() -> T:
            await self._ensure_table()
            async with self.engine.begin() as conn:
                return await work(conn)

        async def job() -> T:
            task = asyncio.ensure_future(transaction())
            # It may outlive this job (a caller that went away): close() waits for it too.
            self._loop.track(task)
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                task.add_done_callback(functools.partial(self._abandoned, undo))
                raise

        return await self._loop.run(job)

    def _abandoned(
        self, undo: Callable[[Any], Awaitable[None]] | None, task: asyncio.Future[Any]
    ) -> None:
        """Finish work whose caller went away (runs on the store's loop)."""
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            if not isinstance(error, TusError):  # an OffsetMismatch nobody waits for is no news
                log.warning("tus SQL operation failed after its caller went away: %r", error)
        elif undo is not None:
            follow = asyncio.ensure_future(undo(task.result()))
            self._background.add(follow)
            follow.add_done_callback(self._background.discard)
            self._loop.track(follow)

    async def _ensure_table(self) -> None:
        if self._table_ready:
            return
        if self._table_lock is None:
            self._table_lock = asyncio.Lock()
        async with self._table_lock:
            if not self._table_ready:
                await self._create_table()
                self._table_ready = True

    async def _create_table(self) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(self.table.create, checkfirst=True)
        except DBAPIError:
            # Another process created it between our check and our CREATE.
            async with self.engine.connect() as conn:
                if not await conn.run_sync(self._has_table):
                    raise

    def _has_table(self, conn: sa.Connection) -> bool:
        return sa.inspect(conn).has_table(self.table.name, schema=self.table.schema)

    async def create_table(self) -> None:
        """Create the table and its index if missing (done anyway before first use)."""
        await self._loop.run(self._ensure_table)

    async def drop_table(self) -> None:
        """Drop the table, with every record in it."""

        async def drop() -> None:
            async with self.engine.begin() as conn:
                await conn.run_sync(self.table.drop, checkfirst=True)
            self._table_ready = False

        await self._loop.run(drop)

    #: Seconds :meth:`close` lets calls in flight finish before it cancels them.
    CLOSE_GRACE = 5.0

    async def close(self) -> None:
        """Let the calls in flight end (for up to ``CLOSE_GRACE`` seconds, then cancel them),
        close the pooled connections and stop the private loop (it restarts if used again)."""

        async def close() -> None:
            await self._loop.settle(self.CLOSE_GRACE)
            await self.engine.dispose()

        await self._loop.run(close)
        self._loop.stop()
        self._table_lock = None

    def _forget_connections(self) -> None:
        """In a forked child: drop the parent's pooled connections without closing them (they
        are the parent's sockets) and what belonged to its loop."""
        self.engine.sync_engine.dispose(close=False)
        self._table_lock = None
        self._background = set()

    def _record_columns(self) -> list[sa.Column[Any]]:
        return [self.table.c[name] for name in _RECORD_COLUMNS]

    @staticmethod
    def _upload(row: sa.Row[Any]) -> Upload:
        data = row._mapping
        return Upload(
            id=data["id"],
            length=data["length"],
            created_at=data["created_at"],
            offset=data["offset"],
            metadata_header=data["metadata_header"],
            expires_at=data["expires_at"],
            concat=data["concat"],
            parts=tuple(data["parts"] or ()),
            completed_at=data["completed_at"],
            md5=data["md5"],
            extra=dict(data["extra"] or {}),
        )

    async def _exists(self, conn: AsyncConnection, upload_id: str) -> bool:
        found = await conn.execute(sa.select(self.table.c.id).where(self.table.c.id == upload_id))
        return found.first() is not None

    # ------------------------------------------------------------------ UploadStore

    async def create(self, upload: Upload) -> None:
        """Insert a new record (with no lease)."""
        row = {"id": upload.id, **upload.fields(), "release_requested": False}

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(sa.insert(self.table).values(row))

        await self._run(work)

    async def get(self, upload_id: str) -> Upload:
        """The record of ``upload_id``; raises ``UploadNotFound`` when there is none."""
        if not is_valid_id(upload_id):
            raise UploadNotFound()
        query = sa.select(*self._record_columns()).where(self.table.c.id == upload_id)

        async def work(conn: AsyncConnection) -> Upload:
            row = (await conn.execute(query)).first()
            if row is None:
                raise UploadNotFound()
            return self._upload(row)

        return await self._run(work)

    async def commit(self, upload: Upload, *, expected_offset: int) -> None:
        """Replace the record if its stored offset is still ``expected_offset``.

        One ``UPDATE ... WHERE id = :id AND offset = :expected``: raises ``OffsetMismatch``
        when it matched no row but the record exists, ``UploadNotFound`` when it does not.
        The lease columns are left alone.
        """
        if not is_valid_id(upload.id):
            raise UploadNotFound()
        table = self.table
        statement = (
            sa.update(table)
            .where(table.c.id == upload.id, table.c.offset == expected_offset)
            .values(upload.fields())
        )

        async def work(conn: AsyncConnection) -> None:
            if (await conn.execute(statement)).rowcount == 1:
                return
            found = await conn.execute(sa.select(table.c.offset).where(table.c.id == upload.id))
            current = found.scalar_one_or_none()
            if current is None:
                raise UploadNotFound()
            raise OffsetMismatch(f"the upload moved to offset {current} during this request")

        await self._run(work)

    async def delete(self, upload_id: str) -> None:
        """Remove the record; a missing record is not an error."""

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(sa.delete(self.table).where(self.table.c.id == upload_id))

        await self._run(work)

    async def iter_uploads(self) -> AsyncIterator[Upload]:
        """Every record, read in pages of ``PAGE_SIZE`` by id (no connection is held while the
        caller works on a record, so it may change or delete records as it goes)."""
        table = self.table
        after = ""
        while True:
            query = (
                sa.select(*self._record_columns())
                .where(table.c.id > after)
                .order_by(table.c.id)
                .limit(PAGE_SIZE)
            )

            async def work(conn: AsyncConnection, query: sa.Select[Any] = query) -> list[Upload]:
                return [self._upload(row) for row in await conn.execute(query)]

            page = await self._run(work)
            for upload in page:
                yield upload
            if len(page) < PAGE_SIZE:
                return
            after = page[-1].id

    # ------------------------------------------------------------------ LeaseStore

    def _now(self) -> sa.ColumnElement[datetime]:
        if self._database_clock:
            return sa.func.clock_timestamp(type_=UTCDateTime())
        return sa.literal(datetime.now(UTC), UTCDateTime())

    def _expiry(self, ttl: float) -> sa.ColumnElement[datetime]:
        if self._database_clock:
            return self._now() + sa.literal(timedelta(seconds=ttl), sa.Interval())
        return sa.literal(datetime.now(UTC) + timedelta(seconds=ttl), UTCDateTime())

    async def acquire_lease(self, upload_id: str, owner: str, ttl: float) -> bool:
        """One conditional ``UPDATE``: take the lease when it is free, expired or ``owner``'s.

        A renewal keeps a pending release request; a new owner starts without one. Raises
        ``UploadNotFound`` for an unknown upload.
        """
        if not is_valid_id(upload_id):
            raise UploadNotFound()
        table = self.table
        statement = (
            sa.update(table)
            .where(
                table.c.id == upload_id,
                sa.or_(
                    table.c.lease_owner.is_(None),
                    table.c.lease_owner == owner,
                    table.c.lease_expires < self._now(),
                ),
            )
            # release_requested first: some databases (MySQL) evaluate SET left to right.
            .ordered_values(
                (
                    table.c.release_requested,
                    sa.case((table.c.lease_owner == owner, table.c.release_requested), else_=False),
                ),
                (table.c.lease_owner, owner),
                (table.c.lease_expires, self._expiry(ttl)),
            )
        )

        async def work(conn: AsyncConnection) -> bool:
            if (await conn.execute(statement)).rowcount == 1:
                return True
            if not await self._exists(conn, upload_id):
                raise UploadNotFound()
            return False

        async def give_back(taken: bool) -> None:
            if taken:
                await self._release(upload_id, owner)

        return await self._run(work, undo=give_back)

    async def release_lease(self, upload_id: str, owner: str) -> None:
        """Free the lease if ``owner`` holds it; otherwise (or for no record) do nothing."""
        await self._release(upload_id, owner)

    async def _release(self, upload_id: str, owner: str) -> None:
        table = self.table
        statement = (
            sa.update(table)
            .where(table.c.id == upload_id, table.c.lease_owner == owner)
            .values(lease_owner=None, lease_expires=None, release_requested=False)
        )

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(statement)

        await self._run(work)

    async def request_release(self, upload_id: str) -> None:
        """Ask the lease holder to finish early (cleared when a new owner takes the lease)."""
        table = self.table
        statement = sa.update(table).where(table.c.id == upload_id).values(release_requested=True)

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(statement)

        await self._run(work)

    async def release_requested(self, upload_id: str, owner: str) -> bool:
        """Whether a release was requested while ``owner`` holds the lease."""
        table = self.table
        query = sa.select(table.c.release_requested).where(
            table.c.id == upload_id, table.c.lease_owner == owner
        )

        async def work(conn: AsyncConnection) -> bool:
            return bool((await conn.execute(query)).scalar_one_or_none())

        return await self._run(work)


#: Another name for the same store.
SQLStore = SQLAlchemyModel


def _flask_sqlalchemy_url(app: Any, db: Any) -> URL:
    """The URL of Flask-SQLAlchemy's default engine on ``app`` (after its own defaults, such as
    relative SQLite paths under the instance folder)."""
    try:
        with app.app_context():
            engine: Engine = db.engine
    except (RuntimeError, KeyError) as exc:
        raise RuntimeError(
            "initialise Flask-SQLAlchemy on the app (SQLAlchemy(app) or db.init_app(app)) "
            "before FlaskTus(app, model=SQLAlchemyModel, db=db)"
        ) from exc
    return engine.url
