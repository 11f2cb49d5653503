"""Upload ids: 128 random bits, and the one pattern every id is checked against."""

from __future__ import annotations

import re
import secrets

# 32 lowercase hex digits: exactly what new_id() makes. Nothing else may reach a path or query.
ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def new_id() -> str:
    """A fresh upload id carrying 128 bits from the OS's CSPRNG."""
    return secrets.token_hex(16)


def is_valid_id(value: str) -> bool:
    """True when ``value`` has the exact shape of an id made by :func:`new_id`."""
    return ID_PATTERN.fullmatch(value) is not None
