"""Message ids: 128 bits, time-ordered so that a directory listing sorts by age."""

from __future__ import annotations

import re
import secrets
import time

_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def new_message_id() -> str:
    """48 bits of milliseconds then 80 random bits, as 32 lowercase hex digits (UUIDv7-like)."""
    ms = time.time_ns() // 1_000_000
    return f"{ms & (2**48 - 1):012x}{secrets.token_hex(10)}"


def is_message_id(value: object) -> bool:
    """True for a well-formed id; ids become directory names, so nothing else is accepted."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None
