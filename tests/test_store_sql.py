"""The SQL metadata store (async SQLAlchemy) on SQLite and on the machine's PostgreSQL.

PostgreSQL is the one ``TUS_TEST_POSTGRES_URL`` names (default: user ``postgres`` on
127.0.0.1:5432, database ``test``). CI makes sure it runs, so when it cannot be reached these
tests fail; none is skipped. Each test works in its own table (a random prefix per run) and drops
it at the end.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from asgiref.wsgi import WsgiToAsgi
from conftest import TUS, patch_headers
from flask import Flask
from flask.testing import FlaskClient
from flask_sqlalchemy import SQLAlchemy
from servers import free_port
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import create_async_engine
from test_store_contract import (
    CREATED,
    PARIS,
    full_record,
    plain_record,
    works_in_a_forked_child,
)
from test_store_contract import TestUploadStoreContract as UploadStoreContract

from flask_tus import FlaskTus, Upload
from flask_tus.asgi import TusASGI
from flask_tus.async_models import sql as sql_module
from flask_tus.async_models.sql import DEFAULT_TABLE, SQLAlchemyModel, SQLStore, async_url
from flask_tus.core import Headers, TusHandler, TusRequest, TusSettings
from flask_tus.core.errors import UploadNotFound
from flask_tus.core.ids import new_id
from flask_tus.core.lease import LeaseLocker
from flask_tus.core.maintenance import INTERRUPTED_AFTER
from flask_tus.core.protocols import LeaseStore, UploadStore
from flask_tus.storage.local import LocalStorage

T = TypeVar("T")

PG_URL = (
    os.environ.get("TUS_TEST_POSTGRES_URL") or "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
#: A prefix shared by every table of this run, so parallel runs never meet.
RUN = secrets.token_hex(4)
BACKENDS = ["sqlite", "postgresql"]
ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
BIN = Path(sys.executable).parent


def table_name() -> str:
    return f"tus_test_{RUN}_{secrets.token_hex(4)}"


def database_url(backend: str, directory: Path) -> str:
    return f"sqlite:///{directory / 'tus.db'}" if backend == "sqlite" else PG_URL


def in_thread(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work()`` with ``asyncio.run`` in a new thread: from sync tests and teardowns,
    whatever event loop the calling thread has."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(_call(work))).result()


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


async def finish(store: SQLAlchemyModel) -> None:
    await store.drop_table()
    await store.close()


class Stores:
    """Makes stores (and Flask apps on them) for one test; drops and closes them all after."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.made: list[SQLAlchemyModel] = []

    def track(self, store: Any) -> SQLAlchemyModel:
        assert isinstance(store, SQLAlchemyModel)
        self.made.append(store)
        return store

    def make(self, backend: str, table: str | None = None, **options: Any) -> SQLAlchemyModel:
        url = database_url(backend, self.directory)
        return self.track(SQLAlchemyModel(url, table_name=table or table_name(), **options))

    def app(self, backend: str, **config: Any) -> tuple[Flask, SQLAlchemyModel]:
        """A Flask app whose FlaskTus stores records through ``TUS_DATABASE_URL``."""
        app = Flask(__name__)
        app.config.update(
            TESTING=True,
            TUS_UPLOAD_DIR=str(self.directory / "uploads"),
            TUS_DATABASE_URL=database_url(backend, self.directory),
            TUS_DATABASE_TABLE=table_name(),
            TUS_FSYNC=False,
        )
        app.config.update(config)
        FlaskTus(app, model=SQLAlchemyModel)
        return app, self.track(app.extensions["tus"].handler.store)

    def close(self) -> None:
        for store in self.made:
            in_thread(functools.partial(finish, store))


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    made = Stores(tmp_path)
    yield made
    made.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def store(stores: Stores, backend: str) -> SQLAlchemyModel:
    """An empty SQL store (its own table) on each backend; the contract suite runs on it."""
    return stores.make(backend)


async def new_upload(store: SQLAlchemyModel, **changes: Any) -> Upload:
    upload = plain_record().copy(**changes)
    await store.create(upload)
    return upload


async def pg_query(sql: str, *args: Any) -> Any:
    """One value from the PostgreSQL server, on a connection of its own."""
    dsn = sa.make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def upload_id_of(location: str) -> str:
    return location.rsplit("/", 1)[-1]


def round_trip(client: FlaskClient, data: bytes = b"0123456789") -> str:
    """POST, PATCH and HEAD one upload through the client (3 requests); return its id."""
    created = client.post("/files/", headers={**TUS, "Upload-Length": str(len(data))})
    assert created.status_code == 201, created.data
    location = created.headers["Location"]
    patched = client.patch(location, data=data, headers=patch_headers(0))
    assert patched.status_code == 204, patched.data
    head = client.head(location, headers=TUS)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == str(len(data))
    return upload_id_of(location)


# ====================================================================== the shared contract


class TestSQLUploadStoreContract(UploadStoreContract):
    """The UploadStore contract of test_store_contract.py, on SQLite and PostgreSQL."""


async def test_postgres_is_reachable() -> None:
    """The PostgreSQL the suite targets answers (CI guarantees it: no test may skip it)."""
    assert await pg_query("SELECT 1") == 1, f"PostgreSQL at {PG_URL} is not reachable"


# ====================================================================== LeaseStore


