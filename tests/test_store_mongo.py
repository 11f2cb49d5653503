"""The MongoDB store: the shared store contract, leases, indexes, every way of passing the
database (URI, PyMongo async and sync, Motor), every serving mode, the CLI and two server
processes on one database.

The database is SecantusDB (a MongoDB wire-compatible server from PyPI) started by these tests,
or a real MongoDB when ``TUS_TEST_MONGODB_URI`` is set. Each test gets a database of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_store_contract as contract
from asgiref.wsgi import WsgiToAsgi
from conftest import TUS, create, patch_headers
from flask import Flask
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import AsyncMongoClient, MongoClient, monitoring
from servers import free_port

from flask_tus import FlaskTus, Upload
from flask_tus.async_models import mongo as mongo_module
from flask_tus.async_models.mongo import DEFAULT_COLLECTION, MongoModel
from flask_tus.core.errors import OffsetMismatch, UploadLocked, UploadNotFound
from flask_tus.core.ids import new_id
from flask_tus.core.lease import LeaseLocker
from flask_tus.core.protocols import LeaseStore, UploadStore

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
BIN = Path(sys.executable).parent
CREATED = contract.CREATED


# ====================================================================== the database


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """A MongoDB server: ``TUS_TEST_MONGODB_URI``, else SecantusDB in memory in this process."""
    external = os.environ.get("TUS_TEST_MONGODB_URI")
    if external:
        yield external
        return
    from secantus import SecantusDBServer

    server = SecantusDBServer(storage_path=":memory:")
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture(scope="session")
def probe(mongo_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    """A synchronous client to look at what the store wrote, and to count connections."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    yield client
    client.close()


@pytest.fixture
def db_name(probe: MongoClient[dict[str, Any]]) -> Iterator[str]:
    """A database of this test's own, dropped afterwards."""
    name = f"tus_test_{new_id()[:16]}"
    yield name
    probe.drop_database(name)


def close(store: object) -> None:
    """Close a store's client and stop its loop thread (from a sync fixture or test)."""
    assert isinstance(store, MongoModel)
    asyncio.run(store.close())


def server_connections(probe: MongoClient[dict[str, Any]]) -> int:
    """Connections the database server has open right now."""
    status = probe.admin.command("serverStatus")
    return int(status["connections"]["current"])


def raw(probe: MongoClient[dict[str, Any]], db_name: str, upload_id: str) -> dict[str, Any]:
    """The stored document, as the database has it."""
    doc = probe[db_name][DEFAULT_COLLECTION].find_one({"_id": upload_id})
    assert doc is not None
    return doc


# ====================================================================== UploadStore contract

#: Every way of naming the database: a URI, or a client's database or collection.
TARGETS = [
    "uri",
    "pymongo-async-database",
    "pymongo-async-collection",
    "pymongo-sync-database",
    "motor-database",
    "motor-collection",
]


@pytest.fixture(params=TARGETS)
def store(request: pytest.FixtureRequest, mongo_uri: str, db_name: str) -> Iterator[MongoModel]:
    """A MongoModel, empty, made from each kind of target."""
    owners: list[Any] = []
    kind = request.param
    if kind == "uri":
        made = MongoModel(mongo_uri, database=db_name)
    elif kind.startswith("pymongo-async"):
        async_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
        owners.append(async_client)
        database = async_client[db_name]
        made = MongoModel(database if kind.endswith("database") else database[DEFAULT_COLLECTION])
    elif kind == "pymongo-sync-database":
        sync_client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
        owners.append(sync_client)
        made = MongoModel(sync_client[db_name])
    else:
        motor_client: Any = AsyncIOMotorClient(mongo_uri)
        owners.append(motor_client)
        motor_db = motor_client[db_name]
        made = MongoModel(motor_db if kind.endswith("database") else motor_db[DEFAULT_COLLECTION])
    assert made.collection_name == DEFAULT_COLLECTION
    yield made
    close(made)
    for owner in owners:
        if isinstance(owner, AsyncMongoClient):
            asyncio.run(owner.close())
        else:
            owner.close()


class TestMongoUploadStoreContract(contract.TestUploadStoreContract):
    """The contract every UploadStore keeps, run on MongoDB for each kind of target."""


# ====================================================================== what is stored


@pytest.fixture
def mongo(mongo_uri: str, db_name: str) -> Iterator[MongoModel]:
    """A MongoModel on this test's database, from a URI."""
    made = MongoModel(mongo_uri, database=db_name)
    yield made
    close(made)


