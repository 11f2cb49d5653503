"""flask-tus: an async tus 1.0.0 resumable upload server for Flask."""

from __future__ import annotations

from .core.errors import HookRejected, TusError
from .core.hooks import HookEvent, RequestInfo
from .core.settings import TusSettings
from .core.upload import Upload
from .extension import FlaskTus

__all__ = [
    "FlaskTus",
    "HookEvent",
    "HookRejected",
    "RequestInfo",
    "TusError",
    "TusSettings",
    "Upload",
]