class TestLeaseStore:
    """The per-upload lease: one conditional UPDATE per call, same rules as every LeaseStore."""

    def test_is_a_lease_store(self, store: SQLAlchemyModel) -> None:
        """The store satisfies both runtime-checkable Protocols."""
        assert isinstance(store, UploadStore)
        assert isinstance(store, LeaseStore)

    async def test_free_lease_is_taken(self, store: SQLAlchemyModel) -> None:
        """A fresh upload's lease is free: the first owner gets it, another one does not."""
        upload = await new_upload(store)
        assert await store.acquire_lease(upload.id, "a", 30)
        assert not await store.acquire_lease(upload.id, "b", 30)

    async def test_owner_renews(self, store: SQLAlchemyModel) -> None:
        """The holder renews its lease: the new expiry outlives the first ttl."""
        upload = await new_upload(store)
        assert await store.acquire_lease(upload.id, "a", 0.2)
        assert await store.acquire_lease(upload.id, "a", 30)
        await asyncio.sleep(0.4)
        assert not await store.acquire_lease(upload.id, "b", 30)

    async def test_expired_lease_is_taken_over(self, store: SQLAlchemyModel) -> None:
        """A lease not renewed within its ttl (a crashed holder) goes to the next owner."""
        upload = await new_upload(store)
        assert await store.acquire_lease(upload.id, "a", 0.2)
        assert not await store.acquire_lease(upload.id, "b", 0.2)
        await asyncio.sleep(0.4)
        assert await store.acquire_lease(upload.id, "b", 30)
        assert not await store.acquire_lease(upload.id, "a", 30)

    async def test_release_by_the_owner_frees_it(self, store: SQLAlchemyModel) -> None:
        """``release_lease`` by the holder frees the lease at once."""
        upload = await new_upload(store)
        assert await store.acquire_lease(upload.id, "a", 30)
        await store.release_lease(upload.id, "a")
        assert await store.acquire_lease(upload.id, "b", 30)

    async def test_release_by_another_owner_does_nothing(self, store: SQLAlchemyModel) -> None:
        """``release_lease`` by someone who does not hold it changes nothing."""
        upload = await new_upload(store)
        assert await store.acquire_lease(upload.id, "a", 30)
        await store.release_lease(upload.id, "b")
        assert not await store.acquire_lease(upload.id, "b", 30)
        assert await store.acquire_lease(upload.id, "a", 30)

    async def test_release_request_reaches_the_holder(self, store: SQLAlchemyModel) -> None:
        """``request_release`` is seen by the holder only; the holder's renewal keeps it;
        a new owner starts without it."""
        upload = await new_upload(store)
        assert await store.acquire_lease(upload.id, "a", 30)
        assert not await store.release_requested(upload.id, "a")
        await store.request_release(upload.id)
        assert await store.release_requested(upload.id, "a")
        assert not await store.release_requested(upload.id, "b")
        assert await store.acquire_lease(upload.id, "a", 30)
        assert await store.release_requested(upload.id, "a")
        await store.release_lease(upload.id, "a")
        assert await store.acquire_lease(upload.id, "b", 30)
        assert not await store.release_requested(upload.id, "b")

    async def test_takeover_clears_the_release_request(self, store: SQLAlchemyModel) -> None:
        """Taking over an expired lease clears the request made to the old holder."""
        upload = await new_upload(store)
        assert await store.acquire_lease(upload.id, "a", 0.2)
        await store.request_release(upload.id)
        await asyncio.sleep(0.4)
        assert await store.acquire_lease(upload.id, "b", 30)
        assert not await store.release_requested(upload.id, "b")
        assert not await store.release_requested(upload.id, "a")

    async def test_unknown_upload(self, store: SQLAlchemyModel) -> None:
        """Taking the lease of an unknown upload is ``UploadNotFound``; the other calls are
        no-ops on it (a DELETE removes the record while its lease is held)."""
        missing = new_id()
        with pytest.raises(UploadNotFound):
            await store.acquire_lease(missing, "a", 30)
        await store.release_lease(missing, "a")
        await store.request_release(missing)
        assert not await store.release_requested(missing, "a")
        upload = await new_upload(store)
        assert await store.acquire_lease(upload.id, "a", 30)
        await store.delete(upload.id)
        await store.release_lease(upload.id, "a")
        with pytest.raises(UploadNotFound):
            await store.get(upload.id)

    async def test_commit_keeps_the_lease(self, store: SQLAlchemyModel) -> None:
        """Committing a record under a lease leaves the lease (and a release request) alone."""
        upload = await new_upload(store)
        assert await store.acquire_lease(upload.id, "a", 30)
        await store.request_release(upload.id)
        moved = upload.copy(offset=10, extra={"k": 1})
        await store.commit(moved, expected_offset=0)
        assert await store.get(upload.id) == moved
        assert not await store.acquire_lease(upload.id, "b", 30)
        assert await store.release_requested(upload.id, "a")

    async def test_concurrent_acquire_has_one_winner(self, store: SQLAlchemyModel) -> None:
        """20 owners race for a free lease: exactly one gets it."""
        upload = await new_upload(store)
        results = await asyncio.gather(
            *(store.acquire_lease(upload.id, f"owner-{i}", 30) for i in range(20))
        )
        assert results.count(True) == 1, results

    async def test_concurrent_acquire_from_threads(self, store: SQLAlchemyModel) -> None:
        """20 threads, each on its own event loop, race for a free lease: one winner."""
        upload = await new_upload(store)
        barrier = threading.Barrier(20)

        def attempt(i: int) -> bool:
            barrier.wait()
            return asyncio.run(store.acquire_lease(upload.id, f"owner-{i}", 30))

        def race() -> list[bool]:
            with ThreadPoolExecutor(20) as pool:
                return list(pool.map(attempt, range(20)))

        results = await asyncio.to_thread(race)
        assert results.count(True) == 1, results