def test_is_a_lease_store(mongo: MongoModel) -> None:
    """The store keeps leases, so FlaskTus wraps it in a LeaseLocker (one writer across hosts)."""
    assert isinstance(mongo, UploadStore)
    assert isinstance(mongo, LeaseStore)


async def test_document_shape(
    mongo: MongoModel, probe: MongoClient[dict[str, Any]], db_name: str
) -> None:
    """One document per upload: ``_id`` is the id, dates are BSON dates (UTC), parts an array."""
    upload = contract.full_record()
    await mongo.create(upload)
    doc = raw(probe, db_name, upload.id)
    assert doc["_id"] == upload.id
    assert doc["created_at"] == CREATED
    assert isinstance(doc["expires_at"], datetime)
    assert doc["parts"] == list(upload.parts)
    assert doc["extra"] == upload.extra
    assert doc["offset"] == 7 and doc["length"] is None


async def test_large_offsets_roundtrip(mongo: MongoModel) -> None:
    """Offsets and lengths past 2**31 (int64 in BSON) compare and round-trip exactly."""
    big = 5 * 2**30
    upload = Upload(id=new_id(), length=2 * big, created_at=CREATED, offset=big)
    await mongo.create(upload)
    await mongo.commit(upload.copy(offset=big + 1), expected_offset=big)
    assert (await mongo.get(upload.id)).offset == big + 1
    with pytest.raises(OffsetMismatch):
        await mongo.commit(upload.copy(offset=big + 2), expected_offset=big)


async def test_naive_dates_written_by_others_read_as_utc(
    mongo: MongoModel, probe: MongoClient[dict[str, Any]], db_name: str
) -> None:
    """A record written with naive datetimes (BSON keeps UTC) reads back as aware UTC."""
    upload_id = new_id()
    naive = datetime(2026, 5, 1, 8, 0, 0, 250000)
    probe[db_name][DEFAULT_COLLECTION].insert_one(
        {"_id": upload_id, "length": 1, "offset": 0, "created_at": naive, "expires_at": naive}
    )
    got = await mongo.get(upload_id)
    assert got.created_at == naive.replace(tzinfo=UTC)
    assert got.created_at.tzinfo is UTC and got.expires_at is not None
    assert got.parts == () and got.extra == {} and got.metadata_header is None


async def test_unreadable_record_is_skipped_by_iter(
    mongo: MongoModel, probe: MongoClient[dict[str, Any]], db_name: str
) -> None:
    """A document that is not a record (no offset) is skipped by ``iter_uploads``, not fatal."""
    good = contract.plain_record()
    await mongo.create(good)
    probe[db_name][DEFAULT_COLLECTION].insert_one({"_id": new_id(), "created_at": "yesterday"})
    assert [u.id async for u in mongo.iter_uploads()] == [good.id]


@pytest.mark.parametrize("count", [14, 15, 16])
async def test_iter_uploads_pages_through_many(
    mongo: MongoModel, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """Records spanning several pages (here of 5; 500 in use), a last page full or not, are all
    listed, each once."""
    monkeypatch.setattr(mongo_module, "_PAGE", 5)
    uploads = [Upload(id=new_id(), length=1, created_at=CREATED) for _ in range(count)]
    await asyncio.gather(*(mongo.create(upload) for upload in uploads))
    listed = [u.id async for u in mongo.iter_uploads()]
    assert sorted(listed) == sorted(u.id for u in uploads)


async def test_malformed_ids_never_reach_the_database(mongo: MongoModel) -> None:
    """Ids that are not 32 hex digits (a query operator, say) are unknown uploads."""
    for bad in ["", "x" * 32, "A" * 32, "{'$gt': ''}"]:
        with pytest.raises(UploadNotFound):
            await mongo.get(bad)
        with pytest.raises(UploadNotFound):
            await mongo.acquire_lease(bad, "me", 1)
        await mongo.delete(bad)


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a client sends, by name."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] = self.counts.get(event.command_name, 0) + 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_expiry_index_is_created_once_on_first_use(
    mongo_uri: str, db_name: str, probe: MongoClient[dict[str, Any]]
) -> None:
    """The first call creates the ``expires_at`` index; later calls never ask again."""
    counter = CommandCounter()
    made = MongoModel(mongo_uri, database=db_name, event_listeners=[counter])
    try:
        assert "createIndexes" not in counter.counts
        upload = contract.plain_record()
        await made.create(upload)
        for _ in range(5):
            await made.get(upload.id)
        assert counter.counts.get("createIndexes") == 1
        keys = [list(index["key"]) for index in probe[db_name][DEFAULT_COLLECTION].list_indexes()]
        assert ["expires_at"] in keys
    finally:
        await made.close()


