"""The UDP link's datagram format, sans-I/O: build datagrams, and parse them strictly.

Why a format of its own: a one-way link cannot negotiate, so every datagram must say on its own
which message it belongs to, where in the message its symbol goes and how long the message is.
Any datagram of a message is as good as any other (no single "end" packet decides completion).
The parser refuses (raises `PacketError`) anything that does not fit exactly: a short or long
datagram, an unknown magic or kind, a block index past the end, lengths that disagree. It never
raises anything else, whatever bytes arrive (tested with hypothesis).

DATA datagram: fixed header, then one RaptorQ packet (4-byte payload id + one symbol).
HEARTBEAT datagram: fixed header, flow and sender names, then the sender's most recent
(message number, transfer id) pairs so a receiver can name a message it saw nothing of.
docs/udp.md describes every field.

Every DATA datagram of one block in one round carries the same 57-byte header (only the payload
id differs), which lets the sender hand the kernel one header buffer per datagram of a GSO send
and lets the receiver recognise a datagram of the block it is filling by a byte comparison.
The limits on symbol and block size are those under which RaptorQ (RFC 6330 with the raptorq
crate's default parameters) keeps a block as one source block of one sub-block: source symbol
`i` is then exactly bytes `i*symbol .. (i+1)*symbol` of the block, and a receiver that got every
source symbol has the block without decoding anything (tests/test_udp_unit.py checks this).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "DATA_HEADER",
    "MAX_BLOCK",
    "MAX_RECENT",
    "MAX_SYMBOLS",
    "RQ_ID",
    "SYMBOL_ALIGN",
    "DataPacket",
    "HeartbeatPacket",
    "PacketError",
    "data_datagram",
    "data_header",
    "heartbeat_datagram",
    "parse",
]

MAGIC = b"ZGU1"
KIND_DATA = 1
KIND_HEARTBEAT = 2
FLAG_RESEND = 1  # the sender agent re-sends a message it may have lost (restart, window)
FLAG_REPEAT = 2  # a repeat round of the transport's own repeat policy
_FLAGS = FLAG_RESEND | FLAG_REPEAT
#: magic, kind, flags, session, message number (the sender's position within its session)
_COMMON = struct.Struct(">4sBB8sQ")
#: transfer id, envelope length, block size, block index, symbol size, round
_DATA = struct.Struct(">16sQIIHB")
#: flow's last sequence number, heartbeat interval in ms, name lengths, number of recent pairs
_BEAT = struct.Struct(">QIBBB")
_PAIR = struct.Struct(">Q16s")
MAX_RECENT = 32
#: bytes before the RaptorQ packet in a DATA datagram (common + data header)
DATA_HEADER = _COMMON.size + _DATA.size
RQ_ID = 4  # RaptorQ payload id: source block number (8 bits) + encoding symbol id (24 bits)
MAX_LENGTH = 1 << 48
#: RaptorQ keeps a block this large as one source block with one sub-block (see above)
MAX_BLOCK = 8 * 1024 * 1024
#: source symbols per block at most (8 MiB of 256-byte symbols)
MAX_SYMBOLS = 32768
#: RaptorQ's symbol alignment: a symbol size that is not a multiple is rounded down by the codec
SYMBOL_ALIGN = 8


class PacketError(ValueError):
    """A datagram that is not a well-formed packet of this format: counted, then dropped."""


@dataclass(frozen=True)
class DataPacket:
    session: bytes
    msgno: int
    resend: bool
    repeat: bool
    transfer: str
    length: int
    block_size: int
    block: int
    symbol: int
    round: int
    #: the RaptorQ packet (payload id + symbol) for the block's decoder
    payload: bytes

    @property
    def blocks(self) -> int:
        return -(-self.length // self.block_size)

    @property
    def block_length(self) -> int:
        return min(self.block_size, self.length - self.block * self.block_size)


@dataclass(frozen=True)
class HeartbeatPacket:
    session: bytes
    #: the highest message number the sender has finished sending (all rounds), 0 for none
    position: int
    flow: str
    sender: str
    last_seq: int
    interval_ms: int
    #: (message number, transfer id) of the sender's newest messages, oldest first
    recent: tuple[tuple[int, str], ...]


def _common(kind: int, flags: int, session: bytes, msgno: int) -> bytes:
    return _COMMON.pack(MAGIC, kind, flags, session, msgno)


def data_header(
    session: bytes,
    msgno: int,
    transfer: str,
    length: int,
    block_size: int,
    block: int,
    symbol: int,
    round_: int,
    resend: bool,
) -> bytes:
    """The header every DATA datagram of this block and round carries before its RaptorQ packet."""
    flags = (FLAG_RESEND if resend else 0) | (FLAG_REPEAT if round_ else 0)
    return _common(KIND_DATA, flags, session, msgno) + _DATA.pack(
        bytes.fromhex(transfer), length, block_size, block, symbol, round_
    )


def data_datagram(
    session: bytes,
    msgno: int,
    transfer: str,
    length: int,
    block_size: int,
    block: int,
    symbol: int,
    round_: int,
    resend: bool,
    payload: bytes,
) -> bytes:
    header = data_header(
        session, msgno, transfer, length, block_size, block, symbol, round_, resend
    )
    return header + payload


def heartbeat_datagram(
    session: bytes,
    position: int,
    flow: str,
    sender: str,
    last_seq: int,
    interval_ms: int,
    recent: list[tuple[int, str]] | tuple[tuple[int, str], ...],
) -> bytes:
    f, s = flow.encode("ascii"), sender.encode("ascii")
    pairs = list(recent)[-MAX_RECENT:]
    return b"".join(
        (
            _common(KIND_HEARTBEAT, 0, session, position),
            _BEAT.pack(last_seq, interval_ms, len(f), len(s), len(pairs)),
            f,
            s,
            *(_PAIR.pack(n, bytes.fromhex(t)) for n, t in pairs),
        )
    )


def parse(datagram: bytes) -> DataPacket | HeartbeatPacket:
    """One datagram off the wire -> a packet; PacketError for anything else."""
    if len(datagram) < _COMMON.size:
        raise PacketError("datagram shorter than a header")
    magic, kind, flags, session, msgno = _COMMON.unpack_from(datagram)
    if magic != MAGIC:
        raise PacketError("unknown magic")
    if flags & ~_FLAGS:
        raise PacketError("unknown flags")
    if kind == KIND_DATA:
        return _data(datagram, flags, session, msgno)
    if kind == KIND_HEARTBEAT:
        return _heartbeat(datagram, flags, session, msgno)
    raise PacketError("unknown packet kind")


def _data(datagram: bytes, flags: int, session: bytes, msgno: int) -> DataPacket:
    start = DATA_HEADER
    if len(datagram) < start + RQ_ID + 1:
        raise PacketError("DATA datagram too short")
    tid, length, block_size, block, symbol, round_ = _DATA.unpack_from(datagram, _COMMON.size)
    payload = datagram[start:]
    if msgno == 0:
        raise PacketError("message number 0 is never sent")
    if not 0 < length <= MAX_LENGTH:
        raise PacketError("length out of range")
    if not 0 < block_size <= MAX_BLOCK or symbol == 0 or block_size < symbol:
        raise PacketError("block or symbol size out of range")
    if symbol % SYMBOL_ALIGN or -(-block_size // symbol) > MAX_SYMBOLS:
        raise PacketError("symbol size not a multiple of 8, or too many symbols a block")
    if block * block_size >= length:
        raise PacketError("block index past the end of the message")
    if len(payload) != RQ_ID + symbol:
        raise PacketError("payload length differs from the symbol size")
    if payload[0] != 0:
        raise PacketError("a block is always one RaptorQ source block")
    if bool(flags & FLAG_REPEAT) != (round_ > 0):
        raise PacketError("repeat flag disagrees with the round")
    return DataPacket(
        session=session,
        msgno=msgno,
        resend=bool(flags & FLAG_RESEND),
        repeat=bool(flags & FLAG_REPEAT),
        transfer=tid.hex(),
        length=length,
        block_size=block_size,
        block=block,
        symbol=symbol,
        round=round_,
        payload=payload,
    )


def _name(raw: bytes) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise PacketError("a name is not ASCII") from None
    if not text or not all(c.isalnum() or c == "-" for c in text):
        raise PacketError("malformed name")
    return text


def _heartbeat(datagram: bytes, flags: int, session: bytes, position: int) -> HeartbeatPacket:
    if flags:
        raise PacketError("HEARTBEAT carries no flags")
    at = _COMMON.size
    if len(datagram) < at + _BEAT.size:
        raise PacketError("HEARTBEAT datagram too short")
    last_seq, interval_ms, flen, slen, count = _BEAT.unpack_from(datagram, at)
    at += _BEAT.size
    if count > MAX_RECENT or interval_ms == 0:
        raise PacketError("HEARTBEAT fields out of range")
    if len(datagram) != at + flen + slen + count * _PAIR.size:
        raise PacketError("HEARTBEAT length differs from its fields")
    flow = _name(datagram[at : at + flen])
    sender = _name(datagram[at + flen : at + flen + slen])
    at += flen + slen
    recent = []
    for _ in range(count):
        n, tid = _PAIR.unpack_from(datagram, at)
        at += _PAIR.size
        if n == 0 or n > position:
            raise PacketError("a recent message number past the position")
        recent.append((n, tid.hex()))
    return HeartbeatPacket(session, position, flow, sender, last_seq, interval_ms, tuple(recent))
