"""UDP stage 5 (receiver): datagrams in, decoded blocks and verdicts out; sans-I/O.

Why a state machine with no I/O: every loss pattern (bursts, a dead link, a sender restart, a
receiver that joins half-way) is then a plain unit test. The store stage writes what this
decides; the drain stage only fills buffers.

Completion never hinges on one datagram: any K(+small) symbols of each block finish it. A
message is declared *lost* when the sender's position says it is over (a datagram of a later
message, or a heartbeat whose position reaches it) and it is still incomplete — including a
message of which nothing at all arrived, named from the heartbeat's list of recent messages.
A new sender session (the sender restarted) aborts the old session's unfinished messages: the
sender re-sends them itself (its resend window), so they are not reported lost.

Why a fast path: at a few hundred MB/s a datagram must cost about a microsecond here. The code is
systematic (udp_packet), so a source symbol is copied straight to its place in the block, and a
block whose K source symbols all arrived is complete without the codec. Only a block that lost
some gets a RaptorQ decoder, fed the symbols it has. Every datagram of one block and round has the
same header, so after one full parse the rest are recognised by comparing header bytes.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import raptorq

from .udp_packet import (
    DATA_HEADER,
    MAX_RECENT,
    RQ_ID,
    DataPacket,
    HeartbeatPacket,
    PacketError,
    parse,
)

__all__ = [
    "Aborted",
    "BlockDone",
    "Decoder",
    "Done",
    "Lost",
    "Repeat",
    "Silent",
    "Stray",
]

#: message numbers remembered per session as finished, lost or refused
_MEMORY = 8192
#: messages decoded at once; more means the sender is far ahead and the oldest is lost
_MAX_OPEN = 8
#: bytes of incomplete blocks held at once; past it the oldest open message is given up as lost
#: (normally a block or two is open; a whole message only when heavy loss waits for a repeat)
MAX_HELD = 1024 * 1024 * 1024
_ID = struct.Struct(">I")  # RaptorQ payload id: source block number 0 + encoding symbol id


@dataclass(frozen=True)
class BlockDone:
    key: tuple[bytes, int]
    transfer: str
    length: int
    offset: int
    #: the block's bytes (a view of the decoder's buffer: write it before the next feed)
    data: bytes | memoryview


@dataclass(frozen=True)
class Done:
    key: tuple[bytes, int]
    transfer: str
    length: int
    resend: bool


@dataclass(frozen=True)
class Lost:
    """A message the sender finished that cannot be completed here (transfer None: unnamed)."""

    transfer: str | None
    msgno: int
    reason: str
    key: tuple[bytes, int] | None = None


@dataclass(frozen=True)
class Aborted:
    key: tuple[bytes, int]
    transfer: str
    reason: str
    received_bytes: int


@dataclass(frozen=True)
class Repeat:
    """A repeat round of a message already complete here: dropped, counted as a duplicate."""

    transfer: str


@dataclass(frozen=True)
class Heartbeat:
    last_seq: int
    position: int


@dataclass(frozen=True)
class Silent:
    reason: str


@dataclass(frozen=True)
class Stray:
    reason: str


Event = BlockDone | Done | Lost | Aborted | Repeat | Heartbeat | Silent | Stray


class _Block:
    """One block being filled: source symbols copied into place, repair symbols kept aside
    until the codec is needed, then the codec itself."""

    __slots__ = ("buf", "done", "fec", "have", "index", "k", "length", "repairs", "sources")

    def __init__(self, index: int, length: int, symbol: int) -> None:
        self.index = index
        self.length = length
        self.k = -(-length // symbol)
        self.buf = bytearray(self.k * symbol)
        self.have = bytearray(self.k)
        self.sources = 0
        self.repairs: list[bytes] = []
        self.fec: raptorq.Decoder | None = None
        self.done = False


@dataclass
class _Open:
    transfer: str
    msgno: int
    length: int
    block_size: int
    symbol: int
    blocks: int
    resend: bool
    done: set[int] = field(default_factory=set)
    filling: dict[int, _Block] = field(default_factory=dict)
    received: int = 0

    @property
    def held(self) -> int:
        return sum(len(b.buf) for b in self.filling.values())


class _Hot:
    """The block the last full parse placed: its header bytes and datagram size identify the
    datagrams that may skip the parse."""

    __slots__ = ("block", "header", "key", "repeat", "size", "state")

    def __init__(self, header: bytes, size: int, state: _Open, block: _Block, p: DataPacket):
        self.header = header
        self.size = size
        self.state = state
        self.block = block
        self.key = (p.session, p.msgno)
        self.repeat = p.resend or p.repeat


class Decoder:
    """One flow's receiving state: feed datagrams and the clock, act on the events."""

    def __init__(self, flow: str, sender: str, max_length: int, heartbeat: float) -> None:
        self.flow = flow
        self.sender = sender
        self.max_length = max_length
        self.silence = heartbeat * 2  # one heartbeat missed
        self.session: bytes | None = None
        self.old_sessions: OrderedDict[bytes, None] = OrderedDict()
        self.floor = 0  # message numbers <= floor are settled (or before our time)
        self.open: OrderedDict[int, _Open] = OrderedDict()
        self.finished: OrderedDict[int, tuple[str, int]] = OrderedDict()  # msgno -> (id, round)
        self.settled: set[int] = set()  # lost or refused, above the floor
        self.missing: dict[int, float] = {}  # msgno -> when we learnt nothing arrived of it
        self.last_packet: float | None = None
        self.silent = False
        self.held = 0  # bytes of block buffers of open messages
        self._hot: _Hot | None = None
        self._placing = False  # the last full parse left a symbol for feed_batch to place
        self._why = ""  # why the last full parse refused its datagram
        #: blocks completed from source symbols alone / with the codec (repairs used)
        self.blocks_direct = 0
        self.blocks_repaired = 0

    # -- input ---------------------------------------------------------------------------
    def feed(self, datagram: bytes, now: float) -> list[Event]:
        return self.feed_batch(datagram, (len(datagram),), now)

    def feed_batch(self, buf: bytes | bytearray, ends: Sequence[int], now: float) -> list[Event]:
        """Datagrams laid end to end in `buf` (the first at 0, each ending at an offset in
        `ends`); returns the events of all of them, in order. `buf` may be reused afterwards."""
        events: list[Event] = []
        view = memoryview(buf)
        start, valid = 0, False
        for end in ends:
            # Read anew for each datagram: settling a block can end its message and so the
            # fast path (a stale one would swallow the next datagram unchecked).
            hot = self._hot
            if hot is None or end - start != hot.size or not buf.startswith(hot.header, start):
                slow = self._slow(bytes(view[start:end]))
                if slow is None:
                    events.append(Stray(self._why))
                    start = end
                    continue
                valid = True
                events += slow
                hot = self._hot
                if not self._placing:  # nothing to place: a heartbeat, a repeat, a stray...
                    start = end
                    continue
                self._placing = False
            valid = True
            block = hot.block  # type: ignore[union-attr]
            if block.done:
                start = end
                continue
            esi = _ID.unpack_from(buf, start + DATA_HEADER)[0]
            if esi < block.k:  # a source symbol: copy it into place
                if not block.have[esi]:
                    if block.fec is None:
                        sym = hot.size - DATA_HEADER - RQ_ID  # type: ignore[union-attr]
                        at = esi * sym
                        block.buf[at : at + sym] = view[start + DATA_HEADER + RQ_ID : end]
                        block.have[esi] = 1
                        block.sources += 1
                        if block.sources == block.k or (
                            block.repairs and block.sources + len(block.repairs) >= block.k
                        ):
                            events += self._settle_block(hot)  # type: ignore[arg-type]
                    else:
                        packet = bytes(view[start + DATA_HEADER : end])
                        events += self._codec(hot, packet)  # type: ignore[arg-type]
            elif esi < 1 << 24:  # a repair symbol (of source block number 0)
                packet = bytes(view[start + DATA_HEADER : end])
                if block.fec is not None:
                    events += self._codec(hot, packet)  # type: ignore[arg-type]
                else:
                    block.repairs.append(packet)
                    if block.sources + len(block.repairs) >= block.k:
                        events += self._settle_block(hot)  # type: ignore[arg-type]
            else:
                events.append(Stray("a block is always one RaptorQ source block"))
            start = end
        view.release()
        if valid:
            self.last_packet = now
            self.silent = False
        return events

    def tick(self, now: float) -> list[Event]:
        """Time passing: a link silent for more than one heartbeat interval is reported once."""
        if self.last_packet is None or self.silent:
            return []
        if now - self.last_packet > self.silence:
            self.silent = True
            return [Silent(f"nothing from the sender for {now - self.last_packet:.1f}s")]
        return []

    def _slow(self, datagram: bytes) -> list[Event] | None:
        """A datagram the fast path does not know: the full parse. None: a stray (`_why`)."""
        try:
            packet = parse(datagram)
        except PacketError as e:
            self._why = str(e)
            return None
        events: list[Event] = []
        if packet.session != self.session:
            if packet.session in self.old_sessions:
                self._why = "datagram of an ended sender session"
                return None
            events += self._new_session(packet)
        if isinstance(packet, HeartbeatPacket):
            return events + self._heartbeat(packet)
        return events + self._data(packet, datagram)

    # -- sessions ------------------------------------------------------------------------
    def _new_session(self, packet: DataPacket | HeartbeatPacket) -> list[Event]:
        events: list[Event] = []
        for state in self.open.values():
            events.append(
                Aborted(
                    (self.session or b"", state.msgno),
                    state.transfer,
                    "the sender restarted mid-message; it re-sends the message itself",
                    state.received,
                )
            )
        if self.session is not None:
            self.old_sessions[self.session] = None
            while len(self.old_sessions) > 64:
                self.old_sessions.popitem(last=False)
        self.session = packet.session
        self.open.clear()
        self.held = 0
        self._hot = None
        self.finished.clear()
        self.settled.clear()
        self.missing.clear()
        # Every message of a new session is ours to account for, as far back as a heartbeat
        # can still name it (joining a long session half-way: older ones are not ours to
        # report; the agent's sequence check sees them, and it ignores a "lost" it holds).
        start = packet.msgno - 1 if isinstance(packet, DataPacket) else packet.position
        self.floor = max(0, start - MAX_RECENT)
        return events

    def _known(self, msgno: int) -> bool:
        return msgno <= self.floor or msgno in self.finished or msgno in self.settled

    def _settle(self, msgno: int) -> None:
        self.settled.add(msgno)
        self.missing.pop(msgno, None)
        while self.floor + 1 in self.settled or self.floor + 1 in self.finished:
            self.floor += 1
            self.settled.discard(self.floor)
        while len(self.finished) > _MEMORY:
            self.finished.popitem(last=False)
        if len(self.settled) > _MEMORY:
            # Bounded memory: forget the oldest; a datagram that old is dropped as stray.
            oldest = sorted(self.settled)[: len(self.settled) - _MEMORY]
            self.floor = max(self.floor, oldest[-1])
            self.settled.difference_update(oldest)

    def _close(self, msgno: int) -> _Open:
        """Forget an open message (finished or given up): its buffers are freed."""
        state = self.open.pop(msgno)
        self.held -= state.held
        state.filling.clear()
        if self._hot is not None and self._hot.state is state:
            self._hot = None
        return state

    def _give_up(self, state: _Open, reason: str) -> Lost:
        self._close(state.msgno)
        self._settle(state.msgno)
        return Lost(state.transfer, state.msgno, reason, (self.session or b"", state.msgno))

    def _sender_passed(self, position: int, names: dict[int, str]) -> list[Event]:
        """The sender has finished every message up to `position`: settle the unfinished."""
        events: list[Event] = []
        if position - self.floor > _MEMORY:  # far ahead: the oldest are past remembering
            self.floor = position - _MEMORY
        for msgno in [n for n in self.open if n <= position]:
            state = self.open[msgno]
            events.append(
                self._give_up(
                    state,
                    f"{len(state.done)} of {state.blocks} blocks decoded when the sender "
                    "finished all its rounds",
                )
            )
        n = self.floor + 1
        while n <= position:
            if not self._known(n) and n not in self.open:
                if n in names:
                    events.append(Lost(names[n], n, "no datagram of it arrived"))
                    self._settle(n)
                    continue
                self.missing.setdefault(n, 0.0)
            n += 1
        return events

    # -- packets -------------------------------------------------------------------------
    def _heartbeat(self, beat: HeartbeatPacket) -> list[Event]:
        if beat.flow != self.flow or beat.sender != self.sender:
            return [Stray("HEARTBEAT for another flow")]
        names = dict(beat.recent)
        events = self._sender_passed(beat.position, names)
        # Messages of which nothing arrived and which this heartbeat cannot name any more.
        oldest_named = min(names, default=beat.position + 1)
        for msgno in sorted(self.missing):
            if msgno < oldest_named:
                events.append(Lost(None, msgno, "no datagram of it arrived; its id is unknown"))
                self._settle(msgno)
        events.append(Heartbeat(beat.last_seq, beat.position))
        return events

    def _data(self, p: DataPacket, datagram: bytes) -> list[Event]:
        if self._known(p.msgno):
            done = self.finished.get(p.msgno)
            if done is not None and p.round > done[1]:
                self.finished[p.msgno] = (done[0], p.round)
                return [Repeat(done[0])]
            return []
        events: list[Event] = []
        state = self.open.get(p.msgno)
        if state is None:
            if p.length > self.max_length:
                self._settle(p.msgno)
                return [Stray(f"announced length {p.length} over the limit {self.max_length}")]
            # A later message began: the sender is done with every earlier one.
            events += self._sender_passed(p.msgno - 1, {})
            state = _Open(p.transfer, p.msgno, p.length, p.block_size, p.symbol, p.blocks, p.resend)
            self.open[p.msgno] = state
            while len(self.open) > _MAX_OPEN:
                old = next(iter(self.open.values()))
                events.append(self._give_up(old, "too many messages open at once"))
        elif (p.transfer, p.length, p.block_size, p.symbol) != (
            state.transfer,
            state.length,
            state.block_size,
            state.symbol,
        ):
            return [Stray("datagram disagrees with its message's earlier datagrams")]
        if p.block in state.done:
            return events
        block = state.filling.get(p.block)
        if block is None:
            block = _Block(p.block, p.block_length, p.symbol)
            while self.held + len(block.buf) > MAX_HELD and self.open:
                oldest = next(iter(self.open.values()))
                events.append(self._give_up(oldest, "more incomplete data than the receiver holds"))
                if oldest is state:
                    return events
            state.filling[p.block] = block
            self.held += len(block.buf)
        self._hot = _Hot(datagram[:DATA_HEADER], len(datagram), state, block, p)
        self._placing = True  # feed_batch places this datagram's symbol, as it will the next
        return events

    # -- blocks --------------------------------------------------------------------------
    def _settle_block(self, hot: _Hot) -> list[Event]:
        """Every source symbol is in place, or enough symbols arrived to try the codec."""
        block = hot.block
        if block.sources == block.k:
            self.blocks_direct += 1
            return self._block_done(hot, memoryview(block.buf)[: block.length])
        state = hot.state
        block.fec = raptorq.Decoder.with_defaults(block.length, state.symbol)
        sym = state.symbol
        packets = [
            _ID.pack(esi) + block.buf[esi * sym : esi * sym + sym]
            for esi in range(block.k)
            if block.have[esi]
        ]
        packets += block.repairs
        block.repairs = []
        events: list[Event] = []
        for packet in packets:
            events += self._codec(hot, packet)
            if block.done:
                break
        return events

    def _codec(self, hot: _Hot, packet: bytes) -> list[Event]:
        block = hot.block
        assert block.fec is not None
        try:
            data = block.fec.decode(packet)
        except Exception:  # the codec refuses a symbol it cannot place: drop it
            return [Stray("symbol the decoder refused")]
        if data is None:
            return []
        self.blocks_repaired += 1
        return self._block_done(hot, data)

    def _block_done(self, hot: _Hot, data: bytes | memoryview) -> list[Event]:
        state, block = hot.state, hot.block
        block.done = True
        block.fec = None
        del state.filling[block.index]
        self.held -= len(block.buf)
        state.done.add(block.index)
        state.received += block.length
        offset = block.index * state.block_size
        events: list[Event] = [BlockDone(hot.key, state.transfer, state.length, offset, data)]
        if len(state.done) == state.blocks:
            self._close(state.msgno)
            self.finished[state.msgno] = (state.transfer, _round_of(hot.header))
            self._settle(state.msgno)
            self.settled.discard(state.msgno)
            events.append(Done(hot.key, state.transfer, state.length, hot.repeat))
        return events


def _round_of(header: bytes) -> int:
    return header[DATA_HEADER - 1]