# ====================================================================== cancelled callers


@contextmanager
def held_at_the_door(store: SQLAlchemyModel, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Hold the store's next operation on its own loop, before it touches the database:
    ``entered`` is set once it waits there, ``gate.set()`` lets it go."""
    entered, gate = threading.Event(), threading.Event()
    original = store._ensure_table

    async def wait_at_the_door() -> None:
        monkeypatch.setattr(store, "_ensure_table", original)
        entered.set()
        await asyncio.to_thread(gate.wait, 30)
        await original()

    monkeypatch.setattr(store, "_ensure_table", wait_at_the_door)
    try:
        yield entered, gate
    finally:
        gate.set()


async def abandon(call: Awaitable[Any], entered: threading.Event) -> None:
    """Start ``call`` and cancel its caller once the work is under way in the store."""
    caller = asyncio.ensure_future(call)
    assert await asyncio.to_thread(entered.wait, 30)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller


async def lease_row(store: SQLAlchemyModel, url: str, upload_id: str) -> tuple[Any, ...]:
    """``(lease_owner, release_requested)`` read past the store, through an engine of our own."""
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            table = store.table
            query = sa.select(table.c.lease_owner, table.c.release_requested).where(
                table.c.id == upload_id
            )
            return tuple((await conn.execute(query)).one())
    finally:
        await engine.dispose()


async def eventually(check: Callable[[], Awaitable[bool]]) -> bool:
    """Whether ``check()`` turns true within 10 seconds."""
    deadline = time.monotonic() + 10
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_abandoned_lease_is_given_back(
    store: SQLAlchemyModel, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller cancelled while its lease is being taken: the UPDATE still runs to its end,
    and the lease it took for nobody is given back at once (not held for its ttl)."""
    url = database_url(backend, tmp_path)
    upload = await new_upload(store)
    # A pending release request: a new owner taking the lease clears it, which shows that
    # the abandoned acquisition really landed.
    await store.request_release(upload.id)
    with held_at_the_door(store, monkeypatch) as (entered, gate):
        await abandon(store.acquire_lease(upload.id, "gone", 30), entered)
        assert await lease_row(store, url, upload.id) == (None, True)
        gate.set()

        async def landed_and_given_back() -> bool:
            return await lease_row(store, url, upload.id) == (None, False)

        assert await eventually(landed_and_given_back)
    assert await store.acquire_lease(upload.id, "next", 30)


async def test_abandoned_commit_still_lands(
    store: SQLAlchemyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller cancelled during a commit: the transaction completes (the bytes were flushed
    before it), and the store goes on working."""
    upload = await new_upload(store)
    moved = upload.copy(offset=10)
    with held_at_the_door(store, monkeypatch) as (entered, gate):
        await abandon(store.commit(moved, expected_offset=0), entered)
        gate.set()

        async def landed() -> bool:
            return (await store.get(upload.id)).offset == 10

        assert await eventually(landed)
    await store.commit(moved.copy(offset=20), expected_offset=10)
    assert (await store.get(upload.id)).offset == 20


async def test_lock_holders_cancelled_mid_call(store: SQLAlchemyModel) -> None:
    """Many short lock holdings whose lease upkeep is cancelled in the middle of a database
    call (it polls every millisecond) leave the store working: no connection is left
    holding a lock, no lease stays taken."""
    upload = await new_upload(store)
    for step in range(60):
        locker = LeaseLocker(store, ttl=5, timeout=5, poll=0.001)
        async with locker.lock(upload.id):
            await asyncio.sleep(0.002 * (step % 4))
            current = await store.get(upload.id)
            await store.commit(current.copy(offset=step + 1), expected_offset=step)
    assert (await store.get(upload.id)).offset == 60

    async def free() -> bool:
        return await store.acquire_lease(upload.id, "after", 30)

    assert await eventually(free)


# ====================================================================== the table


async def inspect_table(url: str, table: str) -> dict[str, Any]:
    """Columns, primary key and indexes of ``table``, read through an engine of our own."""
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:

            def read(sync: sa.Connection) -> dict[str, Any]:
                inspector = sa.inspect(sync)
                return {
                    "columns": {c["name"]: c for c in inspector.get_columns(table)},
                    "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
                    "indexes": inspector.get_indexes(table),
                }

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def raw_value(url: str, query: str, **params: Any) -> Any:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            return (await conn.execute(sa.text(query), params)).scalar_one()
    finally:
        await engine.dispose()


async def test_table_layout(store: SQLAlchemyModel, backend: str, tmp_path: Path) -> None:
    """The table has 64-bit lengths and offsets, zoned timestamps, an id primary key and an
    index on the expiry; it is created on first use, with no migration step."""
    await new_upload(store)
    layout = await inspect_table(database_url(backend, tmp_path), store.table.name)
    columns = layout["columns"]
    assert set(columns) >= {
        "id",
        "length",
        "offset",
        "metadata_header",
        "created_at",
        "expires_at",
        "completed_at",
        "concat",
        "parts",
        "md5",
        "extra",
        "lease_owner",
        "lease_expires",
        "release_requested",
    }
    assert layout["primary_key"] == ["id"]
    for name in ("length", "offset"):
        assert isinstance(columns[name]["type"], sa.BigInteger), columns[name]
    assert columns["length"]["nullable"]
    assert not columns["offset"]["nullable"]
    if backend == "postgresql":
        for name in ("created_at", "expires_at", "completed_at", "lease_expires"):
            assert columns[name]["type"].timezone, name
    assert [ix["column_names"] for ix in layout["indexes"]] == [["expires_at"]]


async def test_lengths_past_32_bits(store: SQLAlchemyModel) -> None:
    """Lengths and offsets beyond 2**32 are stored and compared exactly."""
    big = 2**40 + 3
    upload = await new_upload(store, length=big, offset=2**33)
    moved = upload.copy(offset=big)
    await store.commit(moved, expected_offset=2**33)
    assert await store.get(upload.id) == moved


async def test_times_are_stored_in_utc(
    store: SQLAlchemyModel, backend: str, tmp_path: Path
) -> None:
    """A time in another zone is stored as the same instant in UTC, not as its wall time."""
    upload = plain_record().copy(created_at=CREATED.astimezone(PARIS))
    await store.create(upload)
    query = f"SELECT created_at FROM {store.table.name} WHERE id = :id"
    raw = await raw_value(database_url(backend, tmp_path), query, id=upload.id)
    if backend == "sqlite":
        assert raw == "2026-03-01 12:30:15.123000"
    else:
        assert raw == CREATED
        assert raw.utcoffset() == timedelta(0)


async def test_naive_times_are_refused(store: SQLAlchemyModel) -> None:
    """A naive datetime is refused rather than guessed at."""
    upload = plain_record().copy(created_at=datetime(2026, 3, 1, 12, 0))
    with pytest.raises(StatementError, match="timezone-aware"):
        await store.create(upload)


async def test_stores_share_a_table(stores: Stores, backend: str) -> None:
    """Two stores (two processes, say) on one table see each other's records and commits;
    the second finds the table already there."""
    first = stores.make(backend)
    second = stores.make(backend, table=first.table.name)
    upload = full_record()
    await first.create(upload)
    assert await second.get(upload.id) == upload
    await second.commit(upload.copy(offset=8), expected_offset=7)
    assert (await first.get(upload.id)).offset == 8
    assert await first.acquire_lease(upload.id, "a", 30)
    assert not await second.acquire_lease(upload.id, "b", 30)


async def test_iter_uploads_pages(store: SQLAlchemyModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing reads in pages, each record once, and tolerates deletes while it lists."""
    monkeypatch.setattr("flask_tus.async_models.sql.PAGE_SIZE", 3)
    uploads = [await new_upload(store) for _ in range(8)]
    seen = []
    async for upload in store.iter_uploads():
        seen.append(upload.id)
        await store.delete(upload.id)
    assert sorted(seen) == sorted(u.id for u in uploads)
    assert [u async for u in store.iter_uploads()] == []


async def test_close_and_reuse(store: SQLAlchemyModel) -> None:
    """After ``close`` the store works again on a fresh loop thread and pool."""
    upload = await new_upload(store)
    await store.close()
    assert await store.get(upload.id) == upload


async def test_close_lets_calls_in_flight_end(store: SQLAlchemyModel) -> None:
    """``close`` waits for calls in flight (they get their answers), and cancels those still
    running after ``CLOSE_GRACE``: no caller is left waiting on a stopped loop."""
    upload = await new_upload(store)

    async def slow(seconds: float) -> Any:
        async def work(conn: Any) -> Any:
            await asyncio.sleep(seconds)
            return (await conn.execute(sa.select(store.table.c.id))).scalar_one()

        return await store._run(work)

    quick = asyncio.create_task(slow(0.2))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(10):
        await store.close()
        assert await quick == upload.id

    store.CLOSE_GRACE = 0.2
    stuck = asyncio.create_task(slow(60))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(10):
        await store.close()
        with pytest.raises(asyncio.CancelledError):
            await stuck
    # The store works again afterwards.
    assert await store.get(upload.id) == upload


def test_store_used_before_a_fork_works_in_the_child(store: SQLAlchemyModel) -> None:
    """A store used in a process that then forks (gunicorn --preload with an app that touches
    its store at start) serves the child on a loop and connections of the child's own, and
    the parent's keep working."""
    upload = in_thread(lambda: new_upload(store))
    works_in_a_forked_child(store, upload)


async def test_postgresql_sessions_never_wait_without_end(stores: Stores) -> None:
    """A store made from a PostgreSQL URL bounds its waits on the server (row locks, sessions
    idle in a transaction, statements, connecting); ``connect_args`` of its own replace them."""
    store = stores.make("postgresql")

    async def settings(conn: Any) -> list[str]:
        names = ("lock_timeout", "idle_in_transaction_session_timeout")
        return [(await conn.exec_driver_sql(f"SHOW {name}")).scalar_one() for name in names]

    assert await store._run(settings) == ["30s", "1min"]

    own = stores.make("postgresql", engine_options={"connect_args": {"timeout": 3}})
    assert await own._run(settings) == ["0", "0"]


async def test_silent_postgresql_server_fails_a_request_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that accepts connections and never answers makes a call fail after the
    connect timeout, not hang (asyncpg alone would wait 60 s)."""
    monkeypatch.setitem(sql_module.ASYNCPG_TIMEOUTS, "connect", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        store = SQLAlchemyModel(f"postgresql://postgres@127.0.0.1:{port}/test")
        try:
            started = time.monotonic()
            with pytest.raises((TimeoutError, OSError)):
                async with asyncio.timeout(10):
                    await store.get(new_id())
            assert time.monotonic() - started < 5
        finally:
            await store.close()


def test_sqlstore_is_the_same_class() -> None:
    """``SQLStore`` is another name for ``SQLAlchemyModel``."""
    assert SQLStore is SQLAlchemyModel


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///app.db", "sqlite+aiosqlite:///app.db"),
        ("sqlite+pysqlite:////tmp/app.db", "sqlite+aiosqlite:////tmp/app.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+aiosqlite:///app.db", "sqlite+aiosqlite:///app.db"),
        ("postgresql://u:p@db:5433/x", "postgresql+asyncpg://u:p@db:5433/x"),
        ("postgres://u@db/x", "postgresql+asyncpg://u@db/x"),
        ("postgresql+psycopg2://u@db/x", "postgresql+asyncpg://u@db/x"),
        ("postgresql+asyncpg://u@db/x", "postgresql+asyncpg://u@db/x"),
        ("postgresql+psycopg://u@db/x", "postgresql+psycopg://u@db/x"),
        ("mysql+aiomysql://u@db/x", "mysql+aiomysql://u@db/x"),
    ],
)
def test_async_url(given: str, expected: str) -> None:
    """Synchronous SQLite and PostgreSQL URLs get the async driver; others are kept."""
    assert async_url(given).render_as_string(hide_password=False) == expected


# ====================================================================== Flask integration


def test_seed_usage_with_flask_sqlalchemy(tmp_path: Path, stores: Stores) -> None:
    """``FlaskTus(app, model=SQLAlchemyModel, db=db)`` with Flask-SQLAlchemy: the table joins
    the user's metadata (``db.create_all()`` makes it beside their own), uploads work, and the
    records are in the user's database."""
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'app.db'}",
        TUS_UPLOAD_DIR=str(tmp_path / "uploads"),
        TUS_FSYNC=False,
    )
    db = SQLAlchemy(app)

    class Note(db.Model):  # type: ignore[name-defined,misc]
        id = db.Column(db.Integer, primary_key=True)

    FlaskTus(app, model=SQLAlchemyModel, db=db)
    store = stores.track(app.extensions["tus"].handler.store)
    assert DEFAULT_TABLE in db.metadata.tables
    assert store.table is db.metadata.tables[DEFAULT_TABLE]
    with app.app_context():
        db.create_all()
        assert set(sa.inspect(db.engine).get_table_names()) == {"note", DEFAULT_TABLE}

    upload_id = round_trip(app.test_client(), b"seed data")

    with app.app_context():
        table = db.metadata.tables[DEFAULT_TABLE]
        row = db.session.execute(sa.select(table).where(table.c.id == upload_id)).one()
    assert row.offset == row.length == 9
    assert row.completed_at is not None
    assert (tmp_path / "uploads" / upload_id).read_bytes() == b"seed data"