async def test_index_refused_is_logged_and_the_store_still_works(
    mongo_uri: str,
    db_name: str,
    probe: MongoClient[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An index that cannot be made (one with the same name and other keys exists) is a
    warning: records are still kept."""
    probe[db_name][DEFAULT_COLLECTION].create_index("created_at", name="tus_expires_at")
    made = MongoModel(mongo_uri, database=db_name)
    try:
        upload = contract.plain_record()
        await made.create(upload)
        assert await made.get(upload.id) == upload
        assert "could not create the expires_at index" in caplog.text
    finally:
        await made.close()


async def test_database_and_collection_names(
    mongo_uri: str, probe: MongoClient[dict[str, Any]], db_name: str
) -> None:
    """The URI's database is used; ``database``/``collection`` override; a passed collection
    keeps its own name."""
    base = mongo_uri.split("?", 1)[0].rstrip("/")
    by_uri = MongoModel(f"{base}/{db_name}")
    renamed = MongoModel(mongo_uri, database=db_name, collection="renamed")
    motor_client: Any = AsyncIOMotorClient(mongo_uri)
    by_collection = MongoModel(motor_client[db_name]["mine"])
    try:
        for made, collection in [
            (by_uri, DEFAULT_COLLECTION),
            (renamed, "renamed"),
            (by_collection, "mine"),
        ]:
            upload = contract.plain_record()
            await made.create(upload)
            assert probe[db_name][collection].count_documents({"_id": upload.id}) == 1
    finally:
        for made in (by_uri, renamed, by_collection):
            await made.close()
        motor_client.close()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param("", {"j": True}, id="default-journaled"),
        pytest.param("w=1&journal=false", {"w": 1, "j": False}, id="uri-kept"),
        pytest.param("w=majority", {"w": "majority"}, id="uri-w-kept"),
    ],
)
async def test_writes_are_journaled_unless_told_otherwise(
    mongo_uri: str, db_name: str, options: str, expected: dict[str, Any]
) -> None:
    """Commits are acknowledged once journaled (``j``), unless the URI or the client's options
    give a write concern of their own, which is kept."""
    base, _, query = mongo_uri.partition("?")
    query = "&".join(part for part in (query, options) if part)
    made = MongoModel(f"{base}?{query}" if query else base, database=db_name)
    try:
        upload = contract.plain_record()
        await made.create(upload)
        await made.commit(upload.copy(offset=1), expected_offset=0)
        assert (await made.get(upload.id)).offset == 1
        collection = made._collection
        assert collection is not None
        assert collection.write_concern.document == expected
    finally:
        await made.close()


def test_store_used_before_a_fork_works_in_the_child(mongo: MongoModel) -> None:
    """A store used in a process that then forks serves the child with a client of the
    child's own (the parent's belongs to a loop thread the child does not have)."""
    upload = contract.plain_record()
    asyncio.run(mongo.create(upload))
    contract.works_in_a_forked_child(mongo, upload)


def test_from_flask_needs_a_database() -> None:
    """``from_flask`` without ``TUS_MONGODB_URI`` or ``db`` is a clear error; so is a ``db``
    that is not a MongoDB object."""
    app = Flask(__name__)
    with pytest.raises(RuntimeError, match="TUS_MONGODB_URI"):
        MongoModel.from_flask(app, None)
    with pytest.raises(TypeError, match="MongoDB"):
        MongoModel.from_flask(app, object())


# ====================================================================== LeaseStore contract


async def new_upload(store: MongoModel) -> str:
    upload = contract.plain_record()
    await store.create(upload)
    return upload.id


async def test_acquire_a_free_lease(mongo: MongoModel) -> None:
    """A free lease is given; another owner is refused while it lasts."""
    upload_id = await new_upload(mongo)
    assert await mongo.acquire_lease(upload_id, "alice", 30)
    assert not await mongo.acquire_lease(upload_id, "bob", 30)


async def test_renew_by_the_same_owner(
    mongo: MongoModel, probe: MongoClient[dict[str, Any]], db_name: str
) -> None:
    """The holder renews its lease: the expiry moves later."""
    upload_id = await new_upload(mongo)
    assert await mongo.acquire_lease(upload_id, "alice", 10)
    first = raw(probe, db_name, upload_id)["lease_expires"]
    assert await mongo.acquire_lease(upload_id, "alice", 1000)
    assert raw(probe, db_name, upload_id)["lease_expires"] > first


async def test_expired_lease_is_taken_over(mongo: MongoModel) -> None:
    """A lease not renewed within its ttl is taken by another owner."""
    upload_id = await new_upload(mongo)
    assert await mongo.acquire_lease(upload_id, "alice", 0.2)
    assert not await mongo.acquire_lease(upload_id, "bob", 0.2)
    await asyncio.sleep(0.3)
    assert await mongo.acquire_lease(upload_id, "bob", 30)
    assert not await mongo.acquire_lease(upload_id, "alice", 30)


async def test_release_by_the_owner_frees_it(mongo: MongoModel) -> None:
    """After the holder releases, anyone may take the lease."""
    upload_id = await new_upload(mongo)
    assert await mongo.acquire_lease(upload_id, "alice", 30)
    await mongo.release_lease(upload_id, "alice")
    assert await mongo.acquire_lease(upload_id, "bob", 30)


async def test_release_by_another_does_nothing(mongo: MongoModel) -> None:
    """Only the holder can release its lease."""
    upload_id = await new_upload(mongo)
    assert await mongo.acquire_lease(upload_id, "alice", 30)
    await mongo.release_lease(upload_id, "bob")
    assert not await mongo.acquire_lease(upload_id, "bob", 30)
    assert await mongo.acquire_lease(upload_id, "alice", 30)


async def test_release_request_reaches_the_holder(mongo: MongoModel) -> None:
    """``request_release`` is seen by the holder, by nobody else, and survives a renewal."""
    upload_id = await new_upload(mongo)
    assert await mongo.acquire_lease(upload_id, "alice", 30)
    assert not await mongo.release_requested(upload_id, "alice")
    await mongo.request_release(upload_id)
    assert await mongo.release_requested(upload_id, "alice")
    assert not await mongo.release_requested(upload_id, "bob")
    assert await mongo.acquire_lease(upload_id, "alice", 30)
    assert await mongo.release_requested(upload_id, "alice")


@pytest.mark.parametrize("how", ["released", "expired"])
async def test_release_request_cleared_for_a_new_owner(mongo: MongoModel, how: str) -> None:
    """A request made of the old holder is not pending for whoever takes the lease next."""
    upload_id = await new_upload(mongo)
    assert await mongo.acquire_lease(upload_id, "alice", 0.2)
    await mongo.request_release(upload_id)
    if how == "released":
        await mongo.release_lease(upload_id, "alice")
    else:
        await asyncio.sleep(0.3)
    assert await mongo.acquire_lease(upload_id, "bob", 30)
    assert not await mongo.release_requested(upload_id, "bob")


async def test_request_release_of_a_free_lease_is_harmless(mongo: MongoModel) -> None:
    """Asking a free lease to be released leaves nothing pending for the next holder."""
    upload_id = await new_upload(mongo)
    await mongo.request_release(upload_id)
    await mongo.request_release(new_id())
    assert await mongo.acquire_lease(upload_id, "alice", 30)
    assert not await mongo.release_requested(upload_id, "alice")


async def test_lease_of_an_unknown_upload(mongo: MongoModel) -> None:
    """``acquire_lease`` of an unknown (or deleted) upload raises ``UploadNotFound``."""
    with pytest.raises(UploadNotFound):
        await mongo.acquire_lease(new_id(), "alice", 30)
    upload_id = await new_upload(mongo)
    assert await mongo.acquire_lease(upload_id, "alice", 30)
    await mongo.delete(upload_id)
    with pytest.raises(UploadNotFound):
        await mongo.acquire_lease(upload_id, "alice", 30)
    await mongo.release_lease(upload_id, "alice")
    assert not await mongo.release_requested(upload_id, "alice")


async def test_commit_keeps_the_lease(mongo: MongoModel) -> None:
    """A commit replaces the record's fields, never the lease kept beside them."""
    upload = contract.plain_record()
    await mongo.create(upload)
    assert await mongo.acquire_lease(upload.id, "alice", 30)
    await mongo.request_release(upload.id)
    await mongo.commit(upload.copy(offset=10), expected_offset=0)
    assert not await mongo.acquire_lease(upload.id, "bob", 30)
    assert await mongo.release_requested(upload.id, "alice")
    assert await mongo.get(upload.id) == upload.copy(offset=10)


def test_one_lease_among_twenty_hosts(mongo_uri: str, db_name: str) -> None:
    """20 stores (each its own client, like 20 hosts) ask for one lease at once: one gets it."""
    stores = [MongoModel(mongo_uri, database=db_name) for _ in range(20)]
    try:
        upload_id = asyncio.run(new_upload(stores[0]))
        barrier = threading.Barrier(20)

        def ask(i: int) -> bool:
            barrier.wait()
            return asyncio.run(stores[i].acquire_lease(upload_id, f"host-{i}", 30))

        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(ask, range(20)))
        assert results.count(True) == 1, results
    finally:
        for made in stores:
            close(made)


