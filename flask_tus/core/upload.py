"""The upload record: everything the metadata store keeps about one upload."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .headers import decode_metadata_text, parse_metadata


@dataclass
class Upload:
    """One upload's record.

    ``length`` is ``None`` while deferred (creation-defer-length). ``offset`` counts bytes
    committed to storage. ``metadata_header`` is ``Upload-Metadata`` exactly as received, so HEAD
    can return it unchanged. ``concat`` is ``"partial"``, ``"final"`` or ``None``; a final upload
    lists its parts' ids in ``parts``. ``completed_at`` is set once, by the request that finished
    the upload. ``md5`` is the hex digest of a finished upload once computed.
    """

    id: str
    length: int | None
    created_at: datetime
    offset: int = 0
    metadata_header: str | None = None
    expires_at: datetime | None = None
    concat: str | None = None
    parts: tuple[str, ...] = ()
    completed_at: datetime | None = None
    md5: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_deferred(self) -> bool:
        return self.length is None

    @property
    def is_complete(self) -> bool:
        return self.completed_at is not None

    @property
    def metadata(self) -> dict[str, str | None]:
        """Metadata decoded to text (UTF-8, undecodable bytes replaced)."""
        return decode_metadata_text(parse_metadata(self.metadata_header))

    @property
    def raw_metadata(self) -> dict[str, bytes | None]:
        """Metadata values as the raw bytes the client encoded."""
        return parse_metadata(self.metadata_header)

    def is_expired(self, now: datetime, *, expire_completed: bool = False) -> bool:
        """True once ``expires_at`` has passed; a finished upload only if ``expire_completed``."""
        if self.expires_at is None or now < self.expires_at:
            return False
        return expire_completed or not self.is_complete

    def copy(self, **changes: Any) -> Upload:
        """A shallow copy with ``changes`` applied (records are treated as values)."""
        return dataclasses.replace(self, **changes)

    def fields(self) -> dict[str, Any]:
        """Every field but ``id``, as a database row or document keeps them: timestamps as
        they are, ``parts`` as a list."""
        return {
            "length": self.length,
            "offset": self.offset,
            "metadata_header": self.metadata_header,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "concat": self.concat,
            "parts": list(self.parts),
            "completed_at": self.completed_at,
            "md5": self.md5,
            "extra": self.extra,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (timestamps as ISO 8601 strings with their offset)."""
        data = {"id": self.id, **self.fields()}
        for name in ("created_at", "expires_at", "completed_at"):
            data[name] = _iso(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Upload:
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=data["id"],
            length=data["length"],
            offset=data["offset"],
            metadata_header=data.get("metadata_header"),
            created_at=datetime.fromisoformat(data["created_at"]),
            expires_at=_from_iso(data.get("expires_at")),
            concat=data.get("concat"),
            parts=tuple(data.get("parts") or ()),
            completed_at=_from_iso(data.get("completed_at")),
            md5=data.get("md5"),
            extra=dict(data.get("extra") or {}),
        )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
