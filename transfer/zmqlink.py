"""ZeroMQ PUSH/PULL link adapter: the receiver binds, the sender connects, nothing replies.

Only byte-moving lives here; framing rules are in `linkframe`. An envelope of at most
`MAX_PAYLOAD` bytes goes as one WHOLE frame and arrives in memory (`Arrival.payload`): the sender
re-sends its resend window whenever the connection comes back, which covers a receiver that dies
before it made such an envelope durable (see transfer/link.py). Larger ones stream to a file.

The sender's socket sets ZMQ_IMMEDIATE so frames queue only to a connected peer (a dead
receiver blocks the sender instead of filling memory), bounded high-water marks and kernel
buffers so the bytes in flight at any moment are bounded (that bound sizes the resend window),
and never calls recv on the link. The receiver's socket never sends.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from ..zones.config import Flow
from .durable import Barrier, open_exclusive
from .keys import load_curve_public, load_curve_secret
from .link import ENVELOPE_FILE, Arrival, LinkBroken, LinkNote, StreamSink, register_transport
from .linkframe import (
    MAX_PAYLOAD,
    Abort,
    Begin,
    Complete,
    Data,
    Heartbeat,
    Reassembler,
    Stray,
    Whole,
    begin_frame,
    data_frame,
    end_frame,
    heartbeat_frame,
    whole_frame,
)

__all__ = [
    "CurveKeys",
    "ZmqEnvelopeReceiver",
    "ZmqLinkReceiver",
    "ZmqLinkSender",
    "in_flight_bound",
]

HWM = 16
SOCKET_BUFFER = 4 * 1024 * 1024
#: One poll takes at most this many link messages (or bytes) that are already waiting, then makes
#: the envelopes they completed durable together: a group commit, never a wait for more.
POLL_MESSAGES = 1024
POLL_BYTES = 8 * 1024 * 1024


def in_flight_bound() -> int:
    """Most bytes that can sit in queues and kernel buffers between the two processes, and in
    one poll of the receiver (taken off the socket, not yet handed on)."""
    return 2 * HWM * MAX_PAYLOAD + 2 * SOCKET_BUFFER + POLL_BYTES


@dataclass(frozen=True)
class CurveKeys:
    """This gateway's CurveZMQ key pair and the one peer key it accepts (Z85)."""

    public: bytes
    secret: bytes = field(repr=False)
    peer: bytes

    @classmethod
    def for_flow(cls, flow: Flow) -> CurveKeys | None:
        t = flow.transport
        if t.curve_key is None or t.peer_curve_key is None:
            return None
        public, secret = load_curve_secret(t.curve_key)
        return cls(public, secret, load_curve_public(t.peer_curve_key))


class _OnlyThePeer:
    """ZAP credentials check: the configured sending gateway's key, and no other."""

    def __init__(self, peer: bytes) -> None:
        self.peer = peer

    def callback(self, domain: str, key: bytes) -> bool:
        return hmac.compare_digest(key, self.peer)


