"""Hop records: how a relayed envelope carries the signed path it took (``docs/relay.md``).

A relay cannot open an envelope (it is sealed for the final receiver's X25519 key) and must not
change it (the originator's Ed25519 signature covers every byte). So it forwards the inner
envelope byte for byte behind a small prefix, the *hop wrapper*::

    magic  b"ZGHOP\\x00\\x01\\n"   8 bytes
    hlen   uint32 big-endian       length of the hop list, 2 .. 65536
    hops   canonical JSON list of hop records, oldest first
    inner  the originator's envelope, unchanged, to end of file

Each hop record is signed by the relay that wrote it, over the message's id, flow and sequence,
the SHA-256 of the whole inner envelope, the gateway it came from and the one it goes to, and the
SHA-256 of the previous hop record (signature included), so the records form a chain: none can be
dropped, reordered, replayed onto another message or forged without a relay's signing key.

Sans-I/O in spirit: functions take file objects; nothing opens files or sockets, nothing logs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import envelope as env

__all__ = [
    "HOP_MAGIC",
    "MAX_HOPS",
    "HopError",
    "check_hops",
    "envelope_digest",
    "make_hop",
    "read_wrapper",
    "record_digest",
    "summary",
    "write_wrapper",
]

HOP_MAGIC = b"ZGHOP\x00\x01\n"
HOP_CONTEXT = b"zonegate/hop/v1/sig"
MAX_HOPS = 15
MAX_HOPS_LENGTH = 65536
_PREAMBLE = struct.Struct(">8sI")
_KEYS = frozenset(
    {"v", "gateway", "key", "from", "to", "id", "flow", "seq", "envelope", "prev", "at", "sig"}
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")

KeyLookup = Callable[[str, str], Ed25519PublicKey | None]


class HopError(Exception):
    """Why a hop wrapper was refused. ``reason`` is ``malformed`` (the wrapper's structure) or
    ``bad-hop`` (a record that does not verify or does not match the configured route)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def _canonical(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def record_digest(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of a whole hop record, signature included: what the next record's
    ``prev`` names, so the chain cannot be cut or reordered."""
    return hashlib.sha256(_canonical(record)).hexdigest()


def _signed_part(record: dict[str, Any]) -> bytes:
    return HOP_CONTEXT + _canonical({k: v for k, v in record.items() if k != "sig"})


def envelope_digest(src: BinaryIO, offset: int) -> str:
    """SHA-256 (hex) of the bytes from ``offset`` to end of file: the inner envelope."""
    src.seek(offset)
    h = hashlib.sha256()
    while block := src.read(4 << 20):
        h.update(block)
    return h.hexdigest()


def read_wrapper(src: BinaryIO) -> tuple[tuple[dict[str, Any], ...], int]:
    """The hop records and the offset of the inner envelope.

    A file that starts with the envelope magic has no hops (it came straight from the
    originator); anything else that is not a well-formed hop wrapper is ``malformed``.
    """
    start = src.tell()
    head = src.read(_PREAMBLE.size)
    if len(head) >= len(env.MAGIC) and hmac.compare_digest(head[: len(env.MAGIC)], env.MAGIC):
        src.seek(start)
        return (), start
    if len(head) != _PREAMBLE.size:
        raise HopError("malformed", "file is too short for a hop wrapper")
    magic, hlen = _PREAMBLE.unpack(head)
    if not hmac.compare_digest(magic, HOP_MAGIC):
        raise HopError("malformed", "neither an envelope nor a hop wrapper (bad magic)")
    if not 2 <= hlen <= MAX_HOPS_LENGTH:
        raise HopError("malformed", f"hop list length {hlen} is outside 2..{MAX_HOPS_LENGTH}")
    data = src.read(hlen)
    if len(data) != hlen:
        raise HopError("malformed", "hop wrapper is truncated")
    try:
        hops = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HopError("malformed", "hop list is not valid UTF-8 JSON") from None
    if not isinstance(hops, list) or not 1 <= len(hops) <= MAX_HOPS:
        raise HopError("malformed", f"hop list must be a list of 1..{MAX_HOPS} records")
    if not hmac.compare_digest(_canonical(hops), data):
        raise HopError("malformed", "hop list is not in canonical JSON form")
    for record in hops:
        if not isinstance(record, dict) or record.keys() != _KEYS:
            raise HopError("malformed", f"a hop record must have exactly: {sorted(_KEYS)}")
    return tuple(hops), start + _PREAMBLE.size + hlen


def write_wrapper(dst: BinaryIO, hops: tuple[dict[str, Any], ...], inner: BinaryIO) -> int:
    """Write a hop wrapper: the records, then ``inner`` (positioned at the envelope) copied
    unchanged to its end. Returns the bytes written."""
    data = _canonical(list(hops))
    if len(data) > MAX_HOPS_LENGTH or len(hops) > MAX_HOPS:
        raise HopError("malformed", "too many hop records")
    dst.write(_PREAMBLE.pack(HOP_MAGIC, len(data)))
    dst.write(data)
    written = _PREAMBLE.size + len(data)
    while block := inner.read(4 << 20):
        dst.write(block)
        written += len(block)
    return written


def make_hop(
    signing_key: Ed25519PrivateKey,
    *,
    gateway: str,
    came_from: str,
    goes_to: str,
    header: env.Header,
    envelope_sha256: str,
    previous: tuple[dict[str, Any], ...],
    at: str,
) -> dict[str, Any]:
    """This relay's signed record for one forwarded envelope (appended after ``previous``)."""
    record: dict[str, Any] = {
        "v": 1,
        "gateway": gateway,
        "key": env.key_id(signing_key.public_key()),
        "from": came_from,
        "to": goes_to,
        "id": header.message_id,
        "flow": header.flow,
        "seq": header.sequence,
        "envelope": envelope_sha256,
        "prev": record_digest(previous[-1]) if previous else "",
        "at": at,
    }
    record["sig"] = signing_key.sign(_signed_part(record)).hex()
    return record


def check_hops(
    hops: tuple[dict[str, Any], ...],
    header: env.Header,
    envelope_sha256: str,
    route: tuple[str, ...],
    lookup: KeyLookup,
) -> None:
    """Check the records against the route *this gateway's config* says the flow takes.

    ``route`` is the originator, the relays and the gateway holding the file now; record i must
    be by ``route[i+1]``, from ``route[i]``, to ``route[i+2]``, signed by that gateway's
    configured key, about this very envelope, and chained to record i-1. Raises ``HopError``.
    """
    expected = len(route) - 2
    if len(hops) != expected:
        raise HopError("bad-hop", f"{len(hops)} hop record(s), the route has {expected} relay(s)")
    prev = ""
    for i, record in enumerate(hops):
        who = route[i + 1]
        if (
            record.get("v") != 1
            or record.get("gateway") != who
            or record.get("from") != route[i]
            or record.get("to") != route[i + 2]
        ):
            raise HopError("bad-hop", f"hop record {i} does not match the route via {who!r}")
        same = (
            record.get("id") == header.message_id
            and record.get("flow") == header.flow
            and record.get("seq") == header.sequence
            and isinstance(record.get("envelope"), str)
            and hmac.compare_digest(record["envelope"], envelope_sha256)
        )
        if not same:
            raise HopError("bad-hop", f"hop record {i} by {who!r} is about another envelope")
        if not isinstance(record.get("prev"), str) or not hmac.compare_digest(record["prev"], prev):
            raise HopError("bad-hop", f"hop record {i} by {who!r} breaks the chain")
        key_name = record.get("key")
        key = lookup(who, key_name) if isinstance(key_name, str) else None
        if key is None or not hmac.compare_digest(env.key_id(key), key_name):
            raise HopError("bad-hop", f"no trusted key {key_name!r} for relay {who!r}")
        sig = record.get("sig")
        if not isinstance(sig, str) or not _HEX128.fullmatch(sig):
            raise HopError("bad-hop", f"hop record {i} by {who!r} has no valid signature field")
        try:
            key.verify(bytes.fromhex(sig), _signed_part(record))
        except InvalidSignature:
            detail = f"hop record {i} signature by {who!r} does not verify"
            raise HopError("bad-hop", detail) from None
        if not isinstance(record.get("at"), str) or not _HEX64.fullmatch(record["envelope"]):
            raise HopError("bad-hop", f"hop record {i} by {who!r} is malformed")
        prev = record_digest(record)


def summary(hops: tuple[dict[str, Any], ...]) -> str:
    """What the audit log keeps of the hops, oldest first: who, from where, to where, when, with
    which key, as one JSON text (audit fields are scalars, so the list travels as a string)."""
    return json.dumps(
        [
            {
                "gateway": h["gateway"],
                "from": h["from"],
                "to": h["to"],
                "at": h["at"],
                "key": h["key"],
            }
            for h in hops
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
