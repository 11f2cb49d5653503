"""The tus 1.0.0 protocol: one handler that turns each request into a response.

The handler sequences every request against the store, the storage, the locker and the hooks it
is given. It does no I/O of its own and knows no web framework. Every error, expected or not,
becomes a response here (:meth:`TusHandler.handle` never raises), so each adapter has exactly one
place that maps outcomes to HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hmac
import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

from . import errors
from .checksum import Hasher, new_hasher
from .download import content_headers
from .headers import (
    MAX_INT64,
    OCTET_STREAM,
    SUPPORTED_VERSIONS,
    TUS_VERSION,
    Checksum,
    check_version,
    format_concat,
    http_date,
    parse_checksum,
    parse_concat,
    parse_defer_length,
    parse_metadata,
    parse_range,
    parse_uint,
)
from .hooks import HookEvent, Hooks, RequestInfo
from .ids import is_valid_id, new_id
from .messages import Headers, TusRequest, TusResponse
from .protocols import (
    ConcatenatingStorage,
    DataStorage,
    Locker,
    LockHandle,
    SalvagingWriter,
    UploadStore,
)
from .pump import BodyPump
from .settings import TusSettings
from .steps import run_to_end
from .upload import Upload

log = logging.getLogger("flask_tus")
#: Write failures that mean "no room now" (507) rather than a broken server (500).
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)

#: Response headers a browser script may read (CORS); tus clients need every one of them.
EXPOSE_HEADERS = (
    "Upload-Offset, Location, Upload-Length, Tus-Version, Tus-Resumable, Tus-Max-Size, "
    "Tus-Extension, Upload-Metadata, Upload-Defer-Length, Upload-Concat, Upload-Expires, "
    "Upload-Checksum"
)
ALLOW_HEADERS = (
    "Authorization, Content-Type, Location, Tus-Extension, Tus-Max-Size, Tus-Resumable, "
    "Tus-Version, Upload-Concat, Upload-Defer-Length, Upload-Length, Upload-Metadata, "
    "Upload-Offset, Upload-Checksum, X-HTTP-Method-Override, X-Requested-With"
)
ALLOW_METHODS = "POST, HEAD, PATCH, DELETE, GET, OPTIONS"
#: Every method the handler serves on some tus URL (others get 405), and those that
#: ``X-HTTP-Method-Override`` may name.
SERVED_METHODS = frozenset(ALLOW_METHODS.split(", "))
_COLLECTION_METHODS = ("POST", "OPTIONS")
_UPLOAD_METHODS = ("HEAD", "PATCH", "DELETE", "GET", "OPTIONS")
# A forwarded host: a DNS name or bracketed IPv6, with an optional port. Anything else is ignored
# so that a header never injects text into Location.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~%!$&'()*+,;=:@-]*)*")


@dataclass
class _Received:
    """What one request body delivered."""

    count: int
    disconnected: bool
    #: The request's task was cancelled (server shutdown) while it waited for the body.
    cancelled: bool = False
    #: A newer request for the upload asked this one to let go, and it did.
    interrupted: bool = False
    #: Storage failed to write the rest (``count`` is what it had written in full before).
    failure: OSError | None = None

    @property
    def cut_short(self) -> bool:
        """The body did not arrive whole (or this request stopped reading it)."""
        return self.disconnected or self.cancelled or self.interrupted or bool(self.failure)

    def raise_if_cut_short(self) -> None:
        """After the commit: report a body that did not arrive whole."""
        if self.failure is not None:
            _raise_write_error(self.failure)
        if self.cancelled:
            # What arrived is saved; now let the cancellation (server shutdown) proceed.
            raise asyncio.CancelledError()
        if self.interrupted:
            raise errors.UploadInterrupted()
        if self.disconnected:
            raise errors.ClientDisconnected()


def _raise_write_error(exc: OSError) -> NoReturn:
    """Raise what a storage write failure becomes: 507 when the disk or quota is full (the
    client may resume later), else the error itself (500)."""
    if exc.errno in _NO_ROOM:
        raise errors.InsufficientStorage() from exc
    raise exc


class TusHandler:
    """Serves the tus protocol over the given backends.

    ``clock`` returns the current time (timezone-aware UTC); tests replace it.
    """

    def __init__(
        self,
        *,
        store: UploadStore,
        storage: DataStorage,
        locker: Locker,
        hooks: Hooks | None = None,
        settings: TusSettings | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.locker = locker
        self.hooks = hooks or Hooks()
        self.settings = settings or TusSettings()
        self.clock = clock or (lambda: datetime.now(UTC))

    # ------------------------------------------------------------------ capabilities

    @property
    def extensions(self) -> tuple[str, ...]:
        """The tus extensions the configured backends really implement (for OPTIONS)."""
        names = ["creation", "creation-with-upload", "creation-defer-length", "termination"]
        if self.settings.expiration is not None:
            names.append("expiration")
        if self.settings.checksum_algorithms:
            names.append("checksum")
        if isinstance(self.storage, ConcatenatingStorage):
            names += ["concatenation", "concatenation-unfinished"]
        return tuple(names)

    # ------------------------------------------------------------------ entry point

    async def handle(self, request: TusRequest) -> TusResponse:
        """Answer one request. Never raises: every failure becomes an error response."""
        method = request.method.upper()
        override = request.headers.get("x-http-method-override")
        if method == "POST" and override and override.strip().upper() in SERVED_METHODS:
            method = override.strip().upper()
            # Hooks and everything below see the method the client meant.
            request = dataclasses.replace(request, method=method)
        try:
            response = await self._dispatch(method, request)
        except errors.TusError as exc:
            response = self._error(exc)
        except Exception:
            log.exception("tus %s on %r failed", method, request.upload_id)
            response = self._error(errors.TusError())
        self._finish(method, request, response)
        return response

    async def _dispatch(self, method: str, request: TusRequest) -> TusResponse:
        allowed = _COLLECTION_METHODS if request.upload_id is None else _UPLOAD_METHODS
        if method not in allowed:
            raise errors.MethodNotAllowed(headers={"Allow": ", ".join(allowed)})
        if method == "OPTIONS":
            return self._options(request)
        # GET is a plain download, not a tus request: browsers follow links without tus headers.
        if method != "GET":
            check_version(request.headers.get("tus-resumable"))
        # Servers frame bodies by it, so a malformed one rarely gets here; an adapter that
        # passes it on as it came gets a clear refusal rather than a body read some other way.
        parse_uint("Content-Length", request.headers.get("content-length"))
        if request.upload_id is None:
            return await self._post(request)
        upload_id = request.upload_id
        # The id is checked before it reaches any store or path (ids are 32 hex digits).
        if not is_valid_id(upload_id):
            raise errors.UploadNotFound()
        if method == "HEAD":
            return await self._head(upload_id, request)
        if method == "PATCH":
            return await self._patch(upload_id, request)
        if method == "DELETE":
            return await self._delete(upload_id, request)
        return await self._get(upload_id, request)

    # ------------------------------------------------------------------ OPTIONS

    def _options(self, request: TusRequest) -> TusResponse:
        headers = {
            "Tus-Version": ",".join(SUPPORTED_VERSIONS),
            "Tus-Extension": ",".join(self.extensions),
        }
        if self.settings.max_size is not None:
            headers["Tus-Max-Size"] = str(self.settings.max_size)
        if self.settings.checksum_algorithms:
            headers["Tus-Checksum-Algorithm"] = ",".join(self.settings.checksum_algorithms)
        return TusResponse(204, headers)

    # ------------------------------------------------------------------ POST (creation)

    async def _post(self, request: TusRequest) -> TusResponse:
        headers = request.headers
        concat = parse_concat(headers.get("upload-concat"))
        if concat is not None and not isinstance(self.storage, ConcatenatingStorage):
            raise errors.BadRequest("concatenation is not supported by this server")
        length = parse_uint("Upload-Length", headers.get("upload-length"))
        deferred = parse_defer_length(headers.get("upload-defer-length"))
        metadata_header = headers.get("upload-metadata")
        limit = self.settings.max_metadata_size
        # Header values reach the core as latin-1 text: one character per byte.
        if metadata_header is not None and limit is not None and len(metadata_header) > limit:
            raise errors.HeaderTooLarge(f"Upload-Metadata is longer than {limit} bytes")
        parse_metadata(metadata_header)  # validate now; the raw value is what HEAD returns
        if request.has_body and _media_type(headers) != OCTET_STREAM:
            raise errors.UnsupportedMediaType()

        now = self.clock()
        upload_id = new_id()
        if concat is not None and concat.kind == "final":
            if length is not None or deferred:
                raise errors.BadRequest("Upload-Length must not be sent for a final upload")
            if request.has_body:
                raise errors.Forbidden("a final upload takes no body")
            parts = [await self._load_part(part_id, now) for part_id in concat.parts]
            lengths = [p.length for p in parts]
            total = None if None in lengths else sum(p or 0 for p in lengths)
            # The maximum holds for a final too (413 before anything is created). Only known
            # lengths count: a part whose length is still deferred is checked on its own.
            self._check_max(sum(n for n in lengths if n is not None), "the parts together")
            upload = Upload(
                id=upload_id,
                length=total,
                created_at=now,
                metadata_header=metadata_header,
                expires_at=self._expiry(now),
                concat="final",
                parts=concat.parts,
            )
        else:
            if length is None and not deferred:
                raise errors.BadRequest("Upload-Length or Upload-Defer-Length: 1 is required")
            if length is not None and deferred:
                raise errors.BadRequest("send Upload-Length or Upload-Defer-Length, not both")
            self._check_max(length)
            # creation-with-upload: refuse before anything is created.
            self._check_announced(request, 0, length)
            upload = Upload(
                id=upload_id,
                length=length,
                created_at=now,
                metadata_header=metadata_header,
                expires_at=self._expiry(now),
                concat=concat.kind if concat else None,
            )

        await self._fire("on_create", upload, request)
        # Data first, record second: a crash between them leaves an orphan file (reported by
        # the cleanup command), never a record that points at nothing.
        await self.storage.create(upload_id)
        try:
            await self.store.create(upload)
        except Exception:
            await self._drop_unrecorded(upload_id)
            raise

        response_headers = {"Location": self._location(request, upload_id)}
        if upload.concat == "final":
            upload = await self._try_assemble(upload, request)
        elif upload.length == 0 and not request.has_body:
            upload = await self._complete_empty(upload, request)
        elif request.has_body:
            # creation-with-upload: the body is the first chunk, at offset 0. With
            # Upload-Length: 0 any byte of it is refused (413) rather than silently dropped.
            try:
                async with self.locker.lock(upload_id) as held:
                    upload, received = await self._write_chunk(
                        upload, request, held, 0, None, keep_cut_short=False
                    )
            except Exception:
                # A refused or failed first chunk (too long, checksum mismatch, pre_save
                # rejection or error) gets no Location, so nobody could ever resume this
                # upload: leave nothing behind.
                await self.remove(upload_id)
                raise
            if received.cut_short:
                # Nor does a first chunk that did not arrive whole (none of it was kept).
                await self.remove(upload_id)
                received.raise_if_cut_short()
            if upload.length == 0 and not upload.is_complete:
                # A chunked body that turned out empty: the upload is complete at once.
                upload = await self._complete_empty(upload, request)
            response_headers["Upload-Offset"] = str(upload.offset)
            received.raise_if_cut_short()
        response_headers.update(self._expiry_headers(upload))
        return TusResponse(201, response_headers)

    async def _drop_unrecorded(self, upload_id: str) -> None:
        """Remove the data file of an upload whose record could not be created: no URL was
        handed out, so it would only ever be an orphan.

        A store's error does not prove that nothing was written (a database connection lost
        at COMMIT may have committed): the file goes only when the store confirms there is no
        record, never leaving a record that points at nothing. Anything else is logged, and
        the file is left for cleanup to report.
        """
        try:
            await self.store.get(upload_id)
        except errors.UploadNotFound:
            try:
                await self.storage.delete(upload_id)
            except Exception:
                log.warning("tus upload %s: data without a record kept", upload_id, exc_info=True)
        except Exception:
            log.warning("tus upload %s: record may exist; data kept", upload_id, exc_info=True)

    async def _load_part(self, part_id: str, now: datetime) -> Upload:
        try:
            part = await self.store.get(part_id)
        except errors.UploadNotFound as exc:
            raise errors.BadRequest(f"Upload-Concat names an unknown upload {part_id}") from exc
        if part.concat != "partial":
            raise errors.BadRequest(f"upload {part_id} is not a partial upload")
        if self._expired(part, now):
            raise errors.BadRequest(f"partial upload {part_id} has expired")
        return part

    async def _complete_empty(self, upload: Upload, request: TusRequest) -> Upload:
        finished = upload.copy(completed_at=self.clock())
        await self.store.commit(finished, expected_offset=0)
        await self._fire("on_complete", finished, request)
        return finished

    # ------------------------------------------------------------------ HEAD

    async def _head(self, upload_id: str, request: TusRequest) -> TusResponse:
        upload = await self._get_assembled(upload_id, request)
        headers = {"Cache-Control": "no-store"}
        # A final upload shows its offset only once it is assembled (tus concatenation).
        if upload.concat != "final" or upload.is_complete:
            headers["Upload-Offset"] = str(upload.offset)
        if upload.length is not None:
            headers["Upload-Length"] = str(upload.length)
        elif upload.concat != "final":
            headers["Upload-Defer-Length"] = "1"
        if upload.metadata_header is not None:
            headers["Upload-Metadata"] = upload.metadata_header
        if upload.concat is not None:
            headers["Upload-Concat"] = format_concat(
                upload.concat, [self._location(request, p) for p in upload.parts]
            )
        headers.update(self._expiry_headers(upload))
        return TusResponse(200, headers)

    # ------------------------------------------------------------------ PATCH

    async def _patch(self, upload_id: str, request: TusRequest) -> TusResponse:
        headers = request.headers
        if _media_type(headers) != OCTET_STREAM:
            raise errors.UnsupportedMediaType()
        offset = parse_uint("Upload-Offset", headers.get("upload-offset"))
        if offset is None:
            raise errors.BadRequest("Upload-Offset is required")
        new_length = parse_uint("Upload-Length", headers.get("upload-length"))
        parse_checksum(headers.get("upload-checksum"), self.settings.checksum_algorithms)

        async with self.locker.lock(upload_id) as held:
            # Read under the lock: the record may have moved while we waited.
            upload = await self._get_live(upload_id)
            if upload.concat == "final":
                raise errors.Forbidden("a final upload cannot be patched")
            upload, received = await self._write_chunk(upload, request, held, offset, new_length)
        received.raise_if_cut_short()
        response_headers = {"Upload-Offset": str(upload.offset)}
        response_headers.update(self._expiry_headers(upload))
        return TusResponse(204, response_headers)

    async def _write_chunk(
        self,
        upload: Upload,
        request: TusRequest,
        held: LockHandle,
        offset: int,
        new_length: int | None,
        *,
        keep_cut_short: bool = True,
    ) -> tuple[Upload, _Received]:
        """Write the request body at ``offset`` and commit the new offset.

        Must be called with the upload's lock held. Nothing is committed unless the bytes are
        flushed first; on any refusal the bytes of this request are discarded, and so are those
        of a body cut short unless ``keep_cut_short``.
        """
        if offset != upload.offset:
            raise errors.OffsetMismatch(
                f"Upload-Offset is {offset} but the upload is at {upload.offset}"
            )
        length = upload.length
        if new_length is not None:
            if length is None:
                # creation-defer-length: the length is set once and never changes.
                if new_length < offset:
                    raise errors.BadRequest("Upload-Length is smaller than the current offset")
                self._check_max(new_length)
                length = new_length
            elif new_length != length:
                raise errors.BadRequest("Upload-Length cannot change once set")
        limit = self._check_announced(request, offset, length)
        checksum = parse_checksum(
            request.headers.get("upload-checksum"), self.settings.checksum_algorithms
        )

        staged = upload.copy(length=length)
        await self._fire("pre_save", staged, request)
        received = await self._receive(
            upload.id,
            request,
            held=held,
            offset=offset,
            limit=limit,
            checksum=checksum,
            keep_cut_short=keep_cut_short,
        )

        new_offset = offset + received.count
        if new_offset == offset and length == upload.length:
            return upload, received
        done = length is not None and new_offset == length
        committed = staged.copy(offset=new_offset, completed_at=self.clock() if done else None)
        # The lock must still be ours (a lease across hosts can lapse), and stay so until the
        # commit has landed: LockLost refuses the commit, and the bytes past the offset are
        # cut by the next writer.
        await held.confirm()
        # Compare-and-set: only the request that saw this offset may move it. Run to its end
        # even if this request is cancelled: the lock must outlive the commit (core/steps.py).
        try:
            await run_to_end(self.store.commit(committed, expected_offset=offset))
        except OSError as exc:
            # The JSON store's records share the disk with the data: no room for the new line
            # either means 507, not a broken server. Nothing was committed.
            _raise_write_error(exc)
        await self._fire("post_save", committed, request)
        if done:
            # Reaching the length happens once per upload (the commit above is a CAS), so this
            # hook fires exactly once.
            await self._fire("on_complete", committed, request)
        return committed, received

    async def _receive(
        self,
        upload_id: str,
        request: TusRequest,
        *,
        held: LockHandle,
        offset: int,
        limit: int | None,
        checksum: Checksum | None,
        keep_cut_short: bool = True,
    ) -> _Received:
        """Stream the body to storage at ``offset`` and flush it; nothing is committed here.

        Ends early, keeping what arrived, when the client disconnects or a newer request for
        this upload asks us to let go. A body with ``Upload-Checksum``, or any body when not
        ``keep_cut_short``, is all or nothing.
        """
        room = None if limit is None else limit - offset
        hasher: Hasher | None = new_hasher(checksum.algorithm) if checksum else None
        count = 0
        disconnected = False
        async with (
            self.storage.open_writer(upload_id, offset) as writer,
            BodyPump(request.body, held.stop_requested) as pump,
        ):
            try:
                while (piece := await pump.next()) is not None:
                    if room is not None and count + len(piece) > room:
                        await writer.discard()
                        raise errors.PayloadTooLarge("the body would pass Upload-Length")
                    try:
                        await writer.write(piece)
                    except OSError as exc:
                        # A full disk, say: keep what was written in full before, as for a
                        # client that dropped, unless the body is all or nothing.
                        salvage = checksum is None and keep_cut_short
                        if not (salvage and isinstance(writer, SalvagingWriter)):
                            _raise_write_error(exc)
                        try:
                            kept = await writer.salvage()
                        except OSError as failed:
                            _raise_write_error(failed)
                        return _Received(kept, False, failure=exc)
                    if hasher is not None:
                        hasher.update(piece)
                    count += len(piece)
            except errors.ClientDisconnected:
                disconnected = True
            announced = request.content_length
            if announced is not None and count >= announced:
                # Everything arrived, even if a stop came in before the end was seen.
                interrupted = cancelled = False
            else:
                interrupted, cancelled = pump.stopped, pump.cancelled
                # Some servers report a dropped client as a silent end of body: compare with
                # the announced length.
                if announced is not None and not (interrupted or cancelled):
                    disconnected = True
            received = _Received(count, disconnected, cancelled, interrupted)
            if received.cut_short and (checksum is not None or not keep_cut_short):
                # A checksum covers the whole body: a cut-off body cannot be verified.
                await writer.discard()
                received.count = 0
                return received
            if (
                checksum is not None
                and hasher is not None
                and not hmac.compare_digest(hasher.digest(), checksum.digest)
            ):
                await writer.discard()
                raise errors.ChecksumMismatch()
            try:
                await writer.flush()
            except OSError as exc:
                _raise_write_error(exc)
        return received

    # ------------------------------------------------------------------ DELETE (termination)

    async def _delete(self, upload_id: str, request: TusRequest) -> TusResponse:
        async with self.locker.lock(upload_id):
            upload = await self.store.get(upload_id)
            await self._fire("pre_delete", upload, request)
            await run_to_end(self.remove(upload_id))
        await self._fire("post_delete", upload, request)
        return TusResponse(204)

    async def remove(self, upload_id: str) -> None:
        """Delete an upload's record and data together (record first, so a crash in between
        leaves an orphan file to report, never a record whose bytes are gone)."""
        await self.store.delete(upload_id)
        await self.storage.delete(upload_id)

    # ------------------------------------------------------------------ GET (download)

    async def _get(self, upload_id: str, request: TusRequest) -> TusResponse:
        upload = await self._get_assembled(upload_id, request)
        if not upload.is_complete or upload.length is None:
            raise errors.UploadNotFound("upload is not finished")
        size = upload.length
        byte_range = parse_range(request.headers.get("range"), size)
        headers = content_headers(upload.metadata)
        headers["Accept-Ranges"] = "bytes"
        headers["Cache-Control"] = "no-store"
        if byte_range is None:
            headers["Content-Length"] = str(size)
            stream = self.storage.read(upload_id, 0, size - 1) if size else None
            return TusResponse(200, headers, stream=stream)
        headers["Content-Length"] = str(byte_range.length)
        headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{size}"
        stream = self.storage.read(upload_id, byte_range.start, byte_range.end)
        return TusResponse(206, headers, stream=stream)

    # ------------------------------------------------------------------ concatenation

    async def _try_assemble(self, final: Upload, request: TusRequest) -> Upload:
        """Build a final upload once all its partials are finished; until then leave it be.

        With concatenation-unfinished a final may be created before its parts finish; it is
        assembled by the first request that finds them all done. Raises ``PayloadTooLarge``
        when the parts, once their lengths are known, pass the maximum size together (a part
        whose length was deferred was not counted when the final was made): such a final is
        never assembled, and expires.
        """
        parts: list[Upload] = []
        for part_id in final.parts:
            try:
                parts.append(await self.store.get(part_id))
            except errors.UploadNotFound:
                return final
        if all(p.length is not None for p in parts):
            self._check_max(sum(p.length or 0 for p in parts), "the parts together")
        if not all(p.is_complete for p in parts):
            if final.length is None and all(p.length is not None for p in parts):
                # Under the lock, like assembly: a request assembling the final meanwhile must
                # not have its finished record replaced by this unfinished one.
                async with self.locker.lock(final.id):
                    current = await self.store.get(final.id)
                    if current.length is not None:
                        return current
                    known = current.copy(length=sum(p.length or 0 for p in parts))
                    await run_to_end(self.store.commit(known, expected_offset=current.offset))
                return known
            return final
        assert isinstance(self.storage, ConcatenatingStorage)
        async with self.locker.lock(final.id):
            current = await self.store.get(final.id)
            if current.is_complete:
                return current
            await run_to_end(self.storage.concatenate(final.id, final.parts))
            total = sum(p.offset for p in parts)
            done = current.copy(length=total, offset=total, completed_at=self.clock())
            await run_to_end(self.store.commit(done, expected_offset=current.offset))
        await self._fire("on_complete", done, request)
        return done

    # ------------------------------------------------------------------ helpers

    async def _get_live(self, upload_id: str) -> Upload:
        upload = await self.store.get(upload_id)
        if self._expired(upload, self.clock()):
            raise errors.UploadGone()
        return upload

    async def _get_assembled(self, upload_id: str, request: TusRequest) -> Upload:
        """Like :meth:`_get_live`, but a final upload is assembled first if its parts are done.

        Assembly comes before the expiry test: a final has nothing to upload itself, and parts
        that finished did so in time (each expires no later than a final made after it), even
        when nobody asked for the final before its own expiry.
        """
        upload = await self.store.get(upload_id)
        if upload.concat == "final" and not upload.is_complete:
            upload = await self._try_assemble(upload, request)
        if self._expired(upload, self.clock()):
            raise errors.UploadGone()
        return upload

    def _expired(self, upload: Upload, now: datetime) -> bool:
        return upload.is_expired(now, expire_completed=self.settings.expire_completed)

    async def is_expired(self, upload: Upload, now: datetime) -> bool:
        """Whether ``upload`` has expired at ``now``, as cleanup must judge it.

        Past its ``expires_at``, an unfinished final upload whose parts are all finished has
        not expired: it is only waiting to be assembled, which the next HEAD or GET does.
        """
        if not self._expired(upload, now):
            return False
        if upload.concat != "final" or upload.is_complete:
            return True
        total = 0
        for part_id in upload.parts:
            try:
                part = await self.store.get(part_id)
            except errors.UploadNotFound:
                return True
            if not part.is_complete:
                return True
            total += part.offset
        # Parts too large together are never assembled (see _try_assemble).
        limit = self.settings.max_size
        return limit is not None and total > limit

    def _expiry(self, now: datetime) -> datetime | None:
        exp = self.settings.expiration
        return None if exp is None else now + exp

    def _expiry_headers(self, upload: Upload) -> dict[str, str]:
        if upload.expires_at is None:
            return {}
        if upload.is_complete and not self.settings.expire_completed:
            return {}
        return {"Upload-Expires": http_date(upload.expires_at)}

    def _check_announced(self, request: TusRequest, offset: int, length: int | None) -> int | None:
        """The most bytes the upload may hold (its length, else the maximum size); raises
        ``PayloadTooLarge`` when the announced body would pass it from ``offset``."""
        limit = length if length is not None else self.settings.max_size
        announced = request.content_length
        if announced is not None and limit is not None and offset + announced > limit:
            raise errors.PayloadTooLarge(
                "the body would pass Upload-Length"
                if length is not None
                else "the body would pass the maximum upload size"
            )
        return limit

    def _check_max(self, length: int | None, what: str = "Upload-Length") -> None:
        limit = self.settings.max_size
        if length is not None and limit is not None and length > limit:
            raise errors.PayloadTooLarge(f"{what} exceeds the maximum size of {limit}")
        if length is not None and length > MAX_INT64:
            # Only parts added up get here (a header is refused by parse_uint): with no
            # maximum, a sum no store can keep.
            raise errors.PayloadTooLarge(f"{what} exceeds {MAX_INT64} bytes")

    async def _fire(self, name: str, upload: Upload, request: TusRequest) -> None:
        """Run hook ``name``; the event (a copy of the headers) is built only if it has any."""
        if name in self.hooks:
            await self.hooks.run(name, self._event(name, upload, request))

    def _event(self, name: str, upload: Upload, request: TusRequest) -> HookEvent:
        info = RequestInfo(
            method=request.method,
            path=request.collection_path + (request.upload_id or ""),
            headers=Headers(request.headers),
            remote_addr=request.remote_addr,
        )
        return HookEvent(name, upload, info)

    def _location(self, request: TusRequest, upload_id: str) -> str:
        """The upload's URL: relative, or absolute when a trusted proxy forwarded its host."""
        path = request.collection_path + upload_id
        if not self._from_trusted_proxy(request):
            return path
        host = _last(request.headers.get("x-forwarded-host"))
        if not host or not _HOST.fullmatch(host):
            return path
        proto = _last(request.headers.get("x-forwarded-proto")) or "http"
        if proto not in ("http", "https"):
            proto = "http"
        prefix = (_last(request.headers.get("x-forwarded-prefix")) or "").rstrip("/")
        if not _PREFIX.fullmatch(prefix):
            prefix = ""
        return f"{proto}://{host}{prefix}{path}"

    def _from_trusted_proxy(self, request: TusRequest) -> bool:
        if not self.settings.trusted_proxies or not request.remote_addr:
            return False
        try:
            address = ipaddress.ip_address(request.remote_addr)
        except ValueError:
            return False
        return any(address in network for network in self.settings.trusted_proxies)

    def _error(self, exc: errors.TusError) -> TusResponse:
        headers = dict(exc.headers)
        headers["Content-Type"] = "text/plain; charset=utf-8"
        return TusResponse(exc.status, headers, body=exc.message.encode() + b"\n")

    def _finish(self, method: str, request: TusRequest, response: TusResponse) -> None:
        """Headers every response carries: Tus-Resumable and CORS; HEAD loses its body."""
        response.headers["Tus-Resumable"] = TUS_VERSION
        if method == "HEAD":
            response.body = b""
            response.stream = None
        if not response.body and response.stream is None:
            response.headers.pop("Content-Type", None)
        self._cors(method, request, response)

    def _cors(self, method: str, request: TusRequest, response: TusResponse) -> None:
        origin = request.headers.get("origin")
        allowed = self.settings.cors_origins
        if not origin or not allowed:
            return
        if "*" in allowed:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        else:
            return
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        if method == "OPTIONS" and "access-control-request-method" in request.headers:
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = "86400"


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _last(value: str | None) -> str | None:
    """The last entry of a comma-separated forwarded header: the one the trusted proxy that
    sent the request wrote (a proxy that appends keeps what the client sent before it)."""
    if value is None:
        return None
    return value.rsplit(",", 1)[-1].strip() or None