def test_compare_and_set_among_twenty_hosts(mongo_uri: str, db_name: str) -> None:
    """20 stores (each its own client) commit on the same offset at once: exactly one wins."""
    stores = [MongoModel(mongo_uri, database=db_name) for _ in range(20)]
    try:
        upload = contract.plain_record()
        asyncio.run(stores[0].create(upload))
        barrier = threading.Barrier(20)

        def commit(i: int) -> str:
            barrier.wait()
            try:
                asyncio.run(stores[i].commit(upload.copy(offset=i + 1), expected_offset=0))
            except OffsetMismatch:
                return "409"
            return "won"

        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(commit, range(20)))
        assert results.count("won") == 1 and results.count("409") == 19, results
        final = asyncio.run(stores[1].get(upload.id))
        assert final.offset == results.index("won") + 1
    finally:
        for made in stores:
            close(made)


async def test_lease_locker_across_hosts(mongo_uri: str, db_name: str) -> None:
    """Two LeaseLockers on two stores (two hosts, no shared local lock): the second waits,
    asks the holder to let go (the holder sees it), and gets ``UploadLocked`` meanwhile."""
    host_a = MongoModel(mongo_uri, database=db_name)
    host_b = MongoModel(mongo_uri, database=db_name)
    try:
        upload_id = await new_upload(host_a)
        locker_a = LeaseLocker(host_a, ttl=3, timeout=0.3, interval=0.02, poll=0.02)
        locker_b = LeaseLocker(host_b, ttl=3, timeout=0.3, interval=0.02, poll=0.02)
        async with locker_a.lock(upload_id) as held:
            with pytest.raises(UploadLocked):
                async with locker_b.lock(upload_id):
                    raise AssertionError("two holders at once")
            for _ in range(100):
                if held.stop_requested():
                    break
                await asyncio.sleep(0.02)
            assert held.stop_requested()
        async with locker_b.lock(upload_id) as second:
            assert not second.stop_requested()
    finally:
        await host_a.close()
        await host_b.close()


