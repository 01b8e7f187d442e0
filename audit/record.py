"""The audit record: its schema, its canonical bytes and its hash.

One record is one line of canonical JSON. Canonical means exactly one byte sequence per record
(sorted keys, no whitespace, UTF-8 rather than \\u escapes), so that a verifier can re-serialise
what it parsed and insist on identical bytes: a hand edit that keeps the JSON valid but changes its
spelling (spaces, key order, escapes, duplicate keys) is caught without trusting the parser.

Each record carries ``prev``, the hash of the record before it, and ``hash``, a domain-separated
SHA-256 over its own canonical bytes without the ``hash`` key. Editing, deleting, inserting or
reordering a record therefore breaks the chain at a line that ``verify`` can name. What the chain
alone cannot show is the loss or rewriting of the *tail* of the log; signed checkpoints (a later
issue) anchor that.

This module is pure (no I/O) so that ``log`` (append) and ``verify`` share one definition of a
valid record and cannot drift apart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

#: Prepended to the canonical bytes before hashing, so that an audit record hash can never be
#: confused with (or replayed as) a SHA-256 computed over the same bytes for another purpose.
HASH_DOMAIN = b"zonegate/audit/v1\n"

#: ``prev`` of the first record: there is no record before it.
GENESIS_HASH = "0" * 64

#: A record longer than this is refused by ``append`` and flagged by ``verify``. It bounds the
#: memory a verifier spends on one line (a hostile file could be one endless line) and the
#: backward scan ``append`` makes to find the last record.
MAX_RECORD_BYTES = 65536

#: Extra keyword fields per record: enough for context, not a second payload channel.
MAX_EXTRA_FIELDS = 32

#: The fixed vocabulary. A free-form event name would make the log impossible to search and
#: reconcile reliably, so an unknown one is a programming error (``ValueError``).
EVENTS: frozenset[str] = frozenset(
    {
        "claimed",
        "received",
        "checked",
        "accepted",
        "quarantined",
        "approved",
        "rejected",
        "sealed",
        "sent",
        "resent",
        "received-on-link",
        "verified",
        "delivered",
        "relayed",
        "duplicate",
        "replay",
        "gap",
        "expired",
        "corrupt",
        "recovered",
        "config-changed",
        "key-changed",
        "agent-started",
        "agent-stopped",
        "audit-verified",
        "link-up",
        "link-down",
        # the SFTP drop server and quarantine tools (issue 3)
        "login",
        "login-refused",
        "request-refused",
        "upload-aborted",
        "released",
        "purged",
    }
)

OUTCOMES: frozenset[str] = frozenset({"ok", "refused", "error", "info"})

#: Fields allowed inside ``message`` (strings or integers only).
MESSAGE_FIELDS: frozenset[str] = frozenset(
    {"id", "flow", "seq", "sha256", "size", "name", "system", "path"}
)

#: Fields allowed inside ``who`` (strings only).
WHO_FIELDS: frozenset[str] = frozenset({"system", "person", "role"})

#: Top-level keys every record has; ``extra`` is the one optional key.
RECORD_FIELDS: tuple[str, ...] = (
    "seq",
    "time",
    "gateway",
    "agent",
    "zone",
    "event",
    "message",
    "outcome",
    "reason",
    "who",
    "prev",
    "hash",
)
_REQUIRED = frozenset(RECORD_FIELDS)
_ALLOWED = _REQUIRED | {"extra"}

#: Substrings that make a field name look like it carries key material. Names are checked
#: because values cannot be recognised reliably; a caller who wants to log a key's identity uses
#: a neutral name such as ``fingerprint``.
FORBIDDEN_NAME_PARTS: tuple[str, ...] = ("key", "secret", "password")

#: Substrings that betray key material in a value whatever its field is called (PEM armour).
_FORBIDDEN_VALUE_PARTS: tuple[str, ...] = ("-----BEGIN ", "PRIVATE KEY")

# One encoder for every call: json.dumps would build a new one each time, and verify calls this
# twice per record. Same settings as json.dumps(obj, sort_keys=True, separators=(",", ":"),
# ensure_ascii=False).
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def canonical_bytes(obj: Mapping[str, Any]) -> bytes:
    """Serialise ``obj`` the one way a record may be spelt (without the trailing newline).

    ``ensure_ascii=False`` keeps non-ASCII names (Chinese file names are common here) readable
    in the log; ``allow_nan=False`` because NaN is not JSON and has no single spelling.
    """
    return _ENCODER.encode(obj).encode("utf-8")


def record_hash(fields: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a record: domain tag + canonical bytes of every field except ``hash``."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(HASH_DOMAIN + canonical_bytes(body)).hexdigest()


def hashes_equal(a: str, b: str) -> bool:
    """Compare two hex hashes in constant time, so timing reveals nothing about a stored hash."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``: fixed width, so it also sorts as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now() -> str:
    """The current time as a record ``time`` value."""
    return format_time(datetime.now(UTC))


def _is_int(value: object) -> bool:
    # bool is a subclass of int, but True in a size or seq field is a bug, not a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value_text(where: str, value: str) -> str | None:
    for part in _FORBIDDEN_VALUE_PARTS:
        if part in value:
            return f"{where} looks like key material ({part.strip()!r}); keys never enter logs"
    return None


