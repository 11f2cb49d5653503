"""MongoDB metadata store on PyMongo's async client: one document per upload.

The document's ``_id`` is the upload id; the other record fields keep their names
(``created_at``, ``expires_at`` and ``completed_at`` as BSON dates, ``parts`` as an array,
``extra`` as a sub-document). The lease that gives one writer per upload across hosts lives in
the same document: ``lease_owner``, ``lease_expires`` and ``release_requested`` (the owner a
release was asked of).

Event loops: an async client belongs to the loop it first ran on, and Flask under a WSGI server
runs every async view on a new loop. So the store owns one ``AsyncMongoClient`` on a private
:class:`~flask_tus.async_models._loop.LoopThread`, and every public method hops onto that loop.
A client, database or collection passed in (PyMongo async or sync, or Motor) is never used by
the store itself: the store reads its connection settings and opens its own client with them,
so the object stays usable on the loop its owner uses it on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pymongo import AsyncMongoClient, MongoClient, ReturnDocument, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

from ..core.errors import OffsetMismatch, UploadNotFound
from ..core.ids import is_valid_id
from ..core.upload import Upload
from ._loop import LoopThread

log = logging.getLogger("flask_tus")

T = TypeVar("T")
Document = dict[str, Any]

#: Collection used when neither the settings nor a passed collection name one.
DEFAULT_COLLECTION = "tus_uploads"
#: Database used when neither the settings, the URI nor a passed database name one.
DEFAULT_DATABASE = "flask_tus"

#: Record fields as stored (``id`` is ``_id``). The lease fields are never part of a commit.
_RECORD_FIELDS = (
    "length",
    "offset",
    "metadata_header",
    "created_at",
    "expires_at",
    "concat",
    "parts",
    "completed_at",
    "md5",
    "extra",
)
_RECORD_PROJECTION = dict.fromkeys(_RECORD_FIELDS, 1)
#: Client options of a passed client that the store sets itself.
_OWN_OPTIONS = ("document_class", "tz_aware", "connect", "type_registry", "driver")
_PAGE = 500
_PYMONGO_TYPES = (
    AsyncMongoClient,
    MongoClient,
    AsyncDatabase,
    Database,
    AsyncCollection,
    Collection,
)


class MongoModel:
    """Upload records in a MongoDB collection (an ``UploadStore`` and a ``LeaseStore``).

    ``target`` is a connection URI (``mongodb://`` or ``mongodb+srv://``), or a client,
    database or collection of PyMongo (``AsyncMongoClient``, ``MongoClient``) or Motor, whose
    connection settings are copied (see the module docstring). ``database`` and ``collection``
    override the names the target implies; without them the database is the URI's (or the
    passed database's), else ``"flask_tus"``, and the collection is the passed collection's,
    else ``"tus_uploads"``. ``client_options`` go to ``AsyncMongoClient``.

    The index on ``expires_at`` is created once, on first use. Needs MongoDB 4.2 or newer.
    """

    def __init__(
        self,
        target: Any,
        *,
        database: str | None = None,
        collection: str | None = None,
        **client_options: Any,
    ) -> None:
        settings, implied_database, implied_collection = _connection_of(target)
        settings.update(client_options)
        self._settings = settings
        self._database_name = database or implied_database
        self._collection_name = collection or implied_collection or DEFAULT_COLLECTION
        self._loop = LoopThread("flask-tus-mongo", on_fork=self._forget_client)
        # Touched only on the private loop.
        self._client: AsyncMongoClient[Document] | None = None
        self._collection: AsyncCollection[Document] | None = None
        self._indexes: asyncio.Lock | None = None
        self._indexed = False

    @classmethod
    def from_flask(cls, app: Any, db: Any = None) -> MongoModel:
        """The store for ``FlaskTus(app, model=MongoModel, db=db)``.

        ``db`` (a URI, client, database or collection) wins over ``TUS_MONGODB_URI``;
        ``TUS_MONGODB_DATABASE`` and ``TUS_MONGODB_COLLECTION`` name the database and the
        collection. Raises ``RuntimeError`` when there is neither.
        """
        config: Mapping[str, Any] = app.config
        target = db if db is not None else config.get("TUS_MONGODB_URI")
        if target is None:
            raise RuntimeError("MongoModel needs TUS_MONGODB_URI or a database passed as db=")
        return cls(
            target,
            database=config.get("TUS_MONGODB_DATABASE"),
            collection=config.get("TUS_MONGODB_COLLECTION"),
        )

    @property
    def collection_name(self) -> str:
        """The name of the collection holding the records."""
        return self._collection_name

    # ------------------------------------------------------------------ on the private loop

    async def _run(self, work: Callable[[], Awaitable[T]]) -> T:
        return await self._loop.run(work)

    async def _uploads(self) -> AsyncCollection[Document]:
        """The collection, with its client made and its indexes created on first use."""
        if self._collection is None:
            settings = {**self._settings, "document_class": dict, "tz_aware": True}
            client: AsyncMongoClient[Document] = AsyncMongoClient(**settings)
            if self._database_name:
                database = client.get_database(self._database_name)
            else:
                database = client.get_default_database(DEFAULT_DATABASE)
            self._client = client
            uploads = database.get_collection(self._collection_name)
            if uploads.write_concern.is_server_default:
                # A write is acknowledged once journaled: an offset answered with 204 survives
                # a crash of mongod, as the bytes it counts survive one of this host (fsync).
                # Without ``j`` a standalone server acknowledges writes up to 100 ms before
                # they are on disk. A write concern given in the URI or options is kept.
                uploads = uploads.with_options(write_concern=WriteConcern(j=True))
            self._collection = uploads
            self._indexes = asyncio.Lock()
        if not self._indexed:
            assert self._indexes is not None
            async with self._indexes:
                if not self._indexed:
                    await self._create_indexes(self._collection)
                    self._indexed = True
        return self._collection

    @staticmethod
    async def _create_indexes(uploads: AsyncCollection[Document]) -> None:
        try:
            # The store's own lookups go by ``_id`` (indexed by MongoDB itself); expiry is what
            # records are looked up by from outside (expired uploads, for cleanup and reports).
            await uploads.create_index("expires_at", name="tus_expires_at")
        except OperationFailure as exc:
            # No right to create indexes (or a conflicting one exists): the store still works,
            # only slower to sweep. Not retried: the answer will not change.
            log.warning("tus: could not create the expires_at index on MongoDB: %s", exc)

    async def _get(self, upload_id: str) -> Upload:
        uploads = await self._uploads()
        doc = await uploads.find_one({"_id": upload_id}, _RECORD_PROJECTION)
        if doc is None:
            raise UploadNotFound()
        return _to_upload(doc)

    async def _create(self, upload: Upload) -> None:
        uploads = await self._uploads()
        await uploads.insert_one({"_id": upload.id, **upload.fields()})

    async def _commit(self, upload: Upload, expected_offset: int) -> None:
        uploads = await self._uploads()
        updated = await uploads.find_one_and_update(
            {"_id": upload.id, "offset": expected_offset},
            {"$set": upload.fields()},
            projection={"_id": 1},
            return_document=ReturnDocument.BEFORE,
        )
        if updated is not None:
            return
        current = await uploads.find_one({"_id": upload.id}, {"offset": 1})
        if current is None:
            raise UploadNotFound()
        raise OffsetMismatch(
            f"the upload moved to offset {current.get('offset')} during this request"
        )

    async def _delete(self, upload_id: str) -> None:
        uploads = await self._uploads()
        await uploads.delete_one({"_id": upload_id})

    async def _page(self, after: str | None) -> list[Document]:
        uploads = await self._uploads()
        query = {} if after is None else {"_id": {"$gt": after}}
        cursor = uploads.find(query, _RECORD_PROJECTION).sort("_id", 1).limit(_PAGE)
        return await cursor.to_list(None)

    async def _acquire(self, upload_id: str, owner: str, ttl: float) -> bool:
        uploads = await self._uploads()
        # The clock of the host asking: hosts sharing a database need clocks in step to well
        # within the lease's ttl (NTP gives milliseconds).
        now = datetime.now(UTC)
        taken = await uploads.update_one(
            {
                "_id": upload_id,
                "$or": [
                    {"lease_owner": None},
                    {"lease_owner": owner},
                    {"lease_expires": {"$lte": now}},
                ],
            },
            # ``release_requested`` names the owner it was asked of, so a new owner starts
            # with no pending request and a renewal keeps one that arrived meanwhile.
            {"$set": {"lease_owner": owner, "lease_expires": now + timedelta(seconds=ttl)}},
        )
        if taken.matched_count:
            return True
        if await uploads.find_one({"_id": upload_id}, {"_id": 1}) is None:
            raise UploadNotFound()
        return False

    async def _release(self, upload_id: str, owner: str) -> None:
        uploads = await self._uploads()
        await uploads.update_one(
            {"_id": upload_id, "lease_owner": owner},
            {"$set": {"lease_owner": None, "lease_expires": None, "release_requested": None}},
        )

    async def _request_release(self, upload_id: str) -> None:
        uploads = await self._uploads()
        # One update: the request is addressed to whoever holds the lease at this instant.
        await uploads.update_one(
            {"_id": upload_id, "lease_owner": {"$ne": None}},
            [{"$set": {"release_requested": "$lease_owner"}}],
        )

    async def _release_requested(self, upload_id: str, owner: str) -> bool:
        uploads = await self._uploads()
        found = await uploads.find_one(
            {"_id": upload_id, "lease_owner": owner, "release_requested": owner}, {"_id": 1}
        )
        return found is not None

    def _forget_client(self) -> None:
        """In a forked child: drop the parent's client (its sockets and monitor threads are
        the parent's); the child's first call opens one of its own."""
        self._client = self._collection = None
        self._indexes = None
        self._indexed = False

    #: Seconds :meth:`close` lets calls in flight finish before it cancels them.
    CLOSE_GRACE = 5.0

    async def _close(self) -> None:
        await self._loop.settle(self.CLOSE_GRACE)
        client, self._client, self._collection = self._client, None, None
        self._indexed = False
        if client is not None:
            await client.close()

    # ------------------------------------------------------------------ UploadStore

    async def create(self, upload: Upload) -> None:
        await self._run(lambda: self._create(upload))

    async def get(self, upload_id: str) -> Upload:
        """The record; raises ``UploadNotFound`` for an unknown (or malformed) id."""
        if not is_valid_id(upload_id):
            raise UploadNotFound()
        return await self._run(lambda: self._get(upload_id))

    async def commit(self, upload: Upload, *, expected_offset: int) -> None:
        """Compare-and-set in one ``findOneAndUpdate`` on ``{_id, offset: expected_offset}``.

        Raises ``OffsetMismatch`` when the stored offset differs, ``UploadNotFound`` when the
        record is gone (never recreating it).
        """
        if not is_valid_id(upload.id):
            raise UploadNotFound()
        await self._run(lambda: self._commit(upload, expected_offset))

    async def delete(self, upload_id: str) -> None:
        if is_valid_id(upload_id):
            await self._run(lambda: self._delete(upload_id))

    async def iter_uploads(self) -> AsyncIterator[Upload]:
        """Every record, read in pages of bounded size ordered by id."""
        after: str | None = None
        while True:
            page = await self._run(functools.partial(self._page, after))
            for doc in page:
                try:
                    yield _to_upload(doc)
                except (KeyError, TypeError, ValueError):
                    log.error("tus record %s is unreadable; skipped", doc.get("_id"))
            if len(page) < _PAGE:
                return
            after = page[-1]["_id"]

    # ------------------------------------------------------------------ LeaseStore

    async def acquire_lease(self, upload_id: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease in one conditional update (see ``LeaseStore``)."""
        if not is_valid_id(upload_id):
            raise UploadNotFound()
        return await self._run(lambda: self._acquire(upload_id, owner, ttl))

    async def release_lease(self, upload_id: str, owner: str) -> None:
        if is_valid_id(upload_id):
            await self._run(lambda: self._release(upload_id, owner))

    async def request_release(self, upload_id: str) -> None:
        if is_valid_id(upload_id):
            await self._run(lambda: self._request_release(upload_id))

    async def release_requested(self, upload_id: str, owner: str) -> bool:
        if not is_valid_id(upload_id):
            return False
        return await self._run(lambda: self._release_requested(upload_id, owner))

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Let the calls in flight end (for up to ``CLOSE_GRACE`` seconds, then cancel them),
        close the client and stop the private loop; a later call starts both again."""
        await self._run(self._close)
        self._loop.stop()


# ---------------------------------------------------------------------- documents


def _to_upload(doc: Document) -> Upload:
    created_at = _aware(doc["created_at"])
    assert created_at is not None
    return Upload(
        id=doc["_id"],
        length=doc.get("length"),
        created_at=created_at,
        offset=doc["offset"],
        metadata_header=doc.get("metadata_header"),
        expires_at=_aware(doc.get("expires_at")),
        concat=doc.get("concat"),
        parts=tuple(doc.get("parts") or ()),
        completed_at=_aware(doc.get("completed_at")),
        md5=doc.get("md5"),
        extra=dict(doc.get("extra") or {}),
    )


def _aware(moment: datetime | None) -> datetime | None:
    """A BSON date as an aware UTC datetime.

    BSON dates are UTC instants without a zone; the store's client is ``tz_aware``, so they
    arrive as aware datetimes in PyMongo's own UTC zone, normalised here to ``datetime.UTC``.
    """
    if moment is None:
        return None
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise TypeError(f"expected an aware date, got {moment!r}")
    return moment.astimezone(UTC)


# ---------------------------------------------------------------------- passed objects


def _connection_of(target: Any) -> tuple[dict[str, Any], str | None, str | None]:
    """Client settings, database name and collection name that ``target`` stands for."""
    if isinstance(target, str):
        return {"host": target}, None, None
    obj = target
    if not isinstance(obj, _PYMONGO_TYPES):
        # Motor wraps PyMongo's synchronous objects: read the settings from those. (Never
        # getattr a PyMongo database or collection: any attribute name is a collection.)
        obj = getattr(obj, "delegate", obj)
    database: str | None = None
    collection: str | None = None
    if isinstance(obj, AsyncCollection | Collection):
        collection = obj.name
        obj = obj.database
    if isinstance(obj, AsyncDatabase | Database):
        database = obj.name
        obj = obj.client
    settings = getattr(obj, "_init_kwargs", None)
    if not isinstance(settings, dict):
        raise TypeError(
            f"MongoModel needs a MongoDB URI, or a PyMongo or Motor client, database or "
            f"collection, not {target!r}"
        )
    own = {key: value for key, value in settings.items() if key not in _OWN_OPTIONS}
    return own, database, collection