# ====================================================================== Flask and serving modes


@pytest.fixture
def mongo_app(
    mongo_uri: str, db_name: str, upload_dir: Path
) -> Iterator[Callable[..., tuple[Flask, FlaskTus]]]:
    """Factory: a Flask app with ``FlaskTus(app, model=MongoModel, db=db)`` on this database."""
    made: list[Flask] = []

    def factory(db: Any = None, **config: Any) -> tuple[Flask, FlaskTus]:
        app = Flask(__name__)
        app.config.update(
            {
                "TESTING": True,
                "TUS_UPLOAD_DIR": str(upload_dir),
                "TUS_MONGODB_URI": mongo_uri,
                "TUS_MONGODB_DATABASE": db_name,
                "TUS_FSYNC": False,
                **config,
            }
        )
        tus = FlaskTus(app, model=MongoModel, db=db)
        made.append(app)
        return app, tus

    yield factory
    for app in made:
        close(app.extensions["tus"].handler.store)


def upload_cycle(client: Any, data: bytes) -> str:
    """POST + PATCH + HEAD through the test client; returns the upload's id."""
    location = create(client, length=len(data))
    response = client.patch(location, data=data, headers=patch_headers(0))
    assert response.status_code == 204, response.data
    head = client.head(location, headers=TUS)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == str(len(data))
    return str(location.rsplit("/", 1)[-1])


