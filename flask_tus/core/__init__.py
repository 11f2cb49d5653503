"""The tus protocol, free of frameworks and I/O."""

from __future__ import annotations

from .handler import TusHandler
from .hooks import HookEvent, Hooks, RequestInfo
from .messages import Headers, TusRequest, TusResponse
from .settings import TusSettings
from .upload import Upload

__all__ = [
    "Headers",
    "HookEvent",
    "Hooks",
    "RequestInfo",
    "TusHandler",
    "TusRequest",
    "TusResponse",
    "TusSettings",
    "Upload",
]
