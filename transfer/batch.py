"""A batch: several small messages of one flow carried in one sealed envelope.

Why: for a 1 KiB message the per-envelope work dominates, not the bytes: an X25519 HPKE key
wrap at the sender and its unwrap at the receiver, an Ed25519 signature and its check, an
envelope file and its state moves (issue 8's profile: the key wrap alone is 16% of the
sender's time in a flood of small files). A batch pays those once for up to ``MAX_ITEMS``
messages. Each message inside keeps its own header, exactly the schema of an envelope header
(its own id, sequence number, name, size, SHA-256, approvals), so the receiver checks each one
on its own (replay, sequence, approvals, policy) and refuses one without refusing the others.

The container is an ordinary envelope (``docs/envelope.md``, unchanged) whose header says
``content_type: BATCH_CONTENT_TYPE``; it is sealed for the final gateway and signed by the
sender like any other, so everything in it is as authenticated as a single message's header
and body. Its plaintext, this module's format::

    MAGIC                       8 bytes  b"ZGBATCH\\x01"
    count                       u16      2..MAX_ITEMS
    count times:
        header length           u32      1..MAX_HEADER_LENGTH
        header                           canonical JSON of an envelope header
        body                             exactly header.size bytes

The outer header is derived from the inner ones (``container_header``): same version, flow,
sender, recipient, keys, classification and chunk size; sequence = the first message's. Every
inner header must agree with it on those fields, must not itself be a batch (no nesting), must
have an id of its own (distinct from the others and from the container's), and the sequences
must rise strictly. A body whose SHA-256 is not its header's is ``plaintext-mismatch``;
anything else wrong is ``malformed``. Sans-I/O: bytes in, bytes or views out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .envelope import MAX_HEADER_LENGTH, EnvelopeError, Header

__all__ = [
    "BATCH_CONTENT_TYPE",
    "MAGIC",
    "MAX_BATCH_BYTES",
    "MAX_ITEMS",
    "BatchItem",
    "container_header",
    "decode",
    "encode",
    "is_batch",
]

MAGIC = b"ZGBATCH\x01"
BATCH_CONTENT_TYPE = "application/vnd.zonegate.batch+v1"
#: At most this many messages in one container: enough to amortise the per-envelope work,
#: few enough that one refused container (a bad signature) loses little time to re-sending.
MAX_ITEMS = 256
#: At most this many bytes of bodies in one container: small messages only, so a container is
#: opened in memory and fits the link's single-frame path.
MAX_BATCH_BYTES = 1024 * 1024

_COUNT = struct.Struct(">H")
_HLEN = struct.Struct(">I")
#: The fields an inner header must share with its container.
_SHARED = (
    "version",
    "flow",
    "sender",
    "recipient",
    "chunk_size",
    "sender_key",
    "recipient_key",
    "classification",
)


@dataclass(frozen=True)
class BatchItem:
    """One message of a batch: its header and its body (a view into the container's bytes)."""

    header: Header
    body: memoryview


def is_batch(header: Header) -> bool:
    return header.content_type == BATCH_CONTENT_TYPE


def _malformed(detail: str) -> EnvelopeError:
    return EnvelopeError("malformed", f"batch: {detail}")


class _Checker:
    """The rules every message of a batch meets, in order; the same for encode and decode."""

    def __init__(self, like: Header, ids: set[str], last_seq: int) -> None:
        self.like, self.ids, self.last_seq, self.total = like, ids, last_seq, 0

    def header(self, index: int, header: Header) -> None:
        if is_batch(header):
            raise _malformed(f"message {index} is itself a batch")
        for name in _SHARED:
            if getattr(header, name) != getattr(self.like, name):
                raise _malformed(f"message {index}'s {name} differs from the batch's")
        if header.message_id in self.ids:
            raise _malformed(f"message {index}'s id {header.message_id} is used twice")
        if header.sequence <= self.last_seq:
            raise _malformed(f"message {index}'s sequence {header.sequence} does not rise")
        self.total += header.size
        if self.total > MAX_BATCH_BYTES:
            raise _malformed(f"bodies over {MAX_BATCH_BYTES} bytes: not a batch of small messages")
        self.ids.add(header.message_id)
        self.last_seq = header.sequence

    @staticmethod
    def body(index: int, header: Header, body: bytes | memoryview) -> None:
        if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), header.sha256):
            raise EnvelopeError(
                "plaintext-mismatch", f"batch: message {index}'s body is not its header's SHA-256"
            )