def test_flask_app_uses_the_mongo_store(
    mongo_app: Callable[..., tuple[Flask, FlaskTus]],
    probe: MongoClient[dict[str, Any]],
    db_name: str,
    upload_dir: Path,
) -> None:
    """``FlaskTus(app, model=MongoModel)`` keeps records in MongoDB (none on disk), behind a
    lease locker; the finished upload's MD5 is saved on its record."""
    app, tus = mongo_app()
    handler = app.extensions["tus"].handler
    assert isinstance(handler.store, MongoModel)
    assert isinstance(handler.locker, LeaseLocker)
    data = b"hello mongo" * 100
    upload_id = upload_cycle(app.test_client(), data)
    doc = raw(probe, db_name, upload_id)
    assert doc["offset"] == len(data) and doc["completed_at"] is not None
    assert doc.get("lease_owner") is None
    assert not list(upload_dir.glob("*.json"))
    assert (upload_dir / upload_id).read_bytes() == data

    with app.app_context():
        digest = asyncio.run(tus.md5(upload_id))
    assert digest == hashlib.md5(data).hexdigest()
    assert raw(probe, db_name, upload_id)["md5"] == digest


@pytest.mark.parametrize("kind", ["pymongo-async", "motor"])
def test_flask_app_with_a_passed_database(
    mongo_app: Callable[..., tuple[Flask, FlaskTus]],
    mongo_uri: str,
    db_name: str,
    probe: MongoClient[dict[str, Any]],
    kind: str,
) -> None:
    """The seed's call shape, ``FlaskTus(app, model=MongoModel, db=database)``, with a PyMongo
    async or Motor database: requests on new loops work, and the app's own database object
    stays usable on the app's own loop before and after."""
    owner: Any
    if kind == "pymongo-async":
        owner = AsyncMongoClient(mongo_uri)
    else:
        owner = AsyncIOMotorClient(mongo_uri)
    database = owner[db_name]

    async def use_own() -> None:
        await database["notes"].insert_one({"note": "mine"})

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(use_own())
        app, _ = mongo_app(db=database, TUS_MONGODB_URI=None)
        client = app.test_client()
        ids = [upload_cycle(client, bytes([i]) * 50) for i in range(3)]
        loop.run_until_complete(use_own())
        assert probe[db_name]["notes"].count_documents({}) == 2
        assert probe[db_name][DEFAULT_COLLECTION].count_documents({"_id": {"$in": ids}}) == 3
    finally:
        if isinstance(owner, AsyncMongoClient):
            loop.run_until_complete(owner.close())
        else:
            owner.close()
        loop.close()


def test_two_hundred_requests_keep_connections_and_threads_flat(
    mongo_app: Callable[..., tuple[Flask, FlaskTus]],
    probe: MongoClient[dict[str, Any]],
) -> None:
    """Flask's test client runs every async view on a new event loop (as WSGI servers do):
    over 200 requests neither the server's connections nor this process's threads grow."""
    app, _ = mongo_app()
    client = app.test_client()
    upload_cycle(client, b"warm-up")
    connections_before = server_connections(probe)
    threads_before = threading.active_count()
    for i in range(67):  # 3 requests each: 201
        upload_cycle(client, str(i).encode() * 10)
    connections_after = server_connections(probe)
    threads_after = threading.active_count()
    print(
        f"connections {connections_before} -> {connections_after}, "
        f"threads {threads_before} -> {threads_after}"
    )
    assert connections_after <= connections_before + 2
    assert threads_after <= threads_before + 2


@pytest.mark.parametrize("mode", ["native", "wsgi-to-asgi"])
async def test_asgi_on_a_long_lived_loop(
    mongo_app: Callable[..., tuple[Flask, FlaskTus]], mode: str
) -> None:
    """Under an ASGI server, through the native ASGI app or ``WsgiToAsgi``, views run on the
    server's own loop (here: the test's); the store works from it request after request."""
    app, tus = mongo_app()
    asgi: Any = tus.asgi_app(app) if mode == "native" else WsgiToAsgi(app)
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for i in range(10):
            data = bytes([i]) * 1000
            created = await client.post("/files/", headers={**TUS, "Upload-Length": "1000"})
            assert created.status_code == 201
            location = created.headers["Location"]
            patched = await client.patch(location, content=data, headers=patch_headers(0))
            assert patched.status_code == 204, patched.text
            head = await client.head(location, headers=TUS)
            assert head.headers["Upload-Offset"] == "1000"
            download = await client.get(location)
            assert download.content == data


