"""The floor for ``bench_wsgi.py``: the least a Python WSGI app can do to store a tus-like upload.

``POST /files/`` creates an empty file with a random name in ``$TUS_UPLOAD_DIR`` and answers 201
with ``Location``. ``PATCH /files/<name>`` writes the body (read from ``wsgi.input`` in 1 MiB
pieces, never past ``CONTENT_LENGTH``) at the ``Upload-Offset`` header's offset and answers 204
with the new ``Upload-Offset``. ``HEAD /files/<name>`` answers 200 with ``Upload-Offset`` = the
file's size. No validation, no records, no fsync.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from typing import Any

PIECE = 2**20
PREFIX = "/files/"
UPLOAD_DIR = os.environ.get("TUS_UPLOAD_DIR") or "."

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "")
    if method == "POST" and path in (PREFIX, PREFIX.rstrip("/")):
        name = secrets.token_hex(16)
        with open(os.path.join(UPLOAD_DIR, name), "xb"):
            pass
        start_response("201 Created", [("Location", PREFIX + name), ("Content-Length", "0")])
        return [b""]
    name = path[len(PREFIX) :]
    # Only a name this app could have made: keeps the request path out of the filesystem.
    if method == "HEAD" and path.startswith(PREFIX) and name.isalnum():
        try:
            size = os.stat(os.path.join(UPLOAD_DIR, name)).st_size
        except FileNotFoundError:
            start_response("404 Not Found", [("Content-Length", "0")])
            return []
        start_response("200 OK", [("Upload-Offset", str(size)), ("Content-Length", "0")])
        return []
    if method == "PATCH" and path.startswith(PREFIX) and name.isalnum():
        offset = int(environ.get("HTTP_UPLOAD_OFFSET") or 0)
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"]
        with open(os.path.join(UPLOAD_DIR, name), "r+b") as file:
            file.seek(offset)
            while remaining > 0:
                piece = body.read(min(PIECE, remaining))
                if not piece:
                    break
                file.write(piece)
                offset += len(piece)
                remaining -= len(piece)
        start_response("204 No Content", [("Upload-Offset", str(offset))])
        return []
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]
