"""UDP stage 5 (receiver): datagrams in, decoded blocks and verdicts out; sans-I/O.

Why a state machine with no I/O: every loss pattern (bursts, a dead link, a sender restart, a
receiver that joins half-way) is then a plain unit test. The store stage writes what this
decides; the drain stage only fills a queue.

Completion never hinges on one datagram: any K(+small) symbols of each block finish it. A
message is declared *lost* when the sender's position says it is over (a datagram of a later
message, or a heartbeat whose position reaches it) and it is still incomplete — including a
message of which nothing at all arrived, named from the heartbeat's list of recent messages.
A new sender session (the sender restarted) aborts the old session's unfinished messages: the
sender re-sends them itself (its resend window), so they are not reported lost.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import raptorq

from .udp_packet import MAX_RECENT, DataPacket, HeartbeatPacket, PacketError, parse

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


@dataclass(frozen=True)
class BlockDone:
    key: tuple[bytes, int]
    transfer: str
    length: int
    offset: int
    data: bytes


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
    decoders: dict[int, raptorq.Decoder] = field(default_factory=dict)
    received: int = 0


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

    # -- input ---------------------------------------------------------------------------
    def feed(self, datagram: bytes, now: float) -> list[Event]:
        try:
            packet = parse(datagram)
        except PacketError as e:
            return [Stray(str(e))]
        self.last_packet = now
        events: list[Event] = []
        if self.silent:
            self.silent = False
        if packet.session != self.session:
            if packet.session in self.old_sessions:
                return [Stray("datagram of an ended sender session")]
            events += self._new_session(packet)
        if isinstance(packet, HeartbeatPacket):
            return events + self._heartbeat(packet)
        return events + self._data(packet)

    def tick(self, now: float) -> list[Event]:
        """Time passing: a link silent for more than one heartbeat interval is reported once."""
        if self.last_packet is None or self.silent:
            return []
        if now - self.last_packet > self.silence:
            self.silent = True
            return [Silent(f"nothing from the sender for {now - self.last_packet:.1f}s")]
        return []

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

    def _sender_passed(self, position: int, names: dict[int, str]) -> list[Event]:
        """The sender has finished every message up to `position`: settle the unfinished."""
        events: list[Event] = []
        if position - self.floor > _MEMORY:  # far ahead: the oldest are past remembering
            self.floor = position - _MEMORY
        for msgno in [n for n in self.open if n <= position]:
            state = self.open.pop(msgno)
            events.append(
                Lost(
                    state.transfer,
                    msgno,
                    f"{len(state.done)} of {state.blocks} blocks decoded when the sender "
                    "finished all its rounds",
                    (self.session or b"", msgno),
                )
            )
            self._settle(msgno)
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

    def _data(self, p: DataPacket) -> list[Event]:
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
                old = self.open.popitem(last=False)[1]
                events.append(Lost(old.transfer, old.msgno, "too many messages open at once"))
                self._settle(old.msgno)
        elif (p.transfer, p.length, p.block_size, p.symbol) != (
            state.transfer,
            state.length,
            state.block_size,
            state.symbol,
        ):
            return [Stray("datagram disagrees with its message's earlier datagrams")]
        if p.block in state.done:
            return events
        decoder = state.decoders.get(p.block)
        if decoder is None:
            decoder = raptorq.Decoder.with_defaults(p.block_length, p.symbol)
            state.decoders[p.block] = decoder
        try:
            data = decoder.decode(p.payload)
        except Exception:  # the codec refuses a symbol it cannot place: drop it
            return [*events, Stray("symbol the decoder refused")]
        if data is None:
            return events
        del state.decoders[p.block]
        state.done.add(p.block)
        state.received += len(data)
        key = (p.session, p.msgno)
        events.append(BlockDone(key, p.transfer, p.length, p.block * p.block_size, data))
        if len(state.done) == state.blocks:
            del self.open[p.msgno]
            self.finished[p.msgno] = (p.transfer, p.round)
            self._settle(p.msgno)
            self.settled.discard(p.msgno)
            events.append(Done(key, p.transfer, p.length, p.resend or p.repeat))
        return events