def _check_message(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return "message must be an object or null"
    for k, v in value.items():
        if k not in MESSAGE_FIELDS:
            return f"message has unknown field {k!r} (allowed: {', '.join(sorted(MESSAGE_FIELDS))})"
        if isinstance(v, str):
            if problem := _check_value_text(f"message.{k}", v):
                return problem
        elif not _is_int(v):
            return f"message.{k} must be a string or an integer"
    return None


def _check_who(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return "who must be an object or null"
    for k, v in value.items():
        if k not in WHO_FIELDS:
            return f"who has unknown field {k!r} (allowed: {', '.join(sorted(WHO_FIELDS))})"
        if not isinstance(v, str):
            return f"who.{k} must be a string"
        if problem := _check_value_text(f"who.{k}", v):
            return problem
    return None


def check_extra_name(name: object) -> str | None:
    """Why ``name`` may not be an extra field name, or None if it may."""
    if not isinstance(name, str) or not name:
        return "extra field names must be non-empty strings"
    lowered = name.lower()
    for part in FORBIDDEN_NAME_PARTS:
        if part in lowered:
            return f"extra field {name!r} looks like it carries key material; refused"
    return None


def _check_extra(value: object) -> str | None:
    if not isinstance(value, Mapping):
        return "extra must be an object"
    if len(value) > MAX_EXTRA_FIELDS:
        return f"extra has {len(value)} fields, at most {MAX_EXTRA_FIELDS} allowed"
    for k, v in value.items():
        if problem := check_extra_name(k):
            return problem
        if isinstance(v, str):
            if problem := _check_value_text(f"extra.{k}", v):
                return problem
        elif not (isinstance(v, bool) or _is_int(v)):
            return f"extra.{k} must be a string, an integer or a boolean"
    return None


def check_fields(obj: Mapping[str, Any], *, require_hash: bool = True) -> str | None:
    """Why ``obj`` is not a well-formed record, or None if it is.

    Checks the schema and types only; the chain (seq order, prev, hash value) is the caller's,
    because it needs the neighbouring records.
    """
    keys = set(obj)
    required = _REQUIRED if require_hash else _REQUIRED - {"hash"}
    if missing := required - keys:
        return f"missing field(s): {', '.join(sorted(missing))}"
    allowed = _ALLOWED if require_hash else _ALLOWED - {"hash"}
    if unknown := keys - allowed:
        return f"unknown field(s): {', '.join(sorted(unknown))}"
    seq = obj["seq"]
    if not _is_int(seq) or seq < 1:
        return "seq must be a positive integer"
    time = obj["time"]
    if not isinstance(time, str) or not _TIME.fullmatch(time):
        return "time must be RFC 3339 UTC with microseconds, e.g. 2026-11-25T09:41:56.123456Z"
    try:
        datetime.fromisoformat(time[:-1])
    except ValueError:
        return f"time {time!r} is not a real date and time"
    for name in ("gateway", "agent"):
        if not isinstance(obj[name], str) or not obj[name]:
            return f"{name} must be a non-empty string"
    if obj["zone"] is not None and (not isinstance(obj["zone"], str) or not obj["zone"]):
        return "zone must be a non-empty string or null"
    if obj["event"] not in EVENTS:
        return f"event {obj['event']!r} is not in the audit vocabulary"
    if obj["outcome"] not in OUTCOMES:
        return f"outcome {obj['outcome']!r} is not one of {', '.join(sorted(OUTCOMES))}"
    reason = obj["reason"]
    if reason is not None:
        if not isinstance(reason, str):
            return "reason must be a string or null"
        if problem := _check_value_text("reason", reason):
            return problem
    if problem := _check_message(obj["message"]):
        return problem
    if problem := _check_who(obj["who"]):
        return problem
    if "extra" in obj and (problem := _check_extra(obj["extra"])):
        return problem
    for name in ("prev", "hash") if require_hash else ("prev",):
        if not isinstance(obj[name], str) or not _HEX64.fullmatch(obj[name]):
            return f"{name} must be 64 lowercase hex digits"
    return None


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if mapping is None else MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class AuditRecord:
    """One verified-shape audit record, as appended or read back.

    ``message``, ``who`` and ``extra`` are read-only mappings, so a record handed to a caller
    cannot be mutated into something that no longer matches its hash.
    """

    seq: int
    time: str
    gateway: str
    agent: str
    zone: str | None
    event: str
    message: Mapping[str, str | int] | None
    outcome: str
    reason: str | None
    who: Mapping[str, str] | None
    prev: str
    hash: str
    extra: Mapping[str, str | int | bool]

    def to_dict(self) -> dict[str, Any]:
        """The record as the JSON object written to the log (``extra`` omitted when empty)."""
        out: dict[str, Any] = {
            "seq": self.seq,
            "time": self.time,
            "gateway": self.gateway,
            "agent": self.agent,
            "zone": self.zone,
            "event": self.event,
            "message": None if self.message is None else dict(self.message),
            "outcome": self.outcome,
            "reason": self.reason,
            "who": None if self.who is None else dict(self.who),
            "prev": self.prev,
            "hash": self.hash,
        }
        if self.extra:
            out["extra"] = dict(self.extra)
        return out

    def line(self) -> bytes:
        """The exact bytes of this record's line in the log, newline included."""
        return canonical_bytes(self.to_dict()) + b"\n"

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> AuditRecord:
        """Build a record from a parsed line; ``ValueError`` if the schema or hash is wrong."""
        if problem := check_fields(obj):
            raise ValueError(problem)
        if not hashes_equal(record_hash(obj), obj["hash"]):
            raise ValueError("record hash does not match its contents")
        return cls(
            seq=obj["seq"],
            time=obj["time"],
            gateway=obj["gateway"],
            agent=obj["agent"],
            zone=obj["zone"],
            event=obj["event"],
            message=_frozen(obj["message"]),
            outcome=obj["outcome"],
            reason=obj["reason"],
            who=_frozen(obj["who"]),
            prev=obj["prev"],
            hash=obj["hash"],
            extra=MappingProxyType(dict(obj.get("extra") or {})),
        )
