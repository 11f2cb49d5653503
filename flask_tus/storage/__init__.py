"""Where upload bytes go, and the host-local upload locks."""

from __future__ import annotations

from .local import LocalStorage
from .locks import FileLocker

__all__ = ["FileLocker", "LocalStorage"]