def test_cli_delete_expired(
    mongo_app: Callable[..., tuple[Flask, FlaskTus]],
    probe: MongoClient[dict[str, Any]],
    db_name: str,
    upload_dir: Path,
) -> None:
    """``flask tus delete-expired`` on its own loop removes expired records and their data
    together; live uploads stay."""
    app, _ = mongo_app(TUS_LOCK_TIMEOUT=0.1)
    client = app.test_client()
    stale_location = create(client, length=10)
    assert client.patch(stale_location, data=b"old", headers=patch_headers(0)).status_code == 204
    stale_id = stale_location.rsplit("/", 1)[-1]
    live_id = create(client, length=10).rsplit("/", 1)[-1]
    store = app.extensions["tus"].handler.store

    async def expire() -> None:
        upload = await store.get(stale_id)
        past = upload.created_at - timedelta(hours=1)
        await store.commit(upload.copy(expires_at=past), expected_offset=upload.offset)

    asyncio.run(expire())
    result = app.test_cli_runner().invoke(args=["tus", "delete-expired"])
    assert result.exit_code == 0, result.output
    assert f"deleted expired upload {stale_id}" in result.output
    assert "deleted 1 expired" in result.output
    collection = probe[db_name][DEFAULT_COLLECTION]
    assert collection.count_documents({"_id": stale_id}) == 0
    assert not (upload_dir / stale_id).exists()
    assert collection.count_documents({"_id": live_id}) == 1
    assert (upload_dir / live_id).exists()


# ====================================================================== several processes


@dataclass
class AppServer:
    """One server process serving ``tests/apps/mongo_app.py``."""

    kind: str
    url: str
    process: subprocess.Popen[bytes]


def server_command(kind: str, port: int) -> list[str]:
    """The command serving ``tests/apps/mongo_app.py`` with server ``kind``."""
    if kind == "werkzeug":
        return [str(BIN / "flask"), "--app", "mongo_app", "run", "--port", str(port)]
    if kind == "gunicorn":
        return [
            *(str(BIN / "gunicorn"), "--worker-class", "gthread", "--threads", "4"),
            *("--workers", "1", "--bind", f"127.0.0.1:{port}", "mongo_app:app"),
        ]
    if kind in ("hypercorn", "hypercorn-wsgi-to-asgi"):
        app = "mongo_app:asgi_app" if kind == "hypercorn" else "mongo_app:wsgi_to_asgi"
        return [str(BIN / "hypercorn"), "--bind", f"127.0.0.1:{port}", app]
    raise ValueError(kind)


def start_servers(kinds: list[str], env: list[dict[str, str]]) -> list[AppServer]:
    servers = []
    for kind, extra in zip(kinds, env, strict=True):
        port = free_port()
        process = subprocess.Popen(
            server_command(kind, port),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(APPS), **extra},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        servers.append(AppServer(kind, f"http://127.0.0.1:{port}", process))
    deadline = time.monotonic() + 60
    for server in servers:
        while True:
            if server.process.poll() is not None:
                err = server.process.stderr.read().decode() if server.process.stderr else ""
                stop_servers(servers)
                raise RuntimeError(f"{server.kind} exited: {err}")
            try:
                httpx.options(server.url + "/files/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    stop_servers(servers)
                    raise RuntimeError(f"{server.kind} did not start") from None
                time.sleep(0.1)
    return servers


def stop_servers(servers: list[AppServer]) -> None:
    for server in servers:
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGTERM)
    for server in servers:
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover - only when a server hangs
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=20)
        if server.process.stderr:
            server.process.stderr.close()


#: (server kinds, whether each process keeps its host-local locks apart as on its own host).
SETUPS = [
    pytest.param((["werkzeug", "gunicorn"], True), id="werkzeug+gunicorn-as-two-hosts"),
    pytest.param(
        (["hypercorn", "hypercorn-wsgi-to-asgi"], True),
        id="hypercorn-native+hypercorn-wsgi-to-asgi-as-two-hosts",
    ),
    pytest.param((["gunicorn", "hypercorn"], False), id="gunicorn+hypercorn-native-one-host"),
]


@dataclass
class TwoServers:
    first: AppServer
    second: AppServer
    uploads: Path
    db_name: str


