"""Parsing and formatting of the tus headers.

Pure functions: each takes the raw header value (``None`` when absent) and returns a typed value
or raises :class:`~flask_tus.core.errors.BadRequest` with a message naming the header.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import urlsplit

from .errors import BadRequest, PreconditionFailed
from .ids import is_valid_id

TUS_VERSION = "1.0.0"
SUPPORTED_VERSIONS = (TUS_VERSION,)
OCTET_STREAM = "application/offset+octet-stream"

# RFC 9110 digits only: no sign, no whitespace, no underscores (which int() would accept).
_DIGITS = re.compile(r"[0-9]{1,19}")
# A metadata key: non-empty, no spaces or commas (tus 1.0.0, Upload-Metadata), printable ASCII.
_META_KEY = re.compile(r"[!-+\--~]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
#: The largest length or offset: what every store can keep (a signed 64-bit integer).
MAX_INT64 = 2**63 - 1


def check_version(value: str | None) -> None:
    """Raise :class:`PreconditionFailed` (412) unless ``Tus-Resumable`` is a version we speak."""
    if value is None or value.strip() not in SUPPORTED_VERSIONS:
        raise PreconditionFailed(
            "Tus-Resumable header missing or unsupported",
            headers={"Tus-Version": ",".join(SUPPORTED_VERSIONS)},
        )


def parse_uint(name: str, value: str | None) -> int | None:
    """Parse a non-negative decimal integer header; ``None`` when absent.

    Raises :class:`BadRequest` for anything but 1-19 ASCII digits or a value beyond 2**63-1.
    """
    if value is None:
        return None
    value = value.strip()
    if not _DIGITS.fullmatch(value):
        raise BadRequest(f"{name} must be a non-negative integer")
    number = int(value)
    if number > MAX_INT64:
        raise BadRequest(f"{name} is too large")
    return number


def parse_defer_length(value: str | None) -> bool:
    """``Upload-Defer-Length`` must be exactly ``1`` when present (tus creation-defer-length)."""
    if value is None:
        return False
    if value.strip() != "1":
        raise BadRequest("Upload-Defer-Length must be 1")
    return True


def parse_metadata(value: str | None) -> dict[str, bytes | None]:
    """Decode ``Upload-Metadata`` into ``{key: raw bytes or None}``.

    Pairs are comma-separated ``key base64value``; the value may be absent. Keys must be unique,
    non-empty and free of spaces and commas; values must be valid base64. Raises
    :class:`BadRequest` otherwise.
    """
    result: dict[str, bytes | None] = {}
    if value is None or value.strip() == "":
        return result
    for raw_pair in value.split(","):
        pair = raw_pair.strip()
        parts = pair.split(" ")
        if len(parts) > 2 or not parts[0]:
            raise BadRequest("Upload-Metadata is malformed")
        key = parts[0]
        if not _META_KEY.fullmatch(key):
            raise BadRequest("Upload-Metadata key is invalid")
        if key in result:
            raise BadRequest(f"Upload-Metadata key {key!r} is duplicated")
        if len(parts) == 1 or parts[1] == "":
            result[key] = None
            continue
        encoded = parts[1]
        if not _BASE64.fullmatch(encoded) or len(encoded) % 4:
            raise BadRequest(f"Upload-Metadata value of {key!r} is not base64")
        try:
            result[key] = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise BadRequest(f"Upload-Metadata value of {key!r} is not base64") from exc
    return result


def decode_metadata_text(metadata: dict[str, bytes | None]) -> dict[str, str | None]:
    """Metadata values as text (UTF-8, undecodable bytes replaced) for hooks and downloads."""
    return {
        key: None if raw is None else raw.decode("utf-8", errors="replace")
        for key, raw in metadata.items()
    }


@dataclass(frozen=True)
class Checksum:
    """A parsed ``Upload-Checksum``: algorithm name and the raw digest."""

    algorithm: str
    digest: bytes


def parse_checksum(value: str | None, supported: tuple[str, ...]) -> Checksum | None:
    """Parse ``Upload-Checksum: <algorithm> <base64 digest>``.

    Raises :class:`UnsupportedChecksumAlgorithm` (400) for an algorithm not in ``supported`` and
    :class:`BadRequest` for a malformed value (tus checksum extension).
    """
    from .errors import UnsupportedChecksumAlgorithm

    if value is None:
        return None
    parts = value.strip().split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise BadRequest("Upload-Checksum must be '<algorithm> <base64 digest>'")
    algorithm, encoded = parts[0].lower(), parts[1]
    if algorithm not in supported:
        raise UnsupportedChecksumAlgorithm(f"checksum algorithm {parts[0]!r} is not supported")
    if not _BASE64.fullmatch(encoded) or len(encoded) % 4:
        raise BadRequest("Upload-Checksum digest is not base64")
    return Checksum(algorithm, base64.b64decode(encoded))


@dataclass(frozen=True)
class Concat:
    """A parsed ``Upload-Concat``: ``partial``, or ``final`` with the ids of its parts."""

    kind: str  # "partial" | "final"
    parts: tuple[str, ...] = ()


def parse_concat(value: str | None) -> Concat | None:
    """Parse ``Upload-Concat`` on a POST (tus concatenation extension).

    ``final;`` lists space-separated upload URLs, relative or absolute; the last path segment of
    each must be a valid upload id, named once. Raises :class:`BadRequest` otherwise, and for a
    URL with a comma: a list separated by commas, read as one path, ``/files/a,/files/b``,
    would quietly name only ``b``.
    """
    if value is None:
        return None
    value = value.strip()
    if value == "partial":
        return Concat("partial")
    if not value.startswith("final;"):
        raise BadRequest("Upload-Concat must be 'partial' or 'final;<urls>'")
    urls = value[len("final;") :].split()
    if not urls:
        raise BadRequest("Upload-Concat final lists no uploads")
    ids: list[str] = []
    for url in urls:
        if "," in url:
            raise BadRequest("Upload-Concat separates its URLs with spaces, not commas")
        try:
            path = urlsplit(url).path
        except ValueError as exc:
            raise BadRequest("Upload-Concat holds an invalid URL") from exc
        upload_id = path.rstrip("/").rsplit("/", 1)[-1]
        if not is_valid_id(upload_id):
            raise BadRequest("Upload-Concat names an invalid upload id")
        if upload_id in ids:
            # Listing a part twice would store its bytes twice: a few bytes of header could
            # then make a final far beyond what was uploaded.
            raise BadRequest(f"Upload-Concat names upload {upload_id} more than once")
        ids.append(upload_id)
    return Concat("final", tuple(ids))


def format_concat(kind: str, part_urls: list[str]) -> str:
    """Format ``Upload-Concat`` for a HEAD response."""
    if kind == "partial":
        return "partial"
    return "final;" + " ".join(part_urls)


def http_date(moment: datetime) -> str:
    """RFC 9110 IMF-fixdate, as ``Upload-Expires`` requires: ``Wed, 25 Jun 2014 16:00:00 GMT``."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


@dataclass(frozen=True)
class ByteRange:
    """An inclusive byte range ``[start, end]`` of a stored upload."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


def parse_range(value: str | None, size: int) -> ByteRange | None:
    """Parse a single-range ``Range`` header against ``size`` bytes (RFC 9110 section 14).

    Returns ``None`` when the whole representation should be sent (no header, a syntax we
    ignore, or several ranges, which a server may answer with a full 200). Returns a range
    clipped to the size, or raises :class:`~flask_tus.core.errors.RangeNotSatisfiable`.
    """
    from .errors import RangeNotSatisfiable

    if value is None:
        return None
    match = _RANGE.fullmatch(value.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
        return ByteRange(max(size - suffix, 0), size - 1)
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or (last != "" and int(last) < start):
        raise RangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return ByteRange(start, end)