class ZmqLinkSender:
    def __init__(
        self, endpoint: str, context: zmq.Context | None = None, curve: CurveKeys | None = None
    ) -> None:
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PUSH)
        if curve is not None:
            # Encrypted and authenticated both ways: we prove our key, the server proves its.
            self.sock.curve_secretkey = curve.secret
            self.sock.curve_publickey = curve.public
            self.sock.curve_serverkey = curve.peer
        self.sock.setsockopt(zmq.SNDHWM, HWM)
        self.sock.setsockopt(zmq.SNDBUF, SOCKET_BUFFER)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self.sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        self.sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED
        )
        self.sock.connect(endpoint)
        self.connected = False
        self._events: list[str] = []

    def _watch(self) -> None:
        """Read the connection monitor: keeps `connected` current, queues its changes."""
        while self.monitor.poll(0):
            ev = recv_monitor_message(self.monitor)
            kind = ev["event"]
            if kind in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_CONNECTED):
                if not self.connected:
                    self.connected = True
                    self._events.append("up")
            elif kind == zmq.EVENT_DISCONNECTED and self.connected:
                self.connected = False
                self._events.append("down")

    def link_events(self) -> list[str]:
        """Connection changes seen since the last call: 'up' or 'down' (from the monitor pipe)."""
        self._watch()
        events, self._events = self._events, []
        return events

    def _send(
        self, frames: Iterable[bytes | memoryview], stop: threading.Event, copy: bool = False
    ) -> bool:
        """Hand one frame to ZeroMQ; False if asked to stop or the connection went down first
        (what was sent of the envelope is then abandoned; the receiver discards it). `copy`
        for small frames: copying a few KiB costs less than tracking a zero-copy buffer."""
        parts = list(frames)
        while not stop.is_set():
            try:
                self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=copy)
                return True
            except zmq.Again:
                self.sock.poll(200, zmq.POLLOUT)
                self._watch()
                if not self.connected:
                    return False
        return False

    def send_envelope(
        self,
        path: Path,
        transfer: str,
        flow: str,
        sender: str,
        resend: bool,
        stop: threading.Event,
    ) -> bool:
        """Stream one envelope file; False if asked to stop, or the connection went down, before
        the END frame left."""
        with open(path, "rb", buffering=0) as f:
            length = f.seek(0, 2)
            f.seek(0)
            if length <= MAX_PAYLOAD:
                envelope = f.read(MAX_PAYLOAD + 1)
                if len(envelope) <= MAX_PAYLOAD:
                    return self.send_envelope_bytes(envelope, transfer, flow, sender, resend, stop)
                length = f.seek(0, 2)  # it grew meanwhile: stream what is there now
                f.seek(0)
            try:
                stream = self.open_stream(transfer, flow, sender, length, resend, stop)
                while chunk := f.read(min(MAX_PAYLOAD, length - stream.offset)):
                    stream.write(chunk)
            except LinkBroken:
                return False
        return stream.finish()

    def open_stream(
        self,
        transfer: str,
        flow: str,
        sender: str,
        length: int,
        resend: bool,
        stop: threading.Event,
    ) -> _Stream:
        """Begin sending an envelope of `length` bytes that is still being written (sealed as
        it goes): `write` its bytes in order, then `finish`. Raises `LinkBroken`."""
        if not self._send(begin_frame(transfer, flow, sender, length, resend), stop):
            raise LinkBroken("the link went down before the envelope began")
        return _Stream(self, transfer, length, stop)

    def send_envelope_bytes(
        self,
        envelope: bytes,
        transfer: str,
        flow: str,
        sender: str,
        resend: bool,
        stop: threading.Event,
    ) -> bool:
        """`send_envelope` for an envelope the caller holds in memory (at most MAX_PAYLOAD)."""
        if len(envelope) > MAX_PAYLOAD:
            raise ValueError(f"an envelope sent from memory is at most {MAX_PAYLOAD} bytes")
        digest = hashlib.sha256(envelope).digest()
        return self._send(whole_frame(transfer, flow, sender, resend, envelope, digest), stop, True)

    def send_heartbeat(
        self, flow: str, sender: str, last_seq: int, sent_at: str, stop: threading.Event
    ) -> bool:
        return self._send(heartbeat_frame(flow, sender, last_seq, sent_at), stop)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close()


class _Stream:
    """The DATA frames of an envelope sent while it is sealed, then its END frame."""

    def __init__(
        self, link: ZmqLinkSender, transfer: str, length: int, stop: threading.Event
    ) -> None:
        self.link = link
        self.transfer = transfer
        self.length = length
        self.stop = stop
        self.offset = 0
        self._hash = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        if self.offset + len(view) > self.length:
            raise ValueError("more bytes than the envelope's announced length")
        for start in range(0, len(view), MAX_PAYLOAD):
            # The frame must own what it sends: bytes are kept as they are (zero-copy), a view
            # of a buffer the caller may reuse is copied.
            fits = isinstance(data, bytes) and len(data) <= MAX_PAYLOAD
            payload = data if fits else bytes(view[start : start + MAX_PAYLOAD])
            self._hash.update(payload)
            if not self.link._send(data_frame(self.transfer, self.offset, payload), self.stop):
                raise LinkBroken("the link went down while the envelope was being sent")
            self.offset += len(payload)
        return len(view)

    def finish(self) -> bool:
        if self.offset != self.length:
            raise ValueError(f"{self.offset} of {self.length} bytes written")
        return self.link._send(end_frame(self.transfer, self._hash.digest()), self.stop)


class ZmqLinkReceiver:
    def __init__(
        self, endpoint: str, context: zmq.Context | None = None, curve: CurveKeys | None = None
    ) -> None:
        self.auth: ThreadAuthenticator | None = None
        if curve is not None:
            # Its own context, so its ZAP handler answers for this socket alone.
            self.ctx = zmq.Context()
            self.auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("zonegate.zap"))
            self.auth.start()
            self.auth.configure_curve_callback(
                domain="zonegate", credentials_provider=_OnlyThePeer(curve.peer)
            )
        else:
            self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PULL)
        if curve is not None:
            self.sock.curve_server = True
            self.sock.curve_secretkey = curve.secret
            self.sock.curve_publickey = curve.public
            self.sock.zap_domain = b"zonegate"
        self.sock.setsockopt(zmq.RCVHWM, HWM)
        self.sock.setsockopt(zmq.RCVBUF, SOCKET_BUFFER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_PAYLOAD + 4096)
        self.sock.bind(endpoint)

    def recv(self, timeout_ms: int) -> list[bytes | memoryview] | None:
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        return _parts(self.sock.recv_multipart(copy=False))

    def recv_now(self) -> list[bytes | memoryview] | None:
        """The next message if one is already waiting, without blocking."""
        try:
            return _parts(self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False))
        except zmq.Again:
            return None

    def close(self) -> None:
        self.sock.close()
        if self.auth is not None:
            self.auth.stop()
            self.ctx.term()