@pytest.fixture(scope="module", params=SETUPS)
def two_servers(
    request: pytest.FixtureRequest,
    mongo_uri: str,
    probe: MongoClient[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TwoServers]:
    """Two server processes on one database and one upload folder (started once per setup)."""
    kinds, apart = request.param
    base = tmp_path_factory.mktemp("two-servers")
    uploads = base / "shared-uploads"
    name = f"tus_test_{new_id()[:16]}"
    env = []
    for i in range(2):
        extra = {
            "TUS_UPLOAD_DIR": str(uploads),
            "TUS_MONGODB_URI": mongo_uri,
            "TUS_MONGODB_DATABASE": name,
        }
        if apart:
            extra["TUS_HOST_LOCK_DIR"] = str(base / f"host-{i}-locks")
        env.append(extra)
    first, second = start_servers(kinds, env)
    try:
        yield TwoServers(first, second, uploads, name)
    finally:
        stop_servers([first, second])
        probe.drop_database(name)


def test_two_processes_alternating_patches(
    two_servers: TwoServers, probe: MongoClient[dict[str, Any]]
) -> None:
    """A client alternates its PATCHes between two server processes: each sees the offset the
    other committed, and the assembled file is exactly what was sent."""
    first, second, uploads = two_servers.first, two_servers.second, two_servers.uploads
    db_name = two_servers.db_name
    data = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB
    piece = len(data) // 8
    created = httpx.post(first.url + "/files/", headers={**TUS, "Upload-Length": str(len(data))})
    assert created.status_code == 201, created.text
    path = created.headers["Location"]
    upload_id = path.rsplit("/", 1)[-1]
    for i in range(8):
        server, other = (first, second) if i % 2 == 0 else (second, first)
        offset = i * piece
        head = httpx.head(other.url + path, headers=TUS)
        assert head.headers["Upload-Offset"] == str(offset)
        response = httpx.patch(
            server.url + path, content=data[offset : offset + piece], headers=patch_headers(offset)
        )
        assert response.status_code == 204, (server.kind, response.text)
        assert response.headers["Upload-Offset"] == str(offset + piece)
    download = httpx.get(second.url + path)
    assert download.status_code == 200
    assert download.content == data
    assert (uploads / upload_id).read_bytes() == data
    doc = raw(probe, db_name, upload_id)
    assert doc["offset"] == len(data) and doc["completed_at"] is not None


def test_two_processes_four_racing_patches(
    two_servers: TwoServers, probe: MongoClient[dict[str, Any]]
) -> None:
    """Four overlapping PATCHes at offset 0 to one upload, two per process: the stored bytes
    are one request's alone, never a mix; at most one finishes (204), a writer asked to let go
    saves what it has and answers 400 (interrupted), the others 409 or 423."""
    first, second, uploads = two_servers.first, two_servers.second, two_servers.uploads
    db_name = two_servers.db_name
    piece, pieces = 64 * 1024, 8
    size = piece * pieces
    bodies = [bytes([65 + i]) * size for i in range(4)]
    created = httpx.post(first.url + "/files/", headers={**TUS, "Upload-Length": str(size)})
    path = created.headers["Location"]
    upload_id = path.rsplit("/", 1)[-1]
    barrier = threading.Barrier(4)

    def slowly(body: bytes) -> Iterator[bytes]:
        # A body that takes a while to arrive, so that the four requests overlap.
        for start in range(0, len(body), piece):
            time.sleep(0.02)
            yield body[start : start + piece]

    def send(i: int) -> httpx.Response:
        server = (first, second)[i % 2]
        headers = patch_headers(0, **{"Content-Length": str(size)})
        barrier.wait()
        if i >= 2:
            # The second pair arrives while the first pair's bodies are still arriving: each
            # process then has a writer to interrupt, and another process writing too.
            time.sleep(0.06)
        return httpx.patch(
            server.url + path, content=slowly(bodies[i]), headers=headers, timeout=30
        )

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(send, range(4)))
    statuses = [r.status_code for r in responses]
    # 204: finished; 400: interrupted by a newer request after saving what it had; 409: the
    # offset moved while it waited; 423: the lock was not handed over in time.
    assert all(status in (204, 400, 409, 423) for status in statuses), statuses
    assert statuses.count(204) <= 1, statuses
    for response in responses:
        if response.status_code == 400:
            assert "interrupted" in response.text
    offset = raw(probe, db_name, upload_id)["offset"]
    head = httpx.head(second.url + path, headers=TUS)
    assert head.headers["Upload-Offset"] == str(offset)
    stored = (uploads / upload_id).read_bytes()
    # Exactly one request's bytes, never a mix.
    owners = [i for i, body in enumerate(bodies) if stored == body[:offset]]
    assert offset > 0 and len(owners) == 1, (offset, statuses)
    if 204 in statuses:
        assert owners == [statuses.index(204)]
        assert responses[owners[0]].headers["Upload-Offset"] == str(offset)
