"""Metadata stores: where upload records (offsets, lengths, metadata, expiry) are kept.

One module per backend. Drivers of optional backends are imported only by their own module,
so importing this package never needs them.
"""

from __future__ import annotations

from .json_store import JsonFileStore

__all__ = ["JsonFileStore"]
