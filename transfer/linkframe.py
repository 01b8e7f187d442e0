"""Link framing: how one envelope file crosses a message link, as a sans-I/O state machine.

An envelope can be far larger than memory, so it crosses as a BEGIN frame, DATA frames of at most
`MAX_PAYLOAD` bytes and an END frame carrying the SHA-256 of the whole envelope. An envelope of at
most `MAX_PAYLOAD` bytes (most messages) crosses as one WHOLE frame instead: the BEGIN fields, the
envelope and its SHA-256 in one message, so a small message costs one send and one receive. The
link is one-way: nothing here ever produces a reply. The receiving side's `Reassembler` turns
frames into events and refuses anything out of order, oversized or unannounced; the thin socket
adapter (`zmqlink`) only moves bytes between the socket, this machine and the disk.

Every frame is a ZeroMQ multipart message whose first part is a 5-byte tag (docs/envelope.md,
"Link framing").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass

from .ids import is_message_id

__all__ = [
    "MAX_PAYLOAD",
    "Abort",
    "Begin",
    "Complete",
    "Data",
    "Heartbeat",
    "Reassembler",
    "Stray",
    "Whole",
    "begin_frame",
    "data_frame",
    "end_frame",
    "heartbeat_frame",
    "whole_frame",
]

TAG_BEGIN = b"ZGL1B"
TAG_DATA = b"ZGL1D"
TAG_END = b"ZGL1E"
TAG_HEARTBEAT = b"ZGL1H"
TAG_WHOLE = b"ZGL1W"
MAX_PAYLOAD = 1024 * 1024
_MAX_JSON = 4096
_OFFSET = struct.Struct(">Q")


def _begin_body(transfer: str, flow: str, sender: str, length: int, resend: bool) -> bytes:
    body = {"t": transfer, "flow": flow, "sender": sender, "length": length, "resend": resend}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def begin_frame(transfer: str, flow: str, sender: str, length: int, resend: bool) -> list[bytes]:
    """`transfer` is the message id: one envelope per message id, resends reuse it."""
    return [TAG_BEGIN, _begin_body(transfer, flow, sender, length, resend)]


def whole_frame(
    transfer: str, flow: str, sender: str, resend: bool, envelope: bytes, digest: bytes
) -> list[bytes]:
    """A whole envelope of at most MAX_PAYLOAD bytes in one frame: BEGIN, DATA and END at once."""
    body = _begin_body(transfer, flow, sender, len(envelope), resend)
    return [TAG_WHOLE, body, envelope, digest]


def data_frame(transfer: str, offset: int, payload: bytes | memoryview) -> list[bytes | memoryview]:
    return [TAG_DATA, bytes.fromhex(transfer), _OFFSET.pack(offset), payload]


def end_frame(transfer: str, digest: bytes) -> list[bytes]:
    return [TAG_END, bytes.fromhex(transfer), digest]


def heartbeat_frame(flow: str, sender: str, last_seq: int, sent_at: str) -> list[bytes]:
    body = {"flow": flow, "sender": sender, "last_seq": last_seq, "time": sent_at}
    return [TAG_HEARTBEAT, json.dumps(body, sort_keys=True, separators=(",", ":")).encode()]


@dataclass(frozen=True)
class Begin:
    transfer: str
    flow: str
    sender: str
    length: int
    resend: bool
    #: a transfer that was still open when this one began (the sender restarted mid-way)
    abandoned: str | None = None


@dataclass(frozen=True)
class Data:
    transfer: str
    offset: int
    payload: bytes | memoryview  # a view of the frame as received, for a large one


@dataclass(frozen=True)
class Complete:
    transfer: str
    length: int
    #: SHA-256 of the whole envelope as it arrived (checked against the END frame)
    digest: bytes = b""


@dataclass(frozen=True)
class Whole:
    """A complete envelope that came in one frame, its digest already checked."""

    transfer: str
    flow: str
    sender: str
    resend: bool
    payload: bytes
    digest: bytes
    #: a transfer that was still open when this one came (the sender restarted mid-way)
    abandoned: str | None = None


@dataclass(frozen=True)
class Abort:
    """The open transfer is broken: the adapter discards what it wrote for it."""

    transfer: str
    reason: str


@dataclass(frozen=True)
class Heartbeat:
    flow: str
    sender: str
    last_seq: int
    time: str


@dataclass(frozen=True)
class Stray:
    """A frame that belongs to no open transfer or cannot be parsed: counted, then dropped."""

    reason: str


Event = Begin | Data | Complete | Whole | Abort | Heartbeat | Stray


class Reassembler:
    """Receiving side of one flow's link: frames in, events out, strictly in order."""

    def __init__(self, flow: str, sender: str, max_length: int) -> None:
        self.flow = flow
        self.sender = sender
        self.max_length = max_length
        self._open: str | None = None
        self._length = 0
        self._received = 0
        self._hash: hashlib._Hash | None = hashlib.sha256()

    @property
    def open_transfer(self) -> str | None:
        return self._open

    def verified_end_to_end(self) -> None:
        """The open transfer goes to a reader that checks the envelope itself as it comes (each
        chunk's tag, the signature over all of it, its exact length): its END digest is then
        taken as the sender's claim (`Complete.digest`) instead of computed a second time."""
        self._hash = None

    def feed(self, frames: list[bytes]) -> list[Event]:
        if not frames:
            return [Stray("empty message")]
        tag = frames[0]
        if tag == TAG_DATA:
            return self._data(frames)
        if tag == TAG_BEGIN:
            return self._begin(frames)
        if tag == TAG_END:
            return self._end(frames)
        if tag == TAG_HEARTBEAT:
            return self._heartbeat(frames)
        if tag == TAG_WHOLE:
            return self._whole(frames)
        return [Stray("unknown frame tag")]

    def _json(self, frames: list[bytes], parts: int = 2) -> dict | None:
        if len(frames) != parts or len(frames[1]) > _MAX_JSON:
            return None
        try:
            body = json.loads(frames[1])
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: a few KiB of "[[[[" nest deeper than the decoder recurses; a
            # frame from the link must become a Stray, never an exception in the receiver loop.
            return None
        return body if isinstance(body, dict) else None

    def _announced(
        self, body: dict | None, what: str
    ) -> tuple[list[Event], tuple[str, str, str, int, bool, str | None] | None]:
        """Check a BEGIN (or WHOLE) body; a transfer still open is aborted by it."""
        if body is None:
            return [Stray(f"malformed {what} frame")], None
        t, flow, sender = body.get("t"), body.get("flow"), body.get("sender")
        length, resend = body.get("length"), body.get("resend")
        if not (
            is_message_id(t)
            and isinstance(length, int)
            and not isinstance(length, bool)
            and isinstance(resend, bool)
        ):
            return [Stray(f"malformed {what} frame")], None
        if flow != self.flow or sender != self.sender:
            return [Stray(f"{what} for flow {flow!r} from {sender!r} on this flow's link")], None
        events: list[Event] = []
        abandoned = self._open
        if abandoned is not None:
            events.append(Abort(abandoned, "a new transfer began before this one ended"))
            self._open = None
        if not 0 < length <= self.max_length:
            events.append(Stray(f"announced length {length} outside 1..{self.max_length}"))
            return events, None
        return events, (t, flow, sender, length, resend, abandoned)

    def _begin(self, frames: list[bytes]) -> list[Event]:
        events, fields = self._announced(self._json(frames), "BEGIN")
        if fields is None:
            return events
        t, flow, sender, length, resend, abandoned = fields
        self._open, self._length, self._received = t, length, 0
        self._hash = hashlib.sha256()
        events.append(Begin(t, flow, sender, length, resend, abandoned))
        return events

    def _whole(self, frames: list[bytes]) -> list[Event]:
        if len(frames) != 4 or len(frames[3]) != 32:
            return [Stray("malformed WHOLE frame")]
        events, fields = self._announced(self._json(frames, parts=4), "WHOLE")
        if fields is None:
            return events
        t, flow, sender, length, resend, abandoned = fields
        payload, digest = frames[2], frames[3]
        if len(payload) != length or length > MAX_PAYLOAD:
            return [*events, Abort(t, f"WHOLE of {len(payload)} bytes announced {length}")]
        if not hmac.compare_digest(hashlib.sha256(payload).digest(), digest):
            return [*events, Abort(t, "envelope digest does not match its WHOLE frame")]
        return [*events, Whole(t, flow, sender, resend, bytes(payload), bytes(digest), abandoned)]

    def _tid(self, raw: bytes) -> str | None:
        return raw.hex() if len(raw) == 16 else None

    def _data(self, frames: list[bytes]) -> list[Event]:
        if len(frames) != 4 or len(frames[2]) != 8:
            return [Stray("malformed DATA frame")]
        tid = self._tid(frames[1])
        if tid is None or tid != self._open:
            return [Stray("DATA for a transfer that is not open")]
        (offset,) = _OFFSET.unpack(frames[2])
        payload = frames[3]
        if offset != self._received:
            return self._abort(f"DATA at offset {offset}, expected {self._received}")
        if len(payload) > MAX_PAYLOAD or self._received + len(payload) > self._length:
            return self._abort("DATA beyond the announced length")
        self._received += len(payload)
        if self._hash is not None:
            self._hash.update(payload)
        return [Data(tid, offset, payload)]

    def _end(self, frames: list[bytes]) -> list[Event]:
        if len(frames) != 3 or len(frames[2]) != 32:
            return [Stray("malformed END frame")]
        tid = self._tid(frames[1])
        if tid is None or tid != self._open:
            return [Stray("END for a transfer that is not open")]
        if self._received != self._length:
            return self._abort(f"END after {self._received} of {self._length} bytes")
        if self._hash is not None and not hmac.compare_digest(self._hash.digest(), frames[2]):
            return self._abort("envelope digest does not match its END frame")
        self._open = None
        return [Complete(tid, self._length, frames[2])]

    def _heartbeat(self, frames: list[bytes]) -> list[Event]:
        body = self._json(frames)
        if body is None:
            return [Stray("malformed HEARTBEAT frame")]
        flow, sender, last_seq, t = (body.get(k) for k in ("flow", "sender", "last_seq", "time"))
        if flow != self.flow or sender != self.sender:
            return [Stray("HEARTBEAT for another flow")]
        if not isinstance(last_seq, int) or isinstance(last_seq, bool) or not isinstance(t, str):
            return [Stray("malformed HEARTBEAT frame")]
        return [Heartbeat(flow, sender, last_seq, t[:64])]

    def _abort(self, reason: str) -> list[Event]:
        tid = self._open
        self._open = None
        return [Abort(tid or "", reason)]