#: parts at least this large are handed on as views of ZeroMQ's own buffer, not copied
_ZERO_COPY = 64 * 1024


def _parts(frames: list[zmq.Frame]) -> list[bytes | memoryview]:
    """Small parts as bytes (tags, ids, JSON), a payload as a view of the received frame."""
    return [f.buffer if len(f) >= _ZERO_COPY else f.bytes for f in frames]


class ZmqEnvelopeReceiver:
    """Frames off the PULL socket, reassembled into envelope files in the agent's scratch dir."""

    def __init__(self, flow: Flow, scratch: Path, max_length: int) -> None:
        self.scratch = scratch
        self.link = ZmqLinkReceiver(flow.transport.endpoint, curve=CurveKeys.for_flow(flow))
        self.reasm = Reassembler(flow.name, flow.sender, max_length)
        self._open: tuple[str, Path, BinaryIO | StreamSink, bool] | None = None  # id, dir, to
        self._written = 0
        self._transfers = 0
        self.barrier = Barrier()
        #: the agent's offer to take an envelope's bytes as they come (None: to a file)
        self.stream_to: Callable[[Begin], StreamSink | None] | None = None

    def poll(self, timeout_ms: int) -> list[Arrival | LinkNote]:
        """Wait up to `timeout_ms` for the link, then take everything already waiting (up to
        POLL_MESSAGES / POLL_BYTES); the envelopes completed are fsynced together on return."""
        frames = self.link.recv(timeout_ms)
        out: list[Arrival | LinkNote] = []
        taken = 0
        size = 0
        while frames is not None:
            taken += 1
            size += sum(len(f) for f in frames)
            for event in self.reasm.feed(frames):
                note = self._apply(event)
                if note is not None:
                    out.append(note)
            if taken >= POLL_MESSAGES or size >= POLL_BYTES:
                break
            frames = self.link.recv_now()
        if len(self.barrier):
            try:
                self.barrier.commit()
            except BaseException:
                for item in out:  # not durable: as if they never arrived (the sender re-sends)
                    if isinstance(item, Arrival) and item.payload is None:
                        shutil.rmtree(item.directory, ignore_errors=True)
                raise
        return out

    def _work(self, transfer: str) -> Path:
        """A scratch directory of its own for each transfer: one poll may bring two with the
        same id (a re-send, a replay), each to be judged apart."""
        self._transfers += 1
        return self.scratch / f"{transfer}.{os.getpid()}.{self._transfers}"

    def _discard(self, reason: str = "the transfer broke off") -> None:
        if self._open is not None:
            _tid, work, to, _resend = self._open
            self._open = None
            if isinstance(to, io.IOBase):
                to.close()
                shutil.rmtree(work, ignore_errors=True)
            else:
                to.abort(reason)

    def _apply(self, event: object) -> Arrival | LinkNote | None:
        if isinstance(event, Whole):
            self._discard()
            work = self._work(event.transfer)
            return Arrival(
                event.transfer,
                work,
                event.resend,
                len(event.payload),
                event.digest.hex(),
                payload=event.payload,
            )
        if isinstance(event, Begin):
            self._discard("a new transfer began before this one ended")
            work = self._work(event.transfer)
            sink = self.stream_to(event) if self.stream_to is not None else None
            if sink is not None:
                self._open = (event.transfer, work, sink, event.resend)
                if getattr(sink, "verifies_envelope", False):
                    self.reasm.verified_end_to_end()
            else:
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(mode=0o700)
                f = open_exclusive(work / ENVELOPE_FILE)
                self._open = (event.transfer, work, f, event.resend)
            self._written = 0
            return None
        if isinstance(event, Data) and self._open is not None:
            self._open[2].write(event.payload)
            self._written += len(event.payload)
            return None
        if isinstance(event, Complete) and self._open is not None:
            tid, work, to, resend = self._open
            self._open = None
            if not isinstance(to, io.IOBase):
                return Arrival(tid, work, resend, event.length, event.digest.hex(), sink=to)
            to.close()
            self.barrier.file(work / ENVELOPE_FILE)
            self.barrier.dir(work)
            self.barrier.dir(self.scratch)
            return Arrival(tid, work, resend, event.length, event.digest.hex())
        if isinstance(event, Abort):
            written = self._written
            self._discard(event.reason)
            return LinkNote(
                "aborted", event.reason, transfer=event.transfer, received_bytes=written
            )
        if isinstance(event, Heartbeat):
            return LinkNote("heartbeat", last_seq=event.last_seq)
        if isinstance(event, Stray):
            return LinkNote("stray", event.reason)
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._discard()
        self.link.close()
        self.barrier.close()


register_transport(
    "zmq",
    lambda flow: ZmqLinkSender(flow.transport.endpoint, curve=CurveKeys.for_flow(flow)),
    ZmqEnvelopeReceiver,
)