def encode(items: Sequence[tuple[Header, bytes | memoryview]]) -> bytes:
    """The container plaintext for ``items`` (header, body) in order.

    ``ValueError`` for what a caller must not ask for (too few or too many messages, bodies that
    do not match their headers, headers that cannot share one container): the sender builds
    batches from messages it has already checked, so this is a bug, not a refusal.
    """
    if not 2 <= len(items) <= MAX_ITEMS:
        raise ValueError(f"a batch holds 2..{MAX_ITEMS} messages, not {len(items)}")
    check = _Checker(items[0][0], set(), 0)
    parts = [MAGIC, _COUNT.pack(len(items))]
    for index, (header, body) in enumerate(items):
        if len(body) != header.size:
            raise ValueError(
                f"message {index}: body is {len(body)} bytes, its header says {header.size}"
            )
        try:
            check.header(index, header)
            check.body(index, header, body)
        except EnvelopeError as exc:
            raise ValueError(exc.detail) from None
        encoded = header.to_bytes()
        parts += [_HLEN.pack(len(encoded)), encoded, bytes(body)]
    return b"".join(parts)


def container_header(
    items: Sequence[Header], *, message_id: str, created: str, plaintext: bytes
) -> Header:
    """The envelope header of the container holding ``items`` (their headers), whose
    plaintext (``encode``) is ``plaintext``."""
    first = items[0]
    if message_id in {h.message_id for h in items}:
        raise ValueError("the container needs an id of its own")
    # Everything the messages share comes from the first one (encode checked they share it);
    # what is the container's own is set here.
    return dataclasses.replace(
        first,
        message_id=message_id,
        original_name=f"batch of {len(items)} messages",
        content_type=BATCH_CONTENT_TYPE,
        size=len(plaintext),
        sha256=hashlib.sha256(plaintext).hexdigest(),
        created=created,
        approvals=(),
        hops=(),
    )


def decode(data: bytes | bytearray | memoryview, outer: Header) -> list[BatchItem]:
    """The messages of a container opened under ``outer``; ``EnvelopeError`` for any fault.

    ``data`` is the plaintext ``open_envelope`` gave (already checked against ``outer.sha256``
    and authenticated by the signature); what is checked here is that it is a well-formed batch
    consistent with its envelope, so a sender's bug or a forged-but-signed container (a
    compromised sender key) cannot make the receiver take a message it would refuse alone.
    """
    if not is_batch(outer):
        raise _malformed(f"envelope content type is {outer.content_type!r}, not a batch")
    view = memoryview(data).cast("B")
    if len(view) != outer.size:
        raise _malformed(f"{len(view)} bytes, the envelope says {outer.size}")
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise _malformed("does not start with the batch magic")
    at = len(MAGIC)
    (count,) = _unpack(_COUNT, view, at, "count")
    at += _COUNT.size
    if not 2 <= count <= MAX_ITEMS:
        raise _malformed(f"count {count} is outside 2..{MAX_ITEMS}")
    items: list[BatchItem] = []
    check = _Checker(outer, {outer.message_id}, outer.sequence - 1)
    for index in range(count):
        (hlen,) = _unpack(_HLEN, view, at, f"message {index}'s header length")
        at += _HLEN.size
        if not 1 <= hlen <= MAX_HEADER_LENGTH or at + hlen > len(view):
            raise _malformed(f"message {index}'s header length {hlen} does not fit")
        header = Header.from_bytes(bytes(view[at : at + hlen]))  # malformed if not canonical
        at += hlen
        check.header(index, header)
        if index == 0 and header.sequence != outer.sequence:
            raise _malformed("the first message's sequence is not the envelope's")
        if at + header.size > len(view):
            raise _malformed(f"message {index}'s body of {header.size} bytes does not fit")
        body = view[at : at + header.size]
        at += header.size
        check.body(index, header, body)
        items.append(BatchItem(header, body))
    if at != len(view):
        raise _malformed(f"{len(view) - at} bytes after the last message")
    return items


def _unpack(fmt: struct.Struct, view: memoryview, at: int, what: str) -> tuple[int, ...]:
    if at + fmt.size > len(view):
        raise _malformed(f"ends inside {what}")
    return fmt.unpack_from(view, at)
