"""Safe download headers for GET (the de-facto rule tusd and @tus/server follow).

A client chose the ``filetype`` and ``filename`` metadata, so neither may make a browser run
script from this origin: only well-formed types outside a deny list are echoed, only media and
plain text are shown inline, and the file name is reduced to harmless characters.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
# Types a browser would render as active content from our origin.
_ACTIVE = {
    "text/html",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
    "text/javascript",
    "application/javascript",
    "application/ecmascript",
    "text/ecmascript",
    "application/x-javascript",
    "text/css",
    "application/pdf",
    "text/xsl",
    "application/wasm",
}
_INLINE_PREFIXES = ("image/", "audio/", "video/")
_INLINE_EXACT = {"text/plain"}
_FALLBACK = "application/octet-stream"


def safe_content_type(filetype: str | None) -> str:
    """``filetype`` when it is a well-formed, passive media type; otherwise octet-stream."""
    if not filetype:
        return _FALLBACK
    candidate = filetype.split(";", 1)[0].strip().lower()
    if not _MEDIA_TYPE.fullmatch(candidate) or candidate in _ACTIVE:
        return _FALLBACK
    if candidate.endswith(("+xml", "+html")):
        return _FALLBACK
    return candidate


def safe_filename(name: str | None) -> str:
    """A file name with no path, no control or quote characters, at most 200 characters."""
    if not name:
        return "download"
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in '";\r\n')
    name = name.strip(" .")
    return name[:200] or "download"


def content_headers(metadata: dict[str, str | None]) -> dict[str, str]:
    """``Content-Type``, ``Content-Disposition`` and ``nosniff`` for a finished upload."""
    content_type = safe_content_type(metadata.get("filetype"))
    inline = content_type.startswith(_INLINE_PREFIXES) or content_type in _INLINE_EXACT
    filename = safe_filename(metadata.get("filename"))
    ascii_name = filename.encode("ascii", "replace").decode("ascii").replace("?", "_")
    disposition = f'{"inline" if inline else "attachment"}; filename="{ascii_name}"'
    if ascii_name != filename:
        # RFC 6266 / RFC 8187: the exact name for clients that read filename*.
        disposition += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return {
        "Content-Type": content_type,
        "Content-Disposition": disposition,
        "X-Content-Type-Options": "nosniff",
    }