def test_flask_sqlalchemy_relative_sqlite_path(tmp_path: Path, stores: Stores) -> None:
    """A relative SQLite path means the file Flask-SQLAlchemy uses (in the instance folder),
    and the table is created on first use without ``create_all``."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI="sqlite:///relative.db",
        TUS_UPLOAD_DIR=str(tmp_path / "uploads"),
        TUS_DATABASE_TABLE="my_uploads",
        TUS_FSYNC=False,
    )
    db = SQLAlchemy(app)
    FlaskTus(app, model=SQLAlchemyModel, db=db)
    stores.track(app.extensions["tus"].handler.store)

    upload_id = round_trip(app.test_client())

    assert (tmp_path / "instance" / "relative.db").is_file()
    with app.app_context():
        table = db.metadata.tables["my_uploads"]
        assert db.session.execute(sa.select(table.c.id)).scalars().all() == [upload_id]


def test_flask_sqlalchemy_must_be_initialised_first(tmp_path: Path) -> None:
    """A Flask-SQLAlchemy ``db`` not yet initialised on the app is a clear error."""
    app = Flask(__name__)
    app.config.update(TUS_UPLOAD_DIR=str(tmp_path), SQLALCHEMY_DATABASE_URI="sqlite://")
    with pytest.raises(RuntimeError, match="before FlaskTus"):
        FlaskTus(app, model=SQLAlchemyModel, db=SQLAlchemy())


def test_no_database_is_a_clear_error(tmp_path: Path) -> None:
    """Without ``db`` and without ``TUS_DATABASE_URL`` the store cannot be made."""
    app = Flask(__name__)
    app.config["TUS_UPLOAD_DIR"] = str(tmp_path)
    with pytest.raises(ValueError, match="TUS_DATABASE_URL"):
        FlaskTus(app, model=SQLAlchemyModel)


def test_database_url_setting(stores: Stores, backend: str) -> None:
    """``TUS_DATABASE_URL`` (with no ``db``) selects the database; the lease locker is used."""
    app, store = stores.app(backend)
    assert isinstance(app.extensions["tus"].handler.locker, LeaseLocker)
    upload_id = round_trip(app.test_client())
    assert in_thread(lambda: store.get(upload_id)).offset == 10


@pytest.mark.parametrize("kind", ["url", "async-engine", "engine"])
def test_db_as_url_or_engine(stores: Stores, tmp_path: Path, kind: str) -> None:
    """``db`` may be a URL, an ``AsyncEngine`` or a synchronous ``Engine`` (its URL is used)."""
    url = f"sqlite:///{tmp_path / 'given.db'}"
    db: Any = {
        "url": url,
        "async-engine": create_async_engine(async_url(url)),
        "engine": sa.create_engine(url),
    }[kind]
    app = Flask(__name__)
    app.config.update(TESTING=True, TUS_UPLOAD_DIR=str(tmp_path / "uploads"), TUS_FSYNC=False)
    FlaskTus(app, model=SQLAlchemyModel, db=db)
    store = stores.track(app.extensions["tus"].handler.store)
    if kind == "async-engine":
        assert store.engine is db
    round_trip(app.test_client())
    assert (tmp_path / "given.db").is_file()


# ====================================================================== serving modes


def test_200_requests_keep_connections_and_threads_flat(stores: Stores, backend: str) -> None:
    """Through the test client (a new event loop per request), 200 requests leave as many
    threads and database connections as the first one did."""
    name = f"tus-flat-{RUN}-{secrets.token_hex(2)}"
    options = (
        {"connect_args": {"server_settings": {"application_name": name}}}
        if backend == "postgresql"
        else {}
    )
    app, _ = stores.app(backend, TUS_DATABASE_ENGINE_OPTIONS=options)
    client = app.test_client()

    def connections() -> int:
        if backend != "postgresql":
            return 0
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        count: int = in_thread(lambda: pg_query(query, name))
        return count

    round_trip(client)
    threads_before, connections_before = threading.active_count(), connections()
    for _ in range(67):
        round_trip(client)
    threads_after, connections_after = threading.active_count(), connections()
    print(
        f"{backend}: threads {threads_before} -> {threads_after}, "
        f"connections {connections_before} -> {connections_after}"
    )
    assert threads_after == threads_before
    if backend == "postgresql":
        # One request at a time needs one connection, and the lease upkeep at most a second
        # now and then; the pool keeps at most 5. A leak would be one or more per request.
        assert 1 <= connections_before <= 5
        assert 1 <= connections_after <= 5


async def test_asgi_on_the_server_loop(stores: Stores, backend: str) -> None:
    """On one long-lived loop (an ASGI server's), through the native tus ASGI app and through
    Flask behind ``WsgiToAsgi``."""
    app, _ = stores.app(backend)
    handler = app.extensions["tus"].handler
    for asgi_app in (TusASGI(handler, "/files/"), WsgiToAsgi(app)):
        transport = httpx.ASGITransport(app=asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tus.test") as http:
            created = await http.post("/files/", headers={**TUS, "Upload-Length": "5"})
            assert created.status_code == 201, created.text
            location = created.headers["Location"]
            patched = await http.patch(location, content=b"hello", headers=patch_headers(0))
            assert patched.status_code == 204, patched.text
            head = await http.head(location, headers=TUS)
            assert head.headers["Upload-Offset"] == "5"


def test_delete_expired_cli(stores: Stores, backend: str, tmp_path: Path) -> None:
    """``flask tus delete-expired`` (its own event loop) removes an expired upload's record and
    data together and keeps the live one."""
    app, store = stores.app(backend, TUS_LOCK_TIMEOUT=0.1)
    client = app.test_client()
    stale, live = round_trip(client), round_trip(client)
    empty = client.post("/files/", headers={**TUS, "Upload-Length": "4"})
    stale_empty = upload_id_of(empty.headers["Location"])

    async def expire(upload_id: str) -> None:
        upload = await store.get(upload_id)
        past = upload.created_at - timedelta(hours=1)
        await store.commit(upload.copy(expires_at=past), expected_offset=upload.offset)

    in_thread(lambda: expire(stale_empty))
    in_thread(lambda: expire(stale))

    result = app.test_cli_runner().invoke(args=["tus", "delete-expired"])
    assert result.exit_code == 0, result.output
    assert f"deleted expired upload {stale_empty}" in result.output
    assert stale not in result.output  # finished: kept unless TUS_EXPIRE_COMPLETED
    uploads = tmp_path / "uploads"
    assert not (uploads / stale_empty).exists()
    with pytest.raises(UploadNotFound):
        in_thread(lambda: store.get(stale_empty))
    for kept in (stale, live):
        assert in_thread(lambda kept=kept: store.get(kept)).offset == 10  # type: ignore[misc]
        assert (uploads / kept).read_bytes() == b"0123456789"


def test_delete_expired_removes_finished_when_configured(stores: Stores, backend: str) -> None:
    """With ``TUS_EXPIRE_COMPLETED`` a finished expired upload goes too, data and record."""
    app, store = stores.app(backend, TUS_EXPIRE_COMPLETED=True, TUS_LOCK_TIMEOUT=0.1)
    upload_id = round_trip(app.test_client())

    async def expire() -> None:
        upload = await store.get(upload_id)
        await store.commit(
            upload.copy(expires_at=upload.created_at - timedelta(hours=1)),
            expected_offset=upload.offset,
        )

    in_thread(expire)
    result = app.test_cli_runner().invoke(args=["tus", "delete-expired"])
    assert result.exit_code == 0, result.output
    assert f"deleted expired upload {upload_id}" in result.output
    assert not (Path(app.config["TUS_UPLOAD_DIR"]) / upload_id).exists()
    with pytest.raises(UploadNotFound):
        in_thread(lambda: store.get(upload_id))


def test_demo_selects_the_sql_store(tmp_path: Path) -> None:
    """The demo keeps records in SQL when ``TUS_DATABASE_URL`` is set, in JSON otherwise."""
    script = (
        "import demo.app as d\n"
        "c = d.app.test_client()\n"
        "r = c.post('/files/', headers={'Tus-Resumable': '1.0.0', 'Upload-Length': '3'})\n"
        "print(type(d.tus.state(d.app).handler.store).__name__, r.status_code)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUS_")}
    env["TUS_UPLOAD_DIR"] = str(tmp_path / "uploads")

    def demo(**extra: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert demo(TUS_DATABASE_URL=f"sqlite:///{tmp_path / 'demo.db'}") == "SQLAlchemyModel 201"
    assert (tmp_path / "demo.db").is_file()
    assert demo() == "JsonFileStore 201"


# ====================================================================== several hosts, one database


PIECE = 64 * 1024
TOTAL = 20 * PIECE


async def slow_body(data: bytes, started: asyncio.Event) -> AsyncIterator[bytes]:
    """A client sending one piece every 20 ms."""
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]
        started.set()
        await asyncio.sleep(0.02)


async def one_piece(data: bytes) -> AsyncIterator[bytes]:
    yield data


def tus_patch(upload_id: str, offset: int, body: AsyncIterator[bytes], length: int) -> TusRequest:
    headers = Headers.from_pairs(
        [
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Offset", str(offset)),
            ("Content-Type", "application/offset+octet-stream"),
        ]
    )
    return TusRequest("PATCH", upload_id, headers, body=body, content_length=length)


async def test_lease_hands_over_between_hosts(stores: Stores, tmp_path: Path) -> None:
    """Two "hosts" (two stores, two engines, no shared lock file) on one PostgreSQL table: a
    newer request on host B asks host A's writer, through the lease row, to save and let go;
    B then learns the offset moved (409) instead of writing over A's bytes."""
    upload_dir = tmp_path / "shared"
    first = stores.make("postgresql")
    second = stores.make("postgresql", table=first.table.name)

    def host(store: SQLAlchemyModel) -> TusHandler:
        return TusHandler(
            store=store,
            storage=LocalStorage(upload_dir, fsync=False),
            locker=LeaseLocker(store, ttl=5, timeout=3, poll=0.02),
            settings=TusSettings(),
        )

    host_a, host_b = host(first), host(second)
    data = bytes(range(256)) * (TOTAL // 256)
    headers = Headers.from_pairs([("Tus-Resumable", "1.0.0"), ("Upload-Length", str(TOTAL))])
    created = await host_a.handle(TusRequest("POST", None, headers))
    assert created.status == 201
    upload_id = upload_id_of(created.headers["Location"])

    started = asyncio.Event()
    old = asyncio.create_task(
        host_a.handle(tus_patch(upload_id, 0, slow_body(data, started), TOTAL))
    )
    await started.wait()
    new = await host_b.handle(tus_patch(upload_id, 0, one_piece(data), TOTAL))
    old_response = await old

    assert old_response.status == 400
    assert b"interrupted" in old_response.body
    saved = (await first.get(upload_id)).offset
    assert 0 < saved < TOTAL
    assert new.status == 409
    assert (upload_dir / upload_id).read_bytes() == data[:saved]
    rest = await host_b.handle(tus_patch(upload_id, saved, one_piece(data[saved:]), TOTAL - saved))
    assert rest.status == 204
    assert (upload_dir / upload_id).read_bytes() == data
    assert (await first.get(upload_id)).is_complete


@contextmanager
def sql_servers(count: int, env: dict[str, str], logs: Path) -> Iterator[list[str]]:
    """``count`` gunicorn servers (2 workers of 4 threads each) serving tests/apps/sql_app.py."""
    processes: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for index in range(count):
            port = free_port()
            log = open(logs / f"server-{index}.log", "wb")  # noqa: SIM115 - closed below
            processes.append(
                subprocess.Popen(
                    [
                        str(BIN / "gunicorn"),
                        "--worker-class",
                        "gthread",
                        "--workers",
                        "2",
                        "--threads",
                        "4",
                        "--bind",
                        f"127.0.0.1:{port}",
                        "sql_app:app",
                    ],
                    cwd=APPS,
                    env=env,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
            log.close()
            urls.append(f"http://127.0.0.1:{port}")
        for index, (process, url) in enumerate(zip(processes, urls, strict=True)):
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    text = (logs / f"server-{index}.log").read_text()
                    raise RuntimeError(f"server {index} exited: {text}")
                try:
                    httpx.options(url + "/files/", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield urls
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


@pytest.fixture
def two_servers(tmp_path: Path, stores: Stores) -> Iterator[tuple[list[str], Path]]:
    """Two server processes on one PostgreSQL table and one upload folder."""
    upload_dir = tmp_path / "uploads"
    upload_dir.mkdir()
    table = table_name()
    stores.make("postgresql", table=table)  # drops the table afterwards
    env = {
        **os.environ,
        "TUS_DATABASE_URL": PG_URL,
        "TUS_DATABASE_TABLE": table,
        "TUS_UPLOAD_DIR": str(upload_dir),
    }
    with sql_servers(2, env, tmp_path) as urls:
        yield urls, upload_dir


def test_two_servers_alternating_patches(two_servers: tuple[list[str], Path]) -> None:
    """A client alternating between two server processes: each sees the other's offsets, a
    stale offset is refused with 409 by either, and the bytes end up in order."""
    urls, upload_dir = two_servers
    chunk = 256 * 1024
    data = os.urandom(4 * chunk)
    # A connection per request: gunicorn drops a kept-alive connection after a response sent
    # before the body was read (the 409 below), so a reused one would fail the next request.
    created = httpx.post(
        urls[0] + "/files/", headers={**TUS, "Upload-Length": str(len(data))}, timeout=30
    )
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    for index in range(4):
        server, other = urls[index % 2], urls[(index + 1) % 2]
        body = data[index * chunk : (index + 1) * chunk]
        headers = patch_headers(index * chunk)
        patched = httpx.patch(server + location, content=body, headers=headers, timeout=30)
        assert patched.status_code == 204, patched.text
        assert patched.headers["Upload-Offset"] == str((index + 1) * chunk)
        head = httpx.head(other + location, headers=TUS, timeout=30)
        assert head.headers["Upload-Offset"] == str((index + 1) * chunk)
        stale = httpx.patch(other + location, content=body, headers=headers, timeout=30)
        assert stale.status_code == 409, stale.text
    assert (upload_dir / upload_id_of(location)).read_bytes() == data


def test_two_servers_concurrent_patches(two_servers: tuple[list[str], Path]) -> None:
    """Four PATCHes at the same offset, two per server, at once: the stored bytes are one
    request's alone; at most one finishes (204), a writer asked to let go by a newer request
    saves what it has and answers 400 (interrupted), the others 409 or 423."""
    urls, upload_dir = two_servers
    length = 512 * 1024
    bodies = [bytes([65 + index]) * length for index in range(4)]
    with httpx.Client(timeout=30) as http:
        created = http.post(urls[0] + "/files/", headers={**TUS, "Upload-Length": str(length)})
        assert created.status_code == 201, created.text
    location = created.headers["Location"]
    barrier = threading.Barrier(4)

    def send(index: int) -> httpx.Response:
        with httpx.Client(timeout=30) as http:
            barrier.wait()
            return http.patch(
                urls[index % 2] + location, content=bodies[index], headers=patch_headers(0)
            )

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(send, range(4)))
    statuses = [r.status_code for r in responses]
    print("concurrent PATCH statuses:", statuses)
    # 204: finished; 400: interrupted by a newer request after saving what it had; 409: the
    # offset moved while it waited; 423: the lock was not handed over in time.
    assert all(status in (204, 400, 409, 423) for status in statuses), statuses
    assert statuses.count(204) <= 1, statuses
    for response in responses:
        if response.status_code == 400:
            assert "interrupted" in response.text
    saved = int(httpx.head(urls[0] + location, headers=TUS).headers["Upload-Offset"])
    assert httpx.head(urls[1] + location, headers=TUS).headers["Upload-Offset"] == str(saved)
    stored = (upload_dir / upload_id_of(location)).read_bytes()
    # Exactly one request's bytes, never a mix.
    owners = [i for i, body in enumerate(bodies) if stored == body[:saved]]
    assert saved > 0 and len(owners) == 1, (saved, statuses)
    if 204 in statuses:
        assert owners == [statuses.index(204)]
        assert responses[owners[0]].headers["Upload-Offset"] == str(saved)


def test_cleanup_removes_interrupted_creations_under_leases(stores: Stores, backend: str) -> None:
    """With the SQL store the lock is a lease on the record, which data left by an interrupted
    creation has none of: cleanup still deletes such data (empty, an hour old, no record)
    rather than dropping it from the report, and keeps younger or non-empty data."""
    app, _ = stores.app(backend)
    assert isinstance(app.extensions["tus"].handler.locker, LeaseLocker)
    upload_dir = Path(app.config["TUS_UPLOAD_DIR"])
    interrupted, young, with_bytes = new_id(), new_id(), new_id()
    (upload_dir / interrupted).write_bytes(b"")
    (upload_dir / young).write_bytes(b"")
    (upload_dir / with_bytes).write_bytes(b"lost bytes")
    then = time.time() - INTERRUPTED_AFTER.total_seconds() - 60
    for upload_id in (interrupted, with_bytes):
        os.utime(upload_dir / upload_id, (then, then))
    result = app.test_cli_runner().invoke(args=["tus", "delete-expired"])
    assert result.exit_code == 0, result.output
    assert f"deleted empty data of an interrupted creation: {interrupted}" in result.output
    assert f"orphan data without a record: {young}" in result.output
    assert f"orphan data without a record: {with_bytes}" in result.output
    assert not (upload_dir / interrupted).exists()
    assert (upload_dir / young).exists() and (upload_dir / with_bytes).exists()
