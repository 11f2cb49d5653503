"""Typed protocol errors.

Every outcome that is not a success is one of these types. Each carries the HTTP status it maps
to, a stable machine-readable ``code`` and a short human message. Stores, storages and hooks raise
them; the adapters turn them into responses in exactly one place.
"""

from __future__ import annotations

from collections.abc import Mapping


class TusError(Exception):
    """Base class of every protocol error.

    ``status`` is the HTTP status, ``code`` a stable identifier clients and logs can match on,
    ``headers`` extra response headers (for example ``Tus-Version`` on a 412).
    """

    status: int = 500
    code: str = "internal_error"
    default_message: str = "internal server error"

    def __init__(self, message: str | None = None, *, headers: Mapping[str, str] | None = None):
        self.message = message or self.default_message
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(self.message)


class BadRequest(TusError):
    """A malformed header or value (400)."""

    status = 400
    code = "bad_request"
    default_message = "bad request"


class UnsupportedChecksumAlgorithm(BadRequest):
    """``Upload-Checksum`` names an algorithm the server does not offer (400)."""

    code = "unsupported_checksum_algorithm"
    default_message = "unsupported checksum algorithm"


class Forbidden(TusError):
    """The request is understood but not allowed on this upload (403)."""

    status = 403
    code = "forbidden"
    default_message = "forbidden"


class UploadNotFound(TusError):
    """No upload with this id exists (404)."""

    status = 404
    code = "upload_not_found"
    default_message = "upload not found"


class MethodNotAllowed(TusError):
    """The method is not served on this URL (405)."""

    status = 405
    code = "method_not_allowed"
    default_message = "method not allowed"


class OffsetMismatch(TusError):
    """``Upload-Offset`` differs from the stored offset, or a concurrent commit won (409)."""

    status = 409
    code = "offset_mismatch"
    default_message = "Upload-Offset does not match the current offset"


class UploadGone(TusError):
    """The upload expired (410)."""

    status = 410
    code = "upload_expired"
    default_message = "upload expired"


class PreconditionFailed(TusError):
    """Missing or unsupported ``Tus-Resumable`` (412)."""

    status = 412
    code = "unsupported_version"
    default_message = "unsupported tus version"


class PayloadTooLarge(TusError):
    """The upload would exceed ``Upload-Length`` or the server's maximum size (413)."""

    status = 413
    code = "too_large"
    default_message = "upload too large"


class UnsupportedMediaType(TusError):
    """A body was sent with a Content-Type other than ``application/offset+octet-stream`` (415)."""

    status = 415
    code = "unsupported_media_type"
    default_message = "Content-Type must be application/offset+octet-stream"


class HeaderTooLarge(TusError):
    """A request header longer than the server keeps (431)."""

    status = 431
    code = "header_too_large"
    default_message = "a request header is too large"


class RangeNotSatisfiable(TusError):
    """A ``Range`` outside the stored bytes (416)."""

    status = 416
    code = "range_not_satisfiable"
    default_message = "range not satisfiable"


class InsufficientStorage(TusError):
    """The server has no room for the rest of this body now (507): a full disk or quota.

    What was written in full before is saved and committed; ``HEAD`` tells how much, and the
    client resumes from there once there is room again.
    """

    status = 507
    code = "insufficient_storage"
    default_message = "no room for the rest of this upload now; HEAD for the saved offset"


class UploadLocked(TusError):
    """Another request is writing to this upload (423)."""

    status = 423
    code = "upload_locked"
    default_message = "upload is locked by another request"


class LockLost(TusError):
    """This request's hold on the upload lapsed before it could commit (409).

    Across hosts the hold is a lease that must be renewed; a holder cut off from the store for
    longer than the lease's life may have been replaced. Nothing of this request's body is
    committed; ``HEAD`` tells the offset to resume from.
    """

    status = 409
    code = "lock_lost"
    default_message = "this request lost its hold on the upload; HEAD for the offset"


class ChecksumMismatch(TusError):
    """The body does not match ``Upload-Checksum`` (460, tus checksum extension)."""

    status = 460
    code = "checksum_mismatch"
    default_message = "checksum mismatch"


class UploadInterrupted(TusError):
    """A newer request for the same upload took it over while this one was writing (400).

    The bytes this request delivered before it stopped are saved; ``HEAD`` tells how many.
    """

    status = 400
    code = "upload_interrupted"
    default_message = "upload interrupted by a newer request for it; HEAD for the saved offset"


class ClientDisconnected(TusError):
    """The client went away before the whole body arrived.

    Adapters raise it from the body iterator; the handler keeps what arrived.
    """

    status = 400
    code = "client_disconnected"
    default_message = "client disconnected before the body was complete"


class HookRejected(TusError):
    """Raised by a pre-hook (``on_create``, ``pre_save``, ``pre_delete``) to refuse a request.

    The status must be a 4xx; it defaults to 403.
    """

    status = 403
    code = "rejected"
    default_message = "request rejected"

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int = 403,
        headers: Mapping[str, str] | None = None,
    ):
        if not 400 <= status <= 499:
            raise ValueError(f"HookRejected status must be 4xx, not {status}")
        super().__init__(message, headers=headers)
        self.status = status
